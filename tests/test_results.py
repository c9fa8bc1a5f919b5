"""results.py's reading of a history: the plateau, and when the notebook's EarlyStopping as written would act;
and the committed results/, recomputed from their predictions and FER2013's labels."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import data
import fingerprint
import predictions
import results
from common import UserError
from conftest import ROOT, assert_user_error, run_script

PUBLISHED_LOG = ROOT.parent / "shared" / "notebook" / "training_log.csv"


def history(val_accuracy):
    n = len(val_accuracy)
    return pd.DataFrame({"epoch": range(1, n + 1), "loss": [1.0] * n, "accuracy": [0.5] * n,
                         "val_loss": [1.0] * n, "val_accuracy": val_accuracy})


def test_early_stopping_as_written_replays_keras_own_callback():
    # val_acc patience 6, min_delta 0: epoch 1 sets the best, six epochs without a gain stop the run after epoch 7.
    assert results.early_stopping_epoch(history([0.25] * 12)) == 7
    assert results.early_stopping_epoch(history([0.25, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.31])) == 8
    assert results.early_stopping_epoch(history([0.1 * i for i in range(1, 10)])) is None


def test_plateau_is_the_epochs_at_the_first_value():
    assert results.plateau_epochs(history([0.2489, 0.2489, 0.2497, 0.2854, 0.31])) == 3
    assert results.plateau_epochs(history([0.2489] * 4)) == 4


def test_the_published_log_reads_as_its_readme_says():
    if not PUBLISHED_LOG.is_file():
        pytest.skip("../shared/notebook/training_log.csv is not here")
    log = results.read_history(PUBLISHED_LOG)
    assert len(log) == 100 and results.plateau_epochs(log) == 13
    assert results.early_stopping_epoch(log) == 7  # "would have stopped this very run after epoch 7"


FOLDERS = sorted({path.parent.name for path in (ROOT / "results").glob("*/metrics*.json")})


def moved_copy(faces, path, seed=7):
    """The faces in another order within each Usage block, every pixel moved by up to ±3 grey levels."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(faces.usage == usage)) for usage in range(3)])
    moved = faces.select(order)
    noise = rng.integers(-3, 4, moved.images.shape)
    data.write_csv(path, data.Faces(np.clip(moved.images + noise, 0, 255).astype(np.uint8), moved.labels, moved.usage))
    return path


@pytest.fixture(scope="module")
def fer2013_moved(fer2013_faces, tmp_path_factory):
    return moved_copy(fer2013_faces, tmp_path_factory.mktemp("moved") / "fer2013.csv")


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS)
def test_committed_results_recompute_from_fer2013_labels(folder, fer2013_csv):
    checked = predictions.check(ROOT / "results" / folder, fer2013_csv)
    assert checked and all(Path(path).name.startswith("predictions") for path in checked)


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS)
def test_committed_results_recompute_from_a_reordered_jittered_copy(folder, fer2013_moved):
    assert predictions.check(ROOT / "results" / folder, fer2013_moved)


@pytest.mark.slow
def test_a_committed_prediction_changed_fails_the_check(fer2013_moved, tmp_path):
    folder = tmp_path / "seed"
    shutil.copytree(ROOT / "results" / "seed", folder)
    table = pd.read_csv(folder / "predictions-last.csv.gz")
    table.loc[0, "predicted"] = (table.loc[0, "predicted"] + 1) % 7
    table.to_csv(folder / "predictions-last.csv.gz", index=False)
    with pytest.raises(UserError, match="recomputes to"):
        predictions.check(folder, fer2013_moved)


def synthetic_results(folder, faces, split="PrivateTest"):
    """A results folder for `faces`' split, with the columns results.py keeps: every fifth face predicted wrong."""
    chosen = faces.select(faces.usage == data.USAGES.index(split))
    predicted = np.where(np.arange(len(chosen)) % 5 == 0, (chosen.labels + 1) % 7, chosen.labels)
    probabilities = np.eye(7, dtype=np.float32)[predicted] * 0.9 + 0.1 / 7
    metrics = {"split": split, "n": len(chosen), "accuracy": float(np.mean(predicted == chosen.labels)),
               "confusion_matrix": np.histogram2d(chosen.labels, predicted, bins=7, range=[[0, 7], [0, 7]])[0]
               .astype(int).tolist(), "classes": list(data.EMOTIONS)}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    prints = fingerprint.encode(fingerprint.fingerprints(chosen.images))
    columns = {"row": np.arange(len(chosen)), "face": prints, "predicted": predicted}
    columns.update({f"p_{name}": probabilities[:, i] for i, name in enumerate(data.EMOTIONS)})
    pd.DataFrame(columns).to_csv(folder / "predictions.csv", index=False)
    return folder


def test_predictions_find_their_faces_in_any_order_and_fail_when_faces_are_missing(synthetic_csv, tmp_path):
    faces = data.read_faces(synthetic_csv, None)
    folder = synthetic_results(tmp_path, faces)
    assert predictions.check(folder, synthetic_csv)
    assert predictions.check(folder, moved_copy(faces, tmp_path / "moved.csv"))
    # The copy without 3 of the split's faces: a clear message, not a wrong figure.
    private = np.flatnonzero(faces.usage == data.USAGES.index("PrivateTest"))
    data.write_csv(tmp_path / "fewer.csv", faces.select(np.setdiff1d(np.arange(len(faces)), private[:3])))
    with pytest.raises(UserError, match="3 of the 200 faces predicted are not in"):
        predictions.check(folder, tmp_path / "fewer.csv")


def test_two_alike_faces_with_other_labels_and_other_predictions_are_ambiguous():
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (1, 48, 48), dtype=np.uint8)
    other = rng.integers(0, 256, (1, 48, 48), dtype=np.uint8)
    images = np.concatenate([face, face, other])
    prints = fingerprint.fingerprints(images)
    # Same predictions for the twins: any match gives the same scores.
    assert sorted(fingerprint.match(prints, np.array([1, 1, 2]), images, np.array([3, 4, 2]), "copy")[:2]) == [0, 1]
    with pytest.raises(UserError, match="cannot tell which is which"):
        fingerprint.match(prints, np.array([1, 2, 2]), images, np.array([3, 4, 2]), "copy")
    # A blank face matches a blank face, whatever its noise.
    blank = np.zeros((1, 48, 48), np.uint8)
    assert fingerprint.match(fingerprint.fingerprints(blank), np.array([0]), blank + 3, np.array([0]), "copy") == [0]


@pytest.mark.slow
def test_results_of_a_folder_that_is_no_run(tmp_path):
    assert_user_error(run_script("results.py", tmp_path / "nothing"), "no such folder")
    assert_user_error(run_script("results.py", tmp_path), "no history.csv")


def test_a_run_recorded_before_init_weights_had_a_field_still_says_where_it_started(tmp_path):
    environment = tmp_path / "environment.json"
    environment.write_text(json.dumps({"command": "train.py --config c.yaml --init-weights 'old runs/best.keras' "
                                                  "--set train.seed=1"}))
    assert results.started_from(str(tmp_path)) == {"path": "old runs/best.keras"}
    # Its first epochs at one value are no majority-class plateau: it started trained.
    (tmp_path / "config.yaml").write_text((ROOT / "configs" / "improved-cycle2.yaml").read_text())
    history([0.643, 0.644, 0.648, 0.66]).to_csv(tmp_path / "history.csv", index=False)
    assert results.summarize(str(tmp_path), results.read_history(str(tmp_path / "history.csv")), None)[
        "plateau_epochs"] == 0
    environment.write_text(json.dumps({"command": "train.py --config c.yaml"}))
    assert results.started_from(str(tmp_path)) is None
    assert results.summarize(str(tmp_path), results.read_history(str(tmp_path / "history.csv")), None)[
        "plateau_epochs"] == 3


def test_a_finished_run_fetched_without_its_checkpoints_counts_as_finished(tmp_path):
    # train.py's state.json says finished; best.keras and last.keras stayed on the machine that trained it.
    run = tmp_path / "gpu-run"
    run.mkdir()
    (run / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (run / "environment.json").write_text(json.dumps({"command": "train.py --config config.yaml",
                                                      "epochs_done_at_start": 0}))
    history([0.25, 0.25, 0.3, 0.4]).to_csv(run / "history.csv", index=False)
    (run / "state.json").write_text(json.dumps({"epochs_done": 4, "finished": False}))
    out = tmp_path / "out"
    assert results.publish(str(run), str(out), notebook_log=None)["finished"] is False
    (run / "state.json").write_text(json.dumps({"epochs_done": 4, "finished": True}))
    assert results.publish(str(run), str(out), notebook_log=None)["finished"] is True
    assert not (out / "checkpoints.sha256").exists()  # no checksum of checkpoints it does not have
    (run / "last.keras").write_bytes(b"weights")
    results.publish(str(run), str(out), notebook_log=None)
    assert (out / "checkpoints.sha256").read_text().endswith("  last.keras\n")
    # Another run is not published over this one's results (its files and theirs would mix).
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    (other / "environment.json").write_text(json.dumps({"command": "train.py --config config.yaml --set "
                                                        "train.seed=2", "epochs_done_at_start": 0}))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(UserError, match="out holds the results of another run"):
        results.publish(str(other), str(out), notebook_log=None)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_the_readme_results_table_is_what_the_results_folders_say():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- made by `python results.py table`")
    table = readme[readme.index("\n", start) + 1:readme.index("<!-- end of table -->")]
    assert table == results.results_table()
    # Every folder of results/ is a row, and every row's folder is in results/.
    folders = {path.name for path in (ROOT / "results").iterdir() if path.is_dir()}
    assert folders == set(re.findall(r"`results/([^/`]+)/`", table))


def test_a_results_table_row_reads_the_run_it_came_from(tmp_path):
    folder = tmp_path / "gpu-run"
    folder.mkdir()
    (folder / "environment.json").write_text(json.dumps({
        "command": "train.py --no-evaluate --config configs/x.yaml --init-weights 'a b/old/best.keras' "
                   "--set train.seed=3 "
                   "--set data.path=/data/fer.csv --set output.name=gpu-run", "backend": "jax", "cpu_cores": 16}))
    summary = {"run": "gpu-run", "finished": False, "epochs_done": 7, "epochs": 10, "best_val_accuracy": 0.61234,
               "best_val_accuracy_epoch": 6, "hours": 0.1234, "final_weights_PrivateTest_accuracy": 0.7001,
               "parts": [{"commit": "0123456789abcdef", "cpu": "Intel", "precision": "bfloat16",
                          "devices": "gpu:0; NVIDIA H200 (compute capability 9.0)"}]}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics-tencrop.json").write_text(json.dumps({"accuracy": 0.74567}))
    assert results.table_row(str(folder)) == (
        "`configs/x.yaml` (train.seed=3, from old/best.keras), `results/gpu-run/`", "0.7001 / -", "- / 0.7457",
        "0.6123 (6)", "0.12", "NVIDIA H200, jax, bfloat16", "0123456", "unfinished: 7 of 10 epochs")


def test_runs_that_differ_in_their_seed_alone_share_one_row_of_mean_and_sd(tmp_path):
    """The faithful run's seeds: one row, each figure the mean ± sample standard deviation; an unfinished seed,
    another setting or another machine keeps a row of its own."""
    def write(name, seed, final, best_val, epoch, finished=True, device="NVIDIA H200", extra=""):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "environment.json").write_text(json.dumps({
            "command": f"train.py --config config.yaml --set data.path=/tmp/f.csv --set train.seed={seed} "
                       f"--set train.feed=device{extra} --set output.name={name}", "backend": "jax"}))
        (folder / "summary.json").write_text(json.dumps({
            "run": name, "finished": finished, "epochs_done": 100 if finished else 60, "epochs": 100,
            "best_val_accuracy": best_val, "best_val_accuracy_epoch": epoch, "hours": 0.02 * seed,
            "final_weights_PrivateTest_accuracy": final, "best_checkpoint_PrivateTest_accuracy": final - 0.05,
            "parts": [{"commit": "abcdef0123", "precision": "mixed_float16", "devices": f"gpu:0; {device} (9.0)"}]}))

    write("faithful-seed1", 1, 0.63, 0.62, 90)
    write("faithful-seed2", 2, 0.64, 0.63, 95)
    write("faithful-seed3", 3, 0.62, 0.64, 99)
    write("faithful-seed4", 4, 0.60, 0.61, 50, finished=False)
    write("faithful-h100", 5, 0.61, 0.60, 70, device="NVIDIA H100")
    write("faithful-float32", 6, 0.62, 0.61, 80, extra=" --set train.precision=float32")
    rows = [line.split(" | ") for line in results.results_table(str(tmp_path)).splitlines()[3:]]
    assert [row[0].lstrip("| ") for row in rows] == [
        "`config.yaml` (train.seed=6, train.feed=device, train.precision=float32), `results/faithful-float32/`",
        "`config.yaml` (train.seed=5, train.feed=device), `results/faithful-h100/`",
        "`config.yaml` (train.feed=device), seeds 1, 2, 3: `results/faithful-seed1/`, `results/faithful-seed2/`, "
        "`results/faithful-seed3/`",
        "`config.yaml` (train.seed=4, train.feed=device), `results/faithful-seed4/`"]
    assert rows[2][1:] == ["0.6300 ± 0.0100 / 0.5800 ± 0.0100", "-", "0.6300 ± 0.0100 (90, 95, 99)", "0.04 (mean)",
                           "NVIDIA H200, jax, mixed_float16", "abcdef0", "finished; mean ± sd of 3 seeds |"]
    assert rows[3][-1] == "unfinished: 60 of 100 epochs |"
