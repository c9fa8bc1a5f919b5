"""Shared fixtures: small FER-format files written by the tests, the real FER2013 when the environment names
it, and a helper that runs our scripts as a user would (a separate process, its exit status and output)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
import synthetic
from common import start_backend

start_backend()  # as every script does first, so that the tests' own Keras runs as the scripts' does

ROOT = Path(__file__).resolve().parent.parent


def script_env(env=None):
    """The environment of a script the tests run: theirs, with `env` on top. A PyTorch process runs on one CPU
    thread: PyTorch's threads wait for work by spinning, and two test workers already share two cores."""
    env = {**os.environ, **(env or {})}
    if env.get("KERAS_BACKEND") == "torch":
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_script(script, *args, cwd=ROOT, timeout=600, env=None):
    """Run `python script args...` in a fresh process; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=script_env(env))


def needs(package):
    """Skip unless `package` is installed, without importing it into the tests' process: torch beside TensorFlow
    in one process can crash it (the tests run other backends in processes of their own)."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


def assert_user_error(result, *fragments):
    """Exit status 2, no traceback, and one error line on stderr that mentions every fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def pixel_text(image):
    return " ".join(str(v) for v in np.asarray(image).ravel())


def write_rows(path, rows, header="emotion,pixels,Usage", newline="\n"):
    """A FER-format CSV from (emotion, pixels, usage) rows; pixels may be an array or the literal text."""
    lines = [header]
    for emotion, pixels, usage in rows:
        text = pixels if isinstance(pixels, str) else pixel_text(pixels)
        lines.append(f"{emotion},{text},{usage}")
    Path(path).write_text(newline.join(lines) + newline)
    return path


def make_rows(usages, seed=0):
    """Random faces with known values: one row per usage name given, labels cycling 0..6."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(usages), 48, 48), dtype=np.uint8)
    return [(i % 7, images[i], usage) for i, usage in enumerate(usages)]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The data cache of every test and every script they run lives in a temporary folder, not the user's. The
    scripts run on JAX share one persistent compilation cache (both test processes, as gpu/prepare.sh does for a
    GPU call's runs): a run that compiles what an earlier one did loads it instead, to the same executable."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
    os.environ.update(JAX_COMPILATION_CACHE_DIR=str(shared / "jax-cache"),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory):
    """2,000 synthetic faces (1,600 Training, 200 PublicTest, 200 PrivateTest)."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.csv"
    data.write_csv(path, synthetic.make_synthetic(2000, seed=1))
    return path


@pytest.fixture(scope="session")
def fer2013_csv():
    path = os.environ.get("FER2013_CSV")
    if not path or not os.path.isfile(path):
        pytest.skip("FER2013_CSV does not name a copy of fer2013.csv")
    return path


@pytest.fixture(scope="session")
def fer2013_folders():
    path = os.environ.get("FER2013_FOLDERS")
    if not path or not os.path.isdir(path):
        pytest.skip("FER2013_FOLDERS does not name the image-folder release")
    return path


@pytest.fixture(scope="session")
def fer2013_faces(fer2013_csv):
    return data.read_faces(fer2013_csv)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_csv):
    """One short run of the demo's network through the command line, shared by the tests of its outputs."""
    out = tmp_path_factory.mktemp("runs")
    result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                        "--set", "train.epochs=6", "--set", "train.precision=float32", "--set", f"output.dir={out}",
                        "--set", "output.name=demo")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "demo", result


@pytest.fixture(scope="session")
def astronaut(tmp_path_factory):
    """A real photograph with a face: scikit-image's public-domain astronaut."""
    cv2 = pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    return path
