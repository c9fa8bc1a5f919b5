"""tune.py, a KerasTuner search whose trials are train.py runs: best.yaml, trials.csv, search.png,
resuming, KerasTuner's distributed mode on loopback, and one-line errors for bad search files."""
import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

import train
import search_space
import tune
from common import TEST_SIGNAL, UserError
from config import load_config
from conftest import ROOT, assert_user_error, run_script

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end

TINY = ["model.filters=[4]", "model.dense=[8]", "data.limit=60", "data.synthetic=null", "train.batch_size=32",
        "train.precision=float32", "train.seed=0", "callbacks.checkpoint.save_best_only=false"]


def write_search(path, name, max_trials=3, extra=""):
    path.write_text(f"""name: {name}
tuner: random
max_trials: {max_trials}
epochs: 1
seed: 5
space:
  train.learning_rate: {{min: 1.0e-4, max: 1.0e-2, sampling: log}}
  model.dropout: {{min: 0.0, max: 0.5, step: 0.1}}
  model.dense: [[8], [8, 8], [16]]
{extra}""")
    return path


def settings(csv, out):
    return [item for pair in zip(["--set"] * 99, [*TINY, f"data.path={csv}", f"output.dir={out}"]) for item in pair]


def trials_table(search_dir):
    return pd.read_csv(search_dir / "trials.csv", dtype={"trial": str})


def test_a_random_search_writes_a_best_yaml_that_train_py_reruns(synthetic_csv, tmp_path, capsys):
    search_file = write_search(tmp_path / "search.yaml", "tiny")
    args = ["--config", str(ROOT / "configs/demo.yaml"), "--search", str(search_file), *settings(synthetic_csv, tmp_path)]
    assert tune.main(args) == 0
    search_dir = tmp_path / "tiny"
    table = trials_table(search_dir)
    assert list(table["trial"]) == ["0", "1", "2"] and set(table["status"]) == {"COMPLETED"}
    assert len({tuple(row) for row in table[["train.learning_rate", "model.dropout", "model.dense"]].values}) == 3
    for _, row in table.iterrows():
        run = search_dir / row["run"]
        history = pd.read_csv(run / "history.csv")
        run_config = load_config(run / "config.yaml")
        assert len(history) == row["epochs"] == 1
        assert row["val_accuracy"] == pytest.approx(history["val_accuracy"].max())
        # Each trial is a normal run of the base config with the trial's values in it.
        assert run_config["train"]["learning_rate"] == pytest.approx(float(row["train.learning_rate"]))
        assert run_config["model"]["dense"] == json.loads(row["model.dense"])  # a list, as JSON
        assert run_config["model"]["filters"] == [4] and run_config["train"]["epochs"] == 1
        assert 1e-4 <= run_config["train"]["learning_rate"] <= 1e-2
        assert run_config["model"]["dropout"] in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
        assert not (run / "metrics.json").exists()  # the test split is never looked at while searching
    best_row = table.loc[table["val_accuracy"].idxmax()]
    best = load_config(search_dir / "best.yaml")
    assert best["model"]["dense"] == json.loads(best_row["model.dense"])
    assert best["model"]["dropout"] == pytest.approx(float(best_row["model.dropout"]))
    assert best["output"]["name"] is None and best["model"]["filters"] == [4]
    assert (search_dir / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"best: trial {best_row['trial']}" in capsys.readouterr().out
    # train.py takes best.yaml as it is.
    assert train.main(["--config", str(search_dir / "best.yaml"), "--set", "output.name=rerun", "--no-evaluate"]) == 0
    rerun = load_config(tmp_path / "rerun" / "config.yaml")
    assert rerun["model"] == best["model"] and rerun["train"]["learning_rate"] == best["train"]["learning_rate"]


def test_a_stopped_search_resumes_where_it_stopped(synthetic_csv, tmp_path, capsys):
    search_file = write_search(tmp_path / "search.yaml", "stopped")
    args = ["--config", ROOT / "configs/demo.yaml", "--search", search_file, *settings(synthetic_csv, tmp_path)]
    search_dir = tmp_path / "stopped"
    # SIGTERM (a scheduler's or Colab's stop; Ctrl-C's SIGINT takes the same path, but a shell's background
    # jobs ignore it) as the second trial starts (common.signal_at): outside training, the search stops at the
    # next trial boundary, with two trials recorded.
    process = subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, TEST_SIGNAL: "SIGTERM@trial 1"})
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 143, output[-3000:]
    assert f"the same command resumes it: python tune.py --config {ROOT / 'configs/demo.yaml'}" in output
    done = {}  # the trials recorded complete when it stopped
    for trial in ("0", "1", "2"):
        try:
            if json.loads((search_dir / f"trial_{trial}" / "trial.json").read_text())["status"] == "COMPLETED":
                history = search_dir / f"trial_{trial}" / "run" / "history.csv"
                done[trial] = (history.read_bytes(), os.stat(history).st_mtime_ns)
        except OSError:
            pass
    assert list(done) == ["0", "1"]

    assert tune.main(list(map(str, args))) == 0  # the same command again
    stdout = capsys.readouterr().out
    assert "resuming the search" in stdout and f"{len(done)} trial(s) already done" in stdout
    table = trials_table(search_dir)
    assert list(table["trial"]) == ["0", "1", "2"] and set(table["status"]) == {"COMPLETED"}
    # The trials done before were not run again; every trial ran its one epoch once.
    for trial, (history, mtime) in done.items():
        path = search_dir / f"trial_{trial}" / "run" / "history.csv"
        assert path.read_bytes() == history and os.stat(path).st_mtime_ns == mtime
    for trial in ("0", "1", "2"):
        assert len(pd.read_csv(search_dir / f"trial_{trial}" / "run" / "history.csv")) == 1
    assert (search_dir / "best.yaml").is_file()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_distributed_search_on_loopback_records_every_trial_once(synthetic_csv, tmp_path):
    search_file = write_search(tmp_path / "search.yaml", "spread", max_trials=4)
    args = [sys.executable, str(ROOT / "tune.py"), "--config", str(ROOT / "configs/demo.yaml"), "--search",
            str(search_file), *settings(synthetic_csv, tmp_path)]
    address = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}
    processes = {tuner_id: subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, env={**os.environ, **address, "KERASTUNER_TUNER_ID": tuner_id})
                 for tuner_id in ("chief", "tuner0", "tuner1")}
    outputs = {tuner_id: process.communicate(timeout=400)[0] for tuner_id, process in processes.items()}
    for tuner_id, process in processes.items():
        assert process.returncode == 0, (tuner_id, outputs[tuner_id][-3000:])
    search_dir = tmp_path / "spread"
    table = trials_table(search_dir)
    assert list(table["trial"]) == ["0", "1", "2", "3"] and set(table["status"]) == {"COMPLETED"}
    # The chief trains nothing; the workers ran each trial exactly once between them.
    assert "run directory:" not in outputs["chief"]
    ran = [line.rsplit("/", 2)[-2] for tuner_id in ("tuner0", "tuner1")
           for line in outputs[tuner_id].splitlines() if line.startswith("run directory:")]
    assert sorted(ran) == ["trial_0", "trial_1", "trial_2", "trial_3"]
    assert "no trials left" in outputs["tuner0"] and "no trials left" in outputs["tuner1"]
    assert (search_dir / "best.yaml").is_file() and (search_dir / "chief.json").is_file()


BAD_SEARCHES = [
    ("tuner: grid\nspace: {model.dropout: [0.1, 0.2]}\n", "unknown tuner 'grid'"),
    ("tuners: random\nspace: {model.dropout: [0.1]}\n", "unknown key 'tuners'"),
    ("space: {model.dropouts: [0.1]}\n", "space 'model.dropouts': unknown config key"),
    ("space: {model.dropout: {min: 0.5, max: 0.2}}\n", "space 'model.dropout': empty range"),
    ("space: {model.dropout: []}\n", "space 'model.dropout': empty choice"),
    ("space: {train.learning_rate: {min: 0, max: 0.1, sampling: log}}\n", "a log range needs min > 0"),
    ("space: {model.dropout: {min: 0.2, max: 1.5}}\n", "space 'model.dropout': must be in [0, 1)"),
    ("space: {train.batch_size: {min: 16, max: 64.5}}\n", "max must be an integer"),
    ("space: {train.optimizer: [adam, lion]}\n", "must be one of adam, adamw, sgd, rmsprop"),
    ("space: {train.epochs: [1, 2]}\n", "space 'train.epochs': set by the search itself"),
    ("space: {}\n", "'space' must map config keys"),
    ("max_trials: 0\nspace: {model.dropout: [0.1]}\n", "'max_trials' must be an integer >= 1"),
    ("objective: val_f1\nspace: {model.dropout: [0.1]}\n", "'objective' must be one of"),
    ("space: {model.dropout: [0.1\n", "YAML syntax error"),
]


@pytest.mark.parametrize("text, fragment", BAD_SEARCHES)
def test_bad_search_files_get_one_clear_line(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=None) as raised:
        search_space.load_search(str(path), load_config())
    assert fragment in str(raised.value) and str(path) in str(raised.value)


def test_a_bad_search_file_from_the_command_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("space: {model.dropout: {min: 0.5, max: 0.2}}\n")
    assert_user_error(run_script("tune.py", "--search", path), "bad.yaml", "empty range")
    assert not (ROOT / "runs" / "bad").exists()
    with pytest.raises(UserError, match="search file .*none.yaml not found"):
        search_space.load_search(str(tmp_path / "none.yaml"), load_config())
    path.write_text("space: {model.dropout: [0.1, 0.2]}\n")  # the objective (val_accuracy) needs validation faces
    retrain = load_config(None, ["data.protocol=retrain", "callbacks.checkpoint.save_best_only=false",
                                 "callbacks.reduce_lr.monitor=loss"])
    with pytest.raises(UserError, match="objective val_accuracy needs validation faces"):
        search_space.load_search(str(path), retrain)


def test_another_search_under_the_same_name_is_refused(tmp_path):
    config = load_config(overrides=[f"output.dir={tmp_path}"])
    first = search_space.load_search(str(write_search(tmp_path / "a.yaml", "same")), config)
    assert tune.check_same_search(str(tmp_path / "same"), config, first) is False
    assert tune.check_same_search(str(tmp_path / "same"), config, first) is True  # the same: resumed
    more = search_space.load_search(str(write_search(tmp_path / "b.yaml", "same", max_trials=9)), config)
    assert tune.check_same_search(str(tmp_path / "same"), config, more) is True  # a bigger budget is fine
    other = search_space.load_search(str(write_search(tmp_path / "c.yaml", "same", extra="  model.l2: [0.0, 0.01]\n")), config)
    with pytest.raises(UserError, match="holds a search with another search"):
        tune.check_same_search(str(tmp_path / "same"), config, other)


def test_a_search_or_trial_recorded_before_a_config_key_existed_resumes(tmp_path):
    # A key added to the config since (predict.tta, here) is missing from what the older code wrote; that code ran
    # as the key's default does, so the search resumes, and so does its interrupted trial.
    config = load_config(overrides=[f"output.dir={tmp_path}"])
    search = search_space.load_search(str(write_search(tmp_path / "a.yaml", "older")), config)
    tune.check_same_search(str(tmp_path / "older"), config, search)
    record = json.loads((tmp_path / "older" / "search.json").read_text())
    del record["config"]["predict"]["tta"]
    (tmp_path / "older" / "search.json").write_text(json.dumps(record))
    assert tune.check_same_search(str(tmp_path / "older"), config, search) is True
    with pytest.raises(UserError, match=r"another config \(predict.tta differs\)"):
        tune.check_same_search(str(tmp_path / "older"), {**config, "predict": {**config["predict"], "tta": "flip"}},
                               search)
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "config.yaml").write_text(json.dumps(record["config"]))  # YAML reads JSON
    (trial / "state.json").write_text(json.dumps({"epochs_done": 1}))
    assert tune.TrainingTuner._earlier_run(str(trial), config)["epochs_done"] == 1
    assert tune.TrainingTuner._earlier_run(str(trial), {**config, "train": {**config["train"], "epochs": 7}}) is None
    assert not trial.exists()  # another trial's run: started afresh


def test_hyperband_trials_take_their_epochs_from_the_bracket(tmp_path):
    config = load_config()
    path = tmp_path / "hb.yaml"
    path.write_text("tuner: hyperband\nepochs: 9\nspace:\n  model.dense: [[8], [16, 16]]\n  model.l2: {min: 0.0, max: 0.1}\n")
    search = search_space.load_search(str(path), config)
    values = {"model.dense": "[16, 16]", "model.l2": 0.05, "tuner/epochs": 9, "tuner/initial_epoch": 3}
    trial = tune.trial_config(config, search, values, str(tmp_path / "trial_7"))
    assert trial["train"]["epochs"] == 6 and trial["model"]["dense"] == [16, 16] and trial["model"]["l2"] == 0.05
    assert trial["output"] == {**config["output"], "dir": str(tmp_path / "trial_7"), "name": "run"}
    oracle = tune.make_oracle(search)
    assert oracle.max_epochs == 9 and oracle.factor == 3
