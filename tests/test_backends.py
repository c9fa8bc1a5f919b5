"""backends.py: precision and XLA choices, oneDNN, data parallelism, and the other Keras backends."""
import contextlib
import json
import os
import socket

import numpy as np
import pandas as pd
import pytest

import backends
import common
import distribute
import feed
import synthetic
import train
from common import TEST_SIGNAL, UserError
from config import DEFAULTS
from conftest import ROOT, assert_user_error, make_rows, needs, run_script, write_rows


def test_auto_precision_follows_the_cpu(tmp_path, monkeypatch):
    if backends.gpus():
        pytest.skip("a GPU decides auto precision here")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(backends, "CPUINFO", str(cpuinfo))
    for flags in ("avx512f avx512_bf16", "avx512f avx512_bf16 amx_bf16 amx_tile"):  # bfloat16 fails the check
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
        precision, why = backends.choose_precision("auto")
        assert precision == "float32" and "fails the synthetic check" in why
        assert backends.choose_precision("mixed_bfloat16") == ("mixed_bfloat16", "as configured")
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert backends.choose_precision("auto") == ("float32", "auto: CPU without bfloat16 instructions")
    assert backends.choose_precision("mixed_float16") == ("mixed_float16", "as configured")
    assert "without bfloat16 instructions: emulated" in backends.choose_precision("mixed_bfloat16")[1]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert backends.choose_precision("mixed_bfloat16") == ("mixed_bfloat16", "as configured")


@pytest.mark.slow
def test_tensorflow_runs_onednn_kernels_unless_told_not_to():
    import platform
    import subprocess
    import sys

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"TensorFlow runs oneDNN's kernels on x86-64 CPUs only, not on {platform.machine()}")

    def run(**settings):
        env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
        code = ("import os, common; common.start_backend(); import backends; "
                "print(backends.onednn_enabled(), os.environ['TF_ENABLE_ONEDNN_OPTS'])")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                env={**env, "KERAS_BACKEND": "tensorflow", **settings})
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.split()

    assert run() == ["True", "1"]  # whatever this CPU is: TensorFlow alone turns oneDNN on only with AVX512/AMX
    assert run(TF_ENABLE_ONEDNN_OPTS="0") == ["False", "0"]


def test_cpu_model_is_read_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(backends, "CPUINFO", str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n")
    assert backends.cpu_model() == "AMD EPYC 9R14"


def test_a_backend_that_is_not_installed_gives_way_to_one_that_is(tmp_path):
    """Without KERAS_BACKEND, where the backend Keras would take (keras.json's, else TensorFlow) is not installed,
    as with requirements-jax.txt, the scripts run on the first of TensorFlow, JAX and PyTorch that is."""
    def only(*names):
        return lambda name: name in names

    assert common.installed_backend({}, tmp_path, only("tensorflow", "jax")) is None
    assert common.installed_backend({}, tmp_path, only("jax", "torch")) == ("tensorflow", "jax")
    assert common.installed_backend({"KERAS_BACKEND": "jax"}, tmp_path, only("tensorflow", "jax")) is None
    with pytest.raises(UserError, match=r"^KERAS_BACKEND=tensorflow, but tensorflow is not installed$"):
        common.installed_backend({"KERAS_BACKEND": "tensorflow"}, tmp_path, only("jax"))
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    assert common.installed_backend({}, tmp_path, only("torch")) is None
    assert common.installed_backend({}, tmp_path, only("tensorflow", "torch")) is None
    assert common.installed_backend({}, tmp_path, only("jax", "tensorflow")) == ("torch", "tensorflow")
    with pytest.raises(UserError, match=r"^Keras needs TensorFlow, JAX or PyTorch, and none is installed"):
        common.installed_backend({}, tmp_path, only())

    def packages(name):
        return {line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()} - {""}

    # The light install is requirements.txt with JAX's CPU build in TensorFlow's place.
    light = packages("requirements.txt") - {"tensorflow>=2.16"} | {"jax[cpu]>=0.4.34"}
    assert packages("requirements-jax.txt") == light


def test_a_gpu_the_install_cannot_use_is_said(tmp_path):
    driver = tmp_path / "version"  # as /proc/driver/nvidia/version, where the NVIDIA driver is loaded
    assert backends.unused_gpu([], driver) is None
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05\n")
    assert backends.unused_gpu([], driver) == ("note: an NVIDIA driver is loaded but tensorflow finds no GPU, so this "
                                               "runs on the CPU; pip install 'tensorflow[and-cuda]' gives it the GPU")
    assert backends.unused_gpu([("NVIDIA H200", (9, 0))], driver) is None


def test_mixed_precision_keeps_the_softmax_in_float32():
    import keras

    from config import DEFAULTS
    from model import build_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(DEFAULTS)
        assert model.layers[0].compute_dtype == "bfloat16"
        assert model.layers[-1].compute_dtype == "float32" and model.layers[-1].variable_dtype == "float32"
        output = model(np.zeros((1, 48, 48, 1), np.float32))
        assert keras.backend.standardize_dtype(output.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_batches_are_cut_to_a_multiple_of_the_devices_that_split_them():
    faces = synthetic.make_synthetic(21, seed=0)
    batches = feed.Batches(faces, 8, multiple=2)
    sizes = [len(batches[i][0]) for i in range(len(batches))]
    assert sizes == [8, 8, 4]  # 21 = 8 + 8 + 5, and 5 is cut to 4
    assert len(feed.Batches(faces.select(slice(0, 17)), 8, multiple=2)) == 2  # 17 = 8 + 8 + 1: the 1 goes


def test_shuffled_order_depends_on_seed_and_epoch_only():
    faces = synthetic.make_synthetic(40, seed=0)
    a = feed.Batches(faces, 8, shuffle=True, seed=3)
    first = a.order.copy()
    a.set_epoch(1)
    second = a.order.copy()
    a.on_epoch_end()  # Keras calls it more than once an epoch: it changes nothing
    np.testing.assert_array_equal(a.order, second)
    resumed = feed.Batches(faces, 8, shuffle=True, seed=3, epoch=1)
    np.testing.assert_array_equal(resumed.order, second)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(feed.Batches(faces, 8, shuffle=True, seed=3).order, first)


def test_batches_on_the_device_are_the_host_s_batches_and_mixup_mixes_pairs():
    faces = synthetic.make_synthetic(40, seed=0)
    host = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2)
    device = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2, on_device=True)
    for index in range(len(host)):
        for a, b in zip(host[index], device[index]):
            np.testing.assert_allclose(np.asarray(b), a, atol=1e-7)
    mixed = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2, mixup=0.4)
    x, y = mixed[1]
    plain_x, plain_y = host[1]
    np.testing.assert_allclose(y.sum(axis=1), 1, atol=1e-6)
    # Each face and label: weight * its own + (1 - weight) * another of the batch's, drawn from (seed, epoch, batch).
    rng = np.random.default_rng([3, 2, 1, 1])
    weight, other = rng.beta(0.4, 0.4), rng.permutation(16)
    np.testing.assert_allclose(x, plain_x * weight + plain_x[other] * (1 - weight), atol=1e-6)
    np.testing.assert_allclose(y, plain_y * weight + plain_y[other] * (1 - weight), atol=1e-6)
    assert not np.allclose(x, plain_x)
    again_x, again_y = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2, mixup=0.4, on_device=True)[1]
    np.testing.assert_allclose(np.asarray(again_x), x, atol=1e-6)  # the same draw from (seed, epoch, batch)
    np.testing.assert_allclose(np.asarray(again_y), y, atol=1e-6)
    # train.distill's targets in place of the one-hot labels, each face's own, on the host and on the device.
    targets = np.random.default_rng(0).dirichlet(np.ones(7), len(faces)).astype(np.float32)
    for on_device in (False, True):
        _, taught = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2, on_device=on_device, targets=targets)[1]
        np.testing.assert_allclose(np.asarray(taught), targets[host.rows(1)], atol=1e-7)
    assert backends.choose_feed("auto") == "host"  # no GPU here
    with pytest.raises(UserError, match="train.feed=device needs the jax or torch backend"):
        backends.choose_feed("device")


def test_cutmix_pastes_one_box_of_another_face_and_mixes_the_labels_by_its_area():
    faces = synthetic.make_synthetic(40, seed=0)
    plain_x, plain_y = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2)[1]
    x, y = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2, cutmix=1.0)[1]
    rng = np.random.default_rng([3, 2, 1, 1])  # (seed, epoch, batch): the box's area, its centre, the other faces
    half = 48 * np.sqrt(1 - rng.beta(1.0, 1.0)) / 2
    (top, left), other = rng.integers(0, 48, 2), rng.permutation(16)
    box = np.zeros((48, 48, 1), bool)
    box[max(0, int(top - half)):int(top + half), max(0, int(left - half)):int(left + half)] = True
    assert 0 < box.sum() < 48 * 48
    np.testing.assert_array_equal(x, np.where(box, plain_x[other], plain_x))
    np.testing.assert_allclose(y, plain_y * (1 - box.mean()) + plain_y[other] * box.mean(), atol=1e-6)
    device_x, device_y = feed.Batches(faces, 16, shuffle=True, seed=3, epoch=2, cutmix=1.0, on_device=True)[1]
    np.testing.assert_allclose(np.asarray(device_x), x, atol=1e-7)
    np.testing.assert_allclose(np.asarray(device_y), y, atol=1e-7)


def test_grouped_batches_hold_consecutive_batches_of_one_size():
    """train.scan_steps: an item is `group` batches one after the other where that many of one size remain, else
    one batch; each batch as Batches forms it alone, mixup included."""
    faces = synthetic.make_synthetic(21, seed=0)  # 21 = 5 x 4 + 1
    single = feed.Batches(faces, 4, shuffle=True, seed=3, epoch=1, mixup=0.4)
    grouped = feed.Batches(faces, 4, shuffle=True, seed=3, epoch=1, mixup=0.4, group=2)
    assert grouped.items == [(0, 2), (2, 2), (4, 1), (5, 1)] and len(grouped) == 4 and len(single) == 6
    for item, (first, count) in enumerate(grouped.items):
        for got, parts in zip(grouped[item], zip(*(single[batch] for batch in range(first, first + count)))):
            np.testing.assert_array_equal(got, np.concatenate(parts))


TWO_CPUS = """
import sys
import tensorflow as tf
tf.config.set_visible_devices([], "GPU")  # two CPU devices, also on a machine with one GPU
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {root!r})
import train
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpu_devices_matches_one_device(tmp_path, synthetic_csv):
    # Both runs see the same seed, initial weights and batches, and BatchNormalization normalizes each replica's
    # half of a batch with the whole batch's statistics (synchronized), as one device does; only the order of
    # float32 sums differs. At the notebook's learning rate the two agree to about 0.4% (each replica with statistics
    # of its own: 3% apart). Tolerance: 1% relative.
    script = tmp_path / "two_cpus.py"
    script.write_text(TWO_CPUS.format(root=str(ROOT)))
    losses = {}
    for kind in ("none", "mirrored"):
        result = run_script(script, "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                            "--set", "data.limit=600", "--set", "train.epochs=1", "--set", f"train.distribute={kind}",
                            "--set", "train.precision=float32", "--set", "model.dropout=0",
                            "--set", "train.batch_size=64", "--set", f"output.dir={tmp_path}",
                            "--set", f"output.name={kind}", "--no-evaluate")
        assert result.returncode == 0, result.stderr[-3000:]
        losses[kind] = pd.read_csv(tmp_path / kind / "history.csv").iloc[0]
    assert "distribution mirrored over 2 devices" in result.stdout
    for column in ("loss", "val_loss"):
        single, mirrored = losses["none"][column], losses["mirrored"][column]
        assert abs(mirrored - single) / single < 0.01, (column, single, mirrored)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_trains_and_evaluates_end_to_end_without_tensorflow(backend, tmp_path, synthetic_csv):
    """On JAX or PyTorch with no TensorFlow installed, as on a GPU machine with jax[cuda12] and keras alone (the
    faithful run's machine): an `import tensorflow` that fails, first on the path, stands in for the missing
    package. With every augmentation layer, and on JAX XLA still on (model.let_jax_compile). On PyTorch, the
    faces gathered on the device (train.feed) train as the host's batches do, step for step, one step a call."""
    needs(backend)
    (tmp_path / "no-tf" / "tensorflow").mkdir(parents=True)
    (tmp_path / "no-tf" / "tensorflow" / "__init__.py").write_text('raise ImportError("No module named tensorflow")')
    env = {"KERAS_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "no-tf"), os.environ.get("PYTHONPATH")]))}
    histories, feeds = {}, {"run": []}
    if backend == "torch":
        feeds = {"run": ["train.feed=device", "train.steps_per_execution=4"], "host": ["train.feed=host"]}
    for name, feed_settings in feeds.items():
        result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                            "--set", "data.limit=600", "--set", "train.epochs=2", "--set", "train.precision=float32",
                            "--set", "model.filters=[4, 8]", "--set", "model.dense=[16]",  # little for XLA to compile
                            *[part for setting in ("augment.flip=true", "augment.shift=0.05", "augment.rotation=10",
                                                   "augment.zoom=0.1", "augment.crop=44", "augment.erase=0.25")
                              for part in ("--set", f"train.{setting}")],
                            *[part for setting in feed_settings for part in ("--set", setting)],
                            "--set", f"output.dir={tmp_path}", "--set", f"output.name={name}", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        histories[name] = pd.read_csv(tmp_path / name / "history.csv")
        if name == "run":
            assert f"backend {backend}" in result.stdout
            assert ("XLA on" if backend == "jax" else "torch.compile off, distribution none, batches formed on the "
                    "device, 1 batch a call into the compiled function (Keras on PyTorch calls each step from "
                    "Python)") in result.stdout
    if backend == "torch":
        for column in ("loss", "accuracy"):
            assert histories["run"][column].tolist() == histories["host"][column].tolist(), column
    run_dir = tmp_path / "run"
    history = histories["run"]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]  # it learns
    final = json.loads((run_dir / "metrics-last.json").read_text())
    assert final["n"] == 200
    if backend == "jax":  # (evaluate.py on PyTorch: test_checkpoints, the shipped-style model)
        scored = run_script("evaluate.py", "--checkpoint", run_dir / "last.keras", "--out", tmp_path / "eval", env=env)
        assert scored.returncode == 0, scored.stderr[-3000:]
        assert json.loads((tmp_path / "eval" / "metrics-last.json").read_text())["accuracy"] == final["accuracy"]
        # export.py writes through TensorFlow: without it, one line.
        exported = run_script("export.py", run_dir / "last.keras", tmp_path / "model.onnx", env=env)
        assert_user_error(exported, "model.onnx needs TensorFlow, which Keras writes it with")
    # The same checkpoint scores alike under TensorFlow (in this process). Other kernels sum in other orders,
    # so a face on the border between two classes may flip: within 1 point.
    import evaluate

    assert evaluate.main(["--checkpoint", str(run_dir / "last.keras"), "--out", str(tmp_path / "tf-eval")]) == 0
    assert abs(json.loads((tmp_path / "tf-eval" / "metrics-last.json").read_text())["accuracy"]
               - final["accuracy"]) <= 0.01


@pytest.mark.slow
def test_the_fast_path_trains_as_the_plain_one_on_jax(tmp_path, synthetic_csv):
    """train.feed=device, steps_per_execution and large validation batches: the same batches in the same order,
    so the same training, step for step (the demo on JAX's CPU, 816 training faces in batches of 8). 102 steps an
    epoch: at most 4 steps a call is 3 (feed.steps_per_call; 4 itself, whose last call is partial, trains
    otherwise from the third epoch on in Keras 3.15); and Keras ends each epoch more than once, so Batches takes
    its epoch from fit (feed.FollowEpochs). train.scan_steps trains the same batches, several in one call."""
    needs("jax")
    histories, scores = {}, {}
    for name, settings in (("plain", ["train.feed=host"]),
                           ("fast", ["train.feed=device", "train.steps_per_execution=4",
                                     "train.validation_batch_size=200"]),
                           ("scanned", ["train.feed=device", "train.scan_steps=2", "train.epochs=1"])):
        result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                            "--set", "data.limit=820", "--set", "train.batch_size=8", "--set", "train.seed=0",
                            "--set", "train.precision=float32", "--set", "train.epochs=6",
                            *[part for setting in settings for part in ("--set", setting)],
                            "--set", f"output.dir={tmp_path}", "--set", f"output.name={name}",
                            env={"KERAS_BACKEND": "jax"})
        assert result.returncode == 0, result.stderr[-3000:]
        histories[name] = pd.read_csv(tmp_path / name / "history.csv")
        scores[name] = json.loads((tmp_path / name / "metrics-last.json").read_text())["accuracy"]
    assert len(histories["plain"]) == 6 and feed.steps_per_call(4, 102) == 3 and feed.steps_per_call(8, 404) == 4
    for column in ("loss", "accuracy"):
        assert histories["fast"][column].tolist() == histories["plain"][column].tolist(), column
    # The demo's 6 epochs: the faces' plateau, at chance, ends after 2 to 4 of them, as the CPU's and JAX's rounding
    # fall; after 3, some CPUs and JAX versions were still on it.
    assert scores["plain"] > 0.6 and abs(scores["fast"] - scores["plain"]) <= 0.005, scores
    # train.scan_steps=2: 51 calls of 2 steps an epoch, unrolled, computing as one step a call.
    environment = json.loads((tmp_path / "scanned" / "environment.json").read_text())
    assert environment["batches_scanned_a_call"] == 2 and environment["steps_per_execution"] == 1
    for column in ("loss", "accuracy"):
        np.testing.assert_allclose(histories["scanned"][column], histories["plain"][column][:1], rtol=1e-4)
    options = {**DEFAULTS["train"], "scan_steps": 2}
    with pytest.raises(UserError, match=r"train.scan_steps > 1 needs the jax backend .*train.feed device"):
        train.set_up(options, "none", None, synthetic.make_synthetic(20, seed=0))  # TensorFlow, in this process


@pytest.mark.slow
def test_jax_data_parallel_over_two_cpu_devices(tmp_path):
    needs("jax")
    # Odd row counts everywhere, so that batches must be cut (training, validation) or padded (predictions).
    source = write_rows(tmp_path / "f.csv", make_rows(["Training"] * 41 + ["PublicTest"] * 11 + ["PrivateTest"] * 9))
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={source}",
                        "--set", "data.protocol=standard", "--set", "train.epochs=1", "--set", "train.batch_size=8",
                        "--set", "model.filters=[4]", "--set", "model.dense=[8]",
                        "--set", "train.distribute=mirrored", "--set", f"output.dir={tmp_path}",
                        "--set", "output.name=dp", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distribution mirrored over 2 devices" in result.stdout
    metrics = json.loads((tmp_path / "dp" / "metrics-last.json").read_text())
    assert metrics["n"] == 9 and sum(map(sum, metrics["confusion_matrix"])) == 9  # every test face scored once


@pytest.mark.parametrize("tf_config, fragment", [
    ("{not json", "TF_CONFIG is not a cluster description"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "TF_CONFIG is not a cluster description"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "must be host:port"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "task worker 1 is not in"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}', "not a cluster description"),
])
def test_a_malformed_tf_config_is_one_clear_error(tf_config, fragment):
    with pytest.raises(UserError, match=fragment):
        distribute._check_tf_config(tf_config)
    distribute._check_tf_config('{"cluster": {"worker": ["127.0.0.1:1", "10.0.0.2:2"]}, "task": {"type": "worker", '
                              '"index": 1}}')


def test_malformed_jax_process_settings_are_one_clear_error(monkeypatch):
    good = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1,127.0.0.1:2", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    for name, value in good.items():
        monkeypatch.setenv(name, value)
    distribute.check_cluster_settings("jax")
    for name, value, fragment in (("KERAS_DISTRIBUTION_PROCESS_ID", "2", "process id 2 is not one of the 2"),
                                  ("KERAS_DISTRIBUTION_NUM_PROCESSES", "two", "must be integers"),
                                  ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "localhost", "must be host:port")):
        monkeypatch.setenv(name, value)
        with pytest.raises(UserError, match=fragment):
            distribute.check_cluster_settings("jax")
        monkeypatch.setenv(name, good[name])


@pytest.mark.slow
def test_train_with_a_bad_tf_config_stops_in_one_line_and_writes_nothing(tmp_path, synthetic_csv):
    result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                        "--set", f"output.dir={tmp_path}", env={"TF_CONFIG": "{not json"})
    assert_user_error(result, "TF_CONFIG is not a cluster description")
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def _free_ports(count):
    """Free ports on 127.0.0.1 for a cluster. TF_CONFIG and JAX's coordinator need their numbers before the
    processes start, and the TensorFlow cluster did not come up while this process held them bound (tried with
    SO_REUSEPORT), so they are closed again first: another program could take one in between."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    yield ports


def _cluster_env(backend, ports, index, tmp_path):
    """The environment of process `index` of a cluster on 127.0.0.1, as the README's recipe sets it."""
    (tmp_path / f"tmp{index}").mkdir(exist_ok=True)
    env = {**os.environ, "KERAS_BACKEND": backend, "TMPDIR": str(tmp_path / f"tmp{index}")}
    if backend == "tensorflow":
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    else:
        env.update({"KERAS_DISTRIBUTION_JOB_ADDRESSES": ",".join(f"127.0.0.1:{port}" for port in ports),
                    "KERAS_DISTRIBUTION_NUM_PROCESSES": str(len(ports)), "KERAS_DISTRIBUTION_PROCESS_ID": str(index)})
    return env


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_processes_write_one_run_directory_and_resume_together(backend, tmp_path, synthetic_csv):
    """Two workers (TensorFlow's MultiWorkerMirroredStrategy from TF_CONFIG, or keras.distribution on JAX) on
    127.0.0.1 sharing one output folder, both killed after epoch 1 and resumed: one run directory with every
    epoch, the same final weights and shuffling in both, nothing left elsewhere."""
    needs(backend)
    with _free_ports(2) as ports:
        _two_workers_killed_and_resumed(backend, ports, tmp_path, synthetic_csv)


def _two_workers_killed_and_resumed(backend, ports, tmp_path, synthetic_csv):
    import subprocess
    import sys

    run_dir = tmp_path / "runs" / "mw"

    def start(*args, signal_at=None):
        extra = {TEST_SIGNAL: signal_at} if signal_at else {}
        return [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                                 env={**_cluster_env(backend, ports, index, tmp_path), **extra},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(2)]

    # No train.seed: the chief's fresh shuffling seed must reach the other worker.
    first = start("--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}", "--set", "data.limit=200",
                  "--set", "model.filters=[4]", "--set", "model.dense=[8]",  # little for XLA to compile
                  "--set", "train.epochs=2", "--set", "train.precision=float32", "--set", "train.seed=null",
                  "--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.name=mw", "--no-evaluate",
                  signal_at="SIGKILL@epoch 2 batch 1")  # each worker kills itself as epoch 2 begins
    outputs = [process.communicate(timeout=400)[0] for process in first]
    assert [process.returncode for process in first] == [-9, -9], [output[-3000:] for output in outputs]
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0]
    killed_leftovers = set((tmp_path / "tmp1").iterdir())  # a kill -9 leaves the worker no time to clean up
    resumed = start("--resume", run_dir, "--no-evaluate")
    outputs = [process.communicate(timeout=400)[0] for process in resumed]
    assert [process.returncode for process in resumed] == [0, 0], [output[-3000:] for output in outputs]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["mw"]
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"]
    ends = [line for output in outputs for line in output.splitlines() if line.startswith("final weights sha256")]
    assert len(ends) == 2 and ends[0] == ends[1] and ends[0].endswith(f"shuffle seed {state['shuffle_seed']}")
    assert "resuming" in outputs[1] and "worker done" in outputs[1]
    assert set((tmp_path / "tmp1").iterdir()) == killed_leftovers  # the resumed worker's own folder is gone


@pytest.mark.slow
@pytest.mark.parametrize("backend, index", [("tensorflow", 0), ("jax", 1)])  # the chief alone, a worker alone
def test_a_worker_alone_stops_in_one_line_after_the_cluster_timeout(backend, index, tmp_path, synthetic_csv):
    needs(backend)
    with _free_ports(2) as ports:
        result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                            "--set", "train.cluster_timeout=2", "--set", f"output.dir={tmp_path / 'runs'}",
                            env=_cluster_env(backend, ports, index, tmp_path), timeout=120)
    assert_user_error(result, "not every process of the cluster came within 2 s",
                      "1 of 2 came" if index == 0 else "did not let this process (rank 1) go on")
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
