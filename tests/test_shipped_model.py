"""The model shipped in models/: what a fresh clone gets. It loads with plain Keras on TensorFlow and JAX, scores
what models/README.md says on the real PrivateTest (FER2013_CSV), and runs behind evaluate.py and predict.py
when no --checkpoint is given."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import data
from conftest import ROOT, needs, run_script

SHIPPED = sorted((ROOT / "models").glob("fer2013-*.keras"))
pytestmark = [pytest.mark.skipif(not SHIPPED, reason="no model is shipped in models/ yet"), pytest.mark.slow]
PLAIN_ARGMAX_FLOOR = 0.68  # the improved-recipe issue's bar for a plain argmax (the notebook: 0.6317)

# The shipped model's PrivateTest answers, from plain Keras on the backend named by KERAS_BACKEND: nothing of ours.
SCORE_WITH_PLAIN_KERAS = """
import sys, numpy as np, keras
images = np.load(sys.argv[2])
model = keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(images.astype("float32")[..., None] / 255, batch_size=256, verbose=0))
print(keras.backend.backend())
"""


def test_one_model_is_shipped_small_enough_for_the_repository():
    assert len(SHIPPED) == 1, SHIPPED
    assert SHIPPED[0].stat().st_size <= 20e6
    card = (ROOT / "models" / "README.md").read_text()
    assert f"# {SHIPPED[0].name}" in card and "FER2013's own terms" in card


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_plain_keras_scores_privatetest_with_the_shipped_model(backend, fer2013_faces, tmp_path):
    needs(backend)
    private = fer2013_faces.select(fer2013_faces.usage == data.USAGES.index("PrivateTest"))
    np.save(tmp_path / "faces.npy", private.images)
    result = subprocess.run([sys.executable, "-c", SCORE_WITH_PLAIN_KERAS, str(SHIPPED[0]), str(tmp_path / "faces.npy"),
                             str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == backend
    probabilities = np.load(tmp_path / "p.npy")
    assert probabilities.shape == (len(private), len(data.EMOTIONS))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == private.labels))
    assert accuracy >= PLAIN_ARGMAX_FLOOR
    # The figure the model card gives for it (a face whose top two emotions tie within float32 rounding may go
    # either way on another backend or CPU: two faces of slack).
    card = (ROOT / "models" / "README.md").read_text()
    stated = re.search(rf"\| {re.escape(SHIPPED[0].name)} \(this file\) \| PrivateTest \| none \| ([0-9.]+) \|", card)
    assert stated and abs(float(stated[1]) - accuracy) <= 2 / len(private) + 5e-5, (stated, accuracy)


def test_predict_names_the_emotion_in_the_readme_photo_without_a_checkpoint(tmp_path):
    result = run_script("predict.py", ROOT / "docs" / "astronaut.jpg", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == f"using the shipped model {SHIPPED[0]} (no --checkpoint given)"
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 1  # one face, found and named
    assert records[0]["emotion"] == "Happy" and (tmp_path / "astronaut.jpg").is_file()


def test_evaluate_without_a_checkpoint_writes_under_runs_and_leaves_models_alone(synthetic_csv, tmp_path):
    before = {path.name: path.stat().st_mtime_ns for path in (ROOT / "models").iterdir()}
    result = run_script("evaluate.py", "--data", synthetic_csv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {path.name: path.stat().st_mtime_ns for path in (ROOT / "models").iterdir()} == before
    written = tmp_path / "runs" / f"evaluate-{SHIPPED[0].stem}"
    stem = SHIPPED[0].stem  # named after the checkpoint, as for any checkpoint not called best.keras
    assert {f"metrics-{stem}.json", f"predictions-{stem}.csv", f"confusion_matrix-{stem}.png"} <= {
        path.name for path in written.iterdir()}
