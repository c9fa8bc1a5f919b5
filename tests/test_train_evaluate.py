import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

import checkpoints
import data
import evaluate
import feed
import train
from config import load_config
from conftest import ROOT, assert_user_error, run_script
from model import forward_flops

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end

RUN_FILES = {"config.yaml", "best.keras", "last.keras", "history.csv", "curves.png", "model.json",
             "model.weights.h5", "metrics.json", "confusion_matrix.png", "metrics-last.json",
             "confusion_matrix-last.png"}


def test_training_writes_the_whole_run_directory(trained_run):
    run_dir, result = trained_run
    assert RUN_FILES <= {path.name for path in run_dir.iterdir()}
    assert not list(run_dir.glob("*.writing*"))  # every temporary name renamed into place
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3, 4, 5]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history.columns)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 6 and saved["model"]["filters"] == [8, 16, 32]
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"run directory: {run_dir}" in result.stdout
    with h5py.File(run_dir / "model.weights.h5") as exported:  # the notebook's export: weights, no Adam moments
        assert "layers" in exported and "optimizer" not in exported


def test_a_log_file_gets_one_progress_line_per_epoch(trained_run):
    """stdout is a pipe here, as in a log file: Keras's per-step bar would write a line per batch."""
    _, result = trained_run
    progress = [line for line in result.stdout.splitlines() if " - loss: " in line or "val_loss" in line]
    assert len(progress) == 6, progress  # train.epochs=6
    assert len([line for line in result.stdout.replace("\r", "\n").splitlines() if "step" in line]) == 6


def test_training_learns_the_synthetic_faces(trained_run):
    run_dir, result = trained_run
    final = json.loads((run_dir / "metrics-last.json").read_text())
    best = json.loads((run_dir / "metrics.json").read_text())
    assert final["split"] == "PrivateTest" and final["n"] == 200
    # Chance is 1/7. Ten seeds of this check scored 0.875-0.995 in float32 (what `auto` trains in on a CPU) with the
    # demo's BatchNormalization momentum of 0.9 (docs/performance.md: Precision); with Keras's 0.99, 0.56-0.97.
    assert final["accuracy"] > 0.8 and best["accuracy"] > 0.8
    assert f"final weights (last.keras): PrivateTest accuracy {final['accuracy']:.4f}" in result.stdout
    assert f"best checkpoint (best.keras): PrivateTest accuracy {best['accuracy']:.4f}" in result.stdout


def test_best_keras_holds_the_epoch_with_the_lowest_val_loss(trained_run, synthetic_csv):
    run_dir, _ = trained_run
    history = pd.read_csv(run_dir / "history.csv")
    best_epoch = int(history["val_loss"].idxmin())
    _, validation, _ = data.split(data.read_faces(synthetic_csv), "notebook", 0.2)
    model = checkpoints.load_checkpoint(str(run_dir / "best.keras"))
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    loss, _ = model.evaluate(data.to_float(validation.images), data.one_hot(validation.labels), verbose=0)
    # The checkpoint's loss includes the L2 penalty, as the history does; float32 sums differ slightly.
    assert abs(loss - history["val_loss"][best_epoch]) < 1e-3


def test_evaluate_matches_an_independent_computation(trained_run, synthetic_csv, tmp_path):
    run_dir, _ = trained_run
    result = run_script("evaluate.py", "--checkpoint", run_dir / "best.keras", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert (tmp_path / "mistakes.png").read_bytes()[:4] == b"\x89PNG"
    # Independently: the notebook's last cell, argmax of predict on PrivateTest against the true labels.
    import keras

    x_train, y_train, x_test, y_test = data.load_data(synthetic_csv)
    model = keras.saving.load_model(run_dir / "best.keras")
    predicted = np.argmax(model.predict(x_test, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == np.argmax(y_test, axis=1)))
    assert metrics["n"] == len(x_test) == 200
    assert abs(metrics["accuracy"] - accuracy) < 1e-9
    assert f"PrivateTest accuracy: {accuracy:.4f} (200 images)" in result.stdout
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 200 and np.trace(matrix) == round(accuracy * 200)
    assert matrix.sum(axis=1).tolist() == np.bincount(np.argmax(y_test, axis=1), minlength=7).tolist()
    recall = {name: row["recall"] for name, row in metrics["per_class"].items()}
    for i, name in enumerate(data.EMOTIONS):
        truth = np.argmax(y_test, axis=1) == i
        assert abs(recall[name] - np.mean(predicted[truth] == i)) < 1e-9


def test_evaluate_reads_the_model_json_export_and_another_split(trained_run, tmp_path):
    run_dir, _ = trained_run
    assert evaluate.main(["--checkpoint", str(run_dir / "model.json"), "--split", "PublicTest",
                          "--out", str(tmp_path)]) == 0
    from_json = json.loads((tmp_path / "metrics-model-PublicTest.json").read_text())
    assert from_json["split"] == "PublicTest" and from_json["n"] == 200
    # model.json + model.weights.h5 hold the final weights: the same predictions as last.keras.
    for split in ("PublicTest", "PrivateTest"):  # each split's files beside the other's
        assert evaluate.main(["--checkpoint", str(run_dir / "last.keras"), "--split", split,
                              "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics-last-PublicTest.json").read_text())["confusion_matrix"] == \
        from_json["confusion_matrix"]
    assert json.loads((tmp_path / "metrics-last.json").read_text())["split"] == "PrivateTest"
    assert len(list(tmp_path.glob("predictions*.csv"))) == 3


def test_a_checkpoint_on_a_read_only_mount_is_scored(trained_run, synthetic_csv, tmp_path):
    # As Kaggle's /kaggle/input: a file system mounted read-only, in a mount namespace (Linux, as root).
    read_only = tmp_path / "input"
    read_only.mkdir()
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "mount", "-t", "tmpfs", "tmpfs",
                                                      read_only], capture_output=True).returncode:
        pytest.skip("needs unshare --mount and mount (root on Linux) for a read-only file system")
    run_dir, _ = trained_run
    script = (f"mount -t tmpfs tmpfs {read_only} && cp {run_dir / 'best.keras'} {read_only} && mount -o remount,ro "
              f"{read_only} || exit 9; cd {tmp_path}; {sys.executable} {ROOT / 'evaluate.py'} --checkpoint "
              f"{read_only / 'best.keras'} --data {synthetic_csv}")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote runs/evaluate-best/metrics.json" in result.stdout  # beside it could not be written
    assert json.loads((tmp_path / "runs" / "evaluate-best" / "metrics.json").read_text())["n"] == 200


def test_an_ensemble_scores_the_mean_of_its_members_probabilities(trained_run, synthetic_csv, tmp_path):
    import keras

    run_dir, _ = trained_run
    other = keras.saving.load_model(run_dir / "best.keras")  # a second member: the same network, another last bias
    other.layers[-1].bias.assign(np.random.default_rng(0).normal(0, 5, 7).astype("float32"))  # to outvote it
    other.save(tmp_path / "other.keras")
    members = [str(run_dir / "best.keras"), str(tmp_path / "other.keras")]
    assert evaluate.main(["--checkpoint", *members, "--data", str(synthetic_csv), "--split", "PublicTest",
                          "--out", str(tmp_path)]) == 0
    faces = data.read_faces(synthetic_csv)
    images = data.to_float(faces.images[faces.usage == data.USAGES.index("PublicTest")])
    best, second = (keras.saving.load_model(path).predict(images, verbose=0) for path in members)
    assert (best.argmax(axis=1) != second.argmax(axis=1)).any()
    ensemble = pd.read_csv(tmp_path / "predictions-ensemble-PublicTest.csv")
    columns = [f"p_{name}" for name in data.EMOTIONS]
    np.testing.assert_allclose(ensemble[columns], (best + second) / 2, atol=2e-6)
    metrics = json.loads((tmp_path / "metrics-ensemble-PublicTest.json").read_text())
    assert metrics["ensemble"] == members and metrics["n"] == 200
    assert metrics["accuracy"] == np.mean(ensemble["predicted"] == ensemble["true"])
    assert_user_error(run_script("evaluate.py", "--checkpoint", *members, "--weights", "w.h5"), "--weights", "ensemble")


def test_missing_dataset_says_where_to_get_fer2013(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        train.main(["--config", "config.yaml", "--set", f"data.path={tmp_path}/fer2013.csv",
                    "--set", f"output.dir={tmp_path}/runs"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no dataset at") and "kaggle.com" in error and "\n" not in error
    assert f"{tmp_path}/fer2013.csv" in error and not (tmp_path / "runs").exists()
    assert f"`python download.py --dest {tmp_path}` fetches FER2013 from Kaggle" in error


def test_batches_feed_float_faces_and_one_hot_labels(synthetic_csv):
    faces = data.read_faces(synthetic_csv).select(slice(0, 50))
    batches = feed.Batches(faces, 16, shuffle=True, seed=0)
    assert len(batches) == 4
    seen = []
    for i in range(len(batches)):
        x, y = batches[i]
        assert x.dtype == np.float32 and x.shape[1:] == (48, 48, 1) and y.shape[1:] == (7,)
        seen.append((x, y))
    x = np.concatenate([b[0] for b in seen])
    y = np.concatenate([b[1] for b in seen])
    # Every face once per epoch, in a shuffled order, with its own label.
    order = batches.order.copy()
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    np.testing.assert_array_equal(x, data.to_float(faces.images[order]))
    np.testing.assert_array_equal(y.argmax(axis=1), faces.labels[order])
    batches.set_epoch(1)
    assert batches.order.tolist() != order.tolist()


def test_demo_config_is_small_and_synthetic():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config["data"]["synthetic"] and config["data"]["path"].startswith("data/")
    assert config["train"]["epochs"] <= 10 and config["model"]["filters"][0] <= 16


def test_results_keep_the_run_and_every_metric_recomputes(trained_run, synthetic_csv, tmp_path):
    import hashlib

    run_dir, _ = trained_run
    out = tmp_path / "results" / "demo"
    result = run_script("results.py", run_dir, "--out", out, "--notebook-log", "")
    assert result.returncode == 0, result.stderr
    assert {"config.yaml", "environment.json", "history.csv", "metrics.json", "metrics-last.json", "predictions.csv.gz",
            "predictions-last.csv.gz", "checkpoints.sha256", "summary.json"} <= {p.name for p in out.iterdir()}
    assert (tmp_path / "results" / "demo_vs_notebook.png").read_bytes()[:4] == b"\x89PNG"
    sums = dict(reversed(line.split("  ")) for line in (out / "checkpoints.sha256").read_text().splitlines())
    for name in ("best.keras", "last.keras"):
        assert sums[name] == hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
    # FER2013's labels stay out of results/: the predictions carry no true label, and recompute with the data's.
    predictions = pd.read_csv(out / "predictions-last.csv.gz")
    assert "true" not in predictions.columns and len(predictions) == 200
    # The faces' fingerprints, the same in both files, are kept once beside them.
    assert "face" not in predictions.columns and len(pd.read_csv(out / "faces.csv.gz")) == 200
    header = (out / "predictions-last.csv.gz").read_bytes()[:10]  # gzip, with no file name and no time in it
    assert header[:3] == b"\x1f\x8b\x08" and header[3] == 0 and header[4:8] == bytes(4)
    trained, _, test = data.split(data.read_faces(synthetic_csv), "notebook", 0.2)
    final = json.loads((out / "metrics-last.json").read_text())
    assert np.mean(predictions["predicted"] == test.labels) == final["accuracy"]
    checked = run_script("results.py", out, "--check", synthetic_csv)
    assert checked.returncode == 0 and checked.stdout.count("recomputes to its metrics") == 2, checked.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 6
    assert summary["final_weights_PrivateTest_accuracy"] == round(final["accuracy"], 4)
    environment = json.loads((run_dir / "environment.json").read_text())
    assert summary["parts"][0]["epochs"] == [1, 6] and summary["parts"][0]["cpu"] == environment["cpu"]
    seconds = pd.read_csv(run_dir / "history.csv")["seconds"]
    assert (seconds > 0).all() and summary["hours"] == round(seconds.sum() / 3600, 3)  # what the epochs took
    # The pace: the training faces over the fastest epoch after the first, the demo network's FLOPs a face.
    flops = 3 * forward_flops(checkpoints.load_checkpoint(str(run_dir / "last.keras")))
    assert environment["train_faces"] == len(trained) and environment["training_flops_per_face"] == flops
    faces_per_second = len(trained) / seconds[1:].min()
    assert summary["pace"] == {"epoch_seconds": round(seconds[1:].min(), 2),
                               "train_faces_per_second": round(faces_per_second, 1),
                               "tflops": round(faces_per_second * flops / 1e12, 3)}  # no GPU: no share of a peak
    assert f"pace: {round(seconds[1:].min(), 2)} s an epoch, {faces_per_second:,.0f} training faces/s" in result.stdout
    # A changed prediction no longer recomputes: one line, exit status 2.
    predictions.loc[0, "predicted"] = (predictions.loc[0, "predicted"] + 1) % 7
    predictions.to_csv(out / "predictions-last.csv.gz", index=False)
    assert_user_error(run_script("results.py", out, "--check", synthetic_csv), "predictions-last.csv.gz", "recomputes")


def test_results_of_an_unfinished_run_keep_its_epochs(trained_run, tmp_path):
    run_dir, _ = trained_run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.yaml", "environment.json", "best.keras"):  # a running run has its best.keras so far
        (unfinished / name).write_bytes((run_dir / name).read_bytes())
    (unfinished / "history.csv").write_text("\n".join((run_dir / "history.csv").read_text().splitlines()[:4]) + "\n")
    result = run_script("results.py", unfinished, "--out", tmp_path / "out", "--notebook-log", "")
    assert result.returncode == 0, result.stderr
    assert "UNFINISHED, 3 of 6 epochs" in result.stdout
    assert not (tmp_path / "out" / "checkpoints.sha256").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["epochs_done"] == 3


def test_the_retrain_protocol_trains_on_publictest_too_and_keeps_the_last_epoch(synthetic_csv, tmp_path):
    import results
    import ship

    config = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.path={synthetic_csv}", "data.protocol=retrain", "data.limit=200", "train.epochs=1",
        "callbacks.checkpoint.save_best_only=false", "callbacks.reduce_lr.monitor=loss", f"output.dir={tmp_path}"])
    run_dir = Path(train.train(config))
    assert len(feed.prepare_data(config)[0]) == 400  # 200 Training + 200 PublicTest faces
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 1 and not [column for column in history.columns if column.startswith("val_")]
    # Nothing to choose a checkpoint on: best.keras is the last epoch's weights, and answers as last.keras does
    # (the model in memory, scored as last.keras, and the one read back from best.keras differ in the 6th digit).
    best, last = (pd.read_csv(run_dir / name) for name in ("predictions.csv", "predictions-last.csv"))
    pd.testing.assert_frame_equal(best, last, check_exact=False, atol=1e-5)
    summary = results.publish(run_dir, tmp_path / "published", notebook_log="")
    assert summary["best_val_accuracy"] is None and summary["val_accuracy_at"] == {}
    assert results.table_row(tmp_path / "published")[3] == "-"
    assert "| PublicTest (trained on) | none | 0.9000 |" in "\n".join(
        ship.what_it_scored(run_dir, "shipped.keras", [("PublicTest", 0.9), ("PrivateTest", 0.8)]))


def test_mistakes_shows_the_most_confident_wrong_answers(tmp_path):
    faces = data.Faces(np.zeros((5, 48, 48), np.uint8), np.array([0, 1, 2, 3, 4], np.uint8), np.zeros(5, np.uint8))
    probabilities = np.full((5, 7), 0.05, np.float32)
    probabilities[0, 0] = 0.99  # right
    probabilities[1, 3] = 0.60  # wrong, 60%
    probabilities[2, 5] = 0.95  # wrong, 95%
    probabilities[3, 3] = 0.90  # right
    probabilities[4, 6] = 0.70  # wrong, 70%
    worst = evaluate.plot_mistakes(faces, probabilities, tmp_path / "mistakes.png", count=2)
    assert worst.tolist() == [2, 4]
    assert (tmp_path / "mistakes.png").read_bytes()[:4] == b"\x89PNG"


def test_data_preview_draws_faces_of_every_emotion_with_the_counts(synthetic_csv, tmp_path):
    preview = tmp_path / "new folder" / "faces.png"  # a folder that does not exist yet is made
    result = run_script("data.py", synthetic_csv, "--preview", preview)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {preview}" in result.stdout and "Happy" in result.stdout
    assert preview.read_bytes()[:4] == b"\x89PNG"
