"""colab.ipynb runs top to bottom in local mode, is committed without outputs, and download.py
fetches FER2013 through kagglehub (tested on a prepared kagglehub cache and an unreachable local endpoint,
never the internet)."""
import json

import nbformat
import pytest
import numpy as np
from PIL import Image

import data
import download
from conftest import ROOT, assert_user_error, run_script

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end

NOTEBOOK = ROOT / "colab.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
        assert "widgets" not in cell.metadata and "execution" not in cell.metadata
    assert "widgets" not in notebook.metadata


def test_notebook_leads_every_step_with_markdown():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    headings = [cell.source.splitlines()[0] for cell in notebook.cells if cell.cell_type == "markdown"]
    for step in ("Check the runtime", "Get the code", "Install", "Google Drive", "FER2013", "Train, or resume",
                 "Evaluate", "your own photo", "live in the browser"):
        assert any(step in heading for heading in headings), step
    for i, cell in enumerate(notebook.cells[1:], start=1):
        if cell.cell_type == "code":
            assert notebook.cells[i - 1].cell_type == "markdown"


def test_notebook_runs_in_local_mode(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("FER2013_NOTEBOOK_MODE", "local")
    monkeypatch.setenv("FER2013_NOTEBOOK_OUTPUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    run_dir = tmp_path / "runs" / "local"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "PrivateTest" and metrics["n"] == 60
    for picture in ("curves.png", "confusion_matrix.png"):
        assert (run_dir / picture).read_bytes()[:4] == b"\x89PNG"
    outputs = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.outputs)
    assert f"PrivateTest accuracy {metrics['accuracy']:.4f} on 60 images" in outputs
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # curves, confusion matrix and the annotated photo shown inline
    # The predict cell ran predict.py on the photo: one record per face found, and the annotated copy.
    records = [json.loads(line) for line in (run_dir / "predictions" / "predictions.jsonl").read_text().splitlines()]
    assert records and all(record["source"].endswith("astronaut.png") for record in records)
    assert all(record["emotion"] in data.EMOTIONS for record in records)
    assert (run_dir / "predictions" / "astronaut.png").read_bytes()[:4] == b"\x89PNG"
    assert f"local mode: the app for {run_dir / 'best.keras'} is built, not served" in outputs


def test_a_failing_script_stops_the_notebook(tmp_path, capsys):
    """The notebook's script() helper raises on a non-zero exit status, so Run all stops at that cell."""
    import pytest

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [cell] = [cell for cell in notebook.cells if "def script(" in cell.source]
    namespace = {}
    exec(cell.source[cell.source.index("def script("):cell.source.index("\n\n\n", cell.source.index("def script("))],
         {"subprocess": __import__("subprocess"), "sys": __import__("sys")}, namespace)
    with pytest.raises(RuntimeError, match="train.py --config .*missing.yaml failed with exit status 2"):
        namespace["script"](ROOT / "train.py", "--config", tmp_path / "missing.yaml")
    assert "config file" in capsys.readouterr().out  # the script's one-line error, shown in the cell


def _kaggle_env(tmp_path):
    """kagglehub with a cache of our own, no credentials, and its API pointed at localhost:7777, where nothing
    listens: any request is refused at once, as offline."""
    cache = tmp_path / "kagglehub"
    return cache, {"KAGGLEHUB_CACHE": str(cache), "KAGGLE_CONFIG_DIR": str(tmp_path / "no-credentials"),
                   "KAGGLE_USERNAME": "", "KAGGLE_KEY": "", "KAGGLE_API_ENVIRONMENT": "TEST"}


def test_download_takes_the_competition_csv_from_the_kagglehub_cache(tmp_path, synthetic_csv):
    cache, env = _kaggle_env(tmp_path)
    competition = cache / "competitions" / download.COMPETITION
    competition.mkdir(parents=True)
    (competition / "fer2013.csv").write_bytes(synthetic_csv.read_bytes())
    (cache / "competitions" / f"{download.COMPETITION}.complete").write_text("")
    result = run_script("download.py", "--dest", tmp_path / "data", "--source", "competition", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "fer2013.csv").read_bytes() == synthetic_csv.read_bytes()
    again = run_script("download.py", "--dest", tmp_path / "data", env=env)
    assert again.returncode == 0 and "there already" in again.stdout


def test_download_converts_the_image_folder_release(tmp_path):
    cache, env = _kaggle_env(tmp_path)
    release = cache / "datasets" / "someone" / "fer2013" / "versions" / "1"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)
    for (split, name, label), image in zip([("train", "Training_2.png", "happy"), ("train", "Training_1.png", "sad"),
                                            ("test", "PrivateTest_9.png", "angry")], images):
        (release / split / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(release / split / label / name)
    (cache / "datasets" / "someone" / "fer2013" / "1.complete").write_text("")
    result = run_script("download.py", "--dest", tmp_path / "data", "--source", "someone/fer2013/versions/1",
                        env=env)
    assert result.returncode == 0, result.stderr
    faces = data.read_faces(tmp_path / "data" / "fer2013.csv", None)
    np.testing.assert_array_equal(faces.images, images[[1, 0, 2]])  # Training by file name, then PrivateTest
    assert faces.labels.tolist() == [4, 3, 0] and faces.usage.tolist() == [0, 0, 2]


def test_download_offline_or_without_credentials_says_so(tmp_path):
    _, env = _kaggle_env(tmp_path)
    offline = run_script("download.py", "--dest", tmp_path / "data", env=env)
    assert_user_error(offline, "cannot reach Kaggle (offline?)", "kaggle.com", str(tmp_path / "data" / "fer2013.csv"))
    unauthenticated = run_script("download.py", "--dest", tmp_path / "data", "--source", "competition",
                                 env=env)
    assert_user_error(unauthenticated, "Kaggle credentials are needed", "KAGGLE_USERNAME")
    assert not (tmp_path / "data" / "fer2013.csv").exists()


def test_readme_opens_the_notebook_in_colab():
    text = (ROOT / "README.md").read_text()
    assert "https://colab.research.google.com/assets/colab-badge.svg" in text
    assert "colab.research.google.com/github/" in text and "/blob/main/colab.ipynb" in text
