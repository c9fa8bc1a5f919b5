"""resume.py and train.py: resumable training, atomic checkpoints, reproducible runs, clear errors for bad checkpoints and output."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import checkpoints
import common
import feed
import fer2013
import outputs
import resume
import train
from common import TEST_SIGNAL, UserError
from config import load_config
from model import build_model
from conftest import ROOT, assert_user_error, needs, run_script, script_env

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end

SHORT = ["--config", "configs/demo.yaml", "--set", "data.limit=300", "--set", "train.epochs=3",
         "--set", "train.precision=float32", "--set", "output.state_seconds=0", "--no-evaluate"]  # state every epoch
HELD = ["--set", "output.state_seconds=3600"]  # every epoch's state held in memory until training stops


def start(*args, signal_at=None, backend=None):
    """train.py in a process of its own; with signal_at ("SIGINT@epoch 2 batch 2"), it signals itself there
    (common.signal_at), so the interruption lands at that point on any machine."""
    env = script_env({**({TEST_SIGNAL: signal_at} if signal_at else {}),
                      **({"KERAS_BACKEND": backend} if backend else {})})
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def epochs_done(run_dir):
    try:
        return json.loads((run_dir / "state.json").read_text())["epochs_done"]
    except (OSError, ValueError):
        return 0


def assert_held_by(process, run_dir):
    """Once the process has stopped itself (SIGSTOP) while it trains run_dir: another train.py on the run is
    refused before it loads the data or writes anything."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status
    said = (f"^{re.escape(str(run_dir))} is being trained by another process \\(pid {process.pid}\\): wait for it to "
            f"end, or stop it \\(Ctrl-C, or kill {process.pid}\\)")
    with pytest.raises(UserError, match=said):
        train.resume(str(run_dir))


def weights(path):
    import keras

    # compile=False: a checkpoint written on PyTorch names its optimizer by Keras's torch module, whose import (of
    # triton) crashes a process that imported TensorFlow first.
    return keras.saving.load_model(path, compile=False).get_weights()


@pytest.fixture(scope="module")
def short_data(synthetic_csv):
    return ["--set", f"data.path={synthetic_csv}"]


def test_interrupted_twice_and_resumed_equals_an_uninterrupted_run(tmp_path, short_data):
    # The uninterrupted run trains alongside the one that is interrupted; it stops itself (SIGSTOP) in epoch 2, to
    # be found holding its run, and goes on (SIGCONT).
    whole = start(*SHORT, *short_data, "--set", f"output.dir={tmp_path}", "--set", "output.name=whole",
                  signal_at="SIGSTOP@epoch 2 batch 1")
    run_dir = tmp_path / "broken"
    # Ctrl-C during epoch 2: exit 130, the resume command, and epoch 1 kept: it was held in memory (HELD), and
    # the signal wrote it.
    process = start(*SHORT, *short_data, *HELD, "--set", f"output.dir={tmp_path}", "--set", "output.name=broken",
                    signal_at="SIGINT@epoch 2 batch 2")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    # The last line: TensorFlow's iterators are finalized before Python shuts down, so none of its complaints follow.
    assert stderr.splitlines()[-1] == f"interrupted at epoch 2; resume with: python train.py --resume {run_dir}"
    assert "Traceback" not in stderr
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0]
    assert_held_by(whole, tmp_path / "whole")
    whole.send_signal(signal.SIGCONT)
    whole_stdout, whole_stderr = whole.communicate(timeout=300)
    assert whole.returncode == 0, whole_stderr[-3000:]

    assert epochs_done(run_dir) == 1 and len(list(run_dir.glob("state-*.weights.h5"))) == 1

    # kill -9 in the middle of epoch 3 of the resumed run, which holds its run as a new one does: nothing can run
    # at exit, so epoch 2, held in memory, is lost; the state on disk is still epoch 1's, and --resume goes on
    # from there (the lock went with the process).
    process = start("--resume", run_dir, "--no-evaluate", signal_at="SIGSTOP@epoch 3 batch 2")
    assert_held_by(process, run_dir)
    process.kill()
    process.communicate(timeout=300)
    assert process.returncode == -9 and epochs_done(run_dir) == 1
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]  # ahead of the state until --resume

    final = run_script("train.py", "--resume", run_dir, "--no-evaluate")
    assert final.returncode == 0, final.stderr[-3000:]
    # Same seed: the same history, to the last digit, and the same final weights, bit for bit (CPU, TensorFlow's
    # op determinism; the batches of epoch e depend on (seed, e) only, dropout's random state is restored).
    history, whole_history = pd.read_csv(run_dir / "history.csv"), pd.read_csv(tmp_path / "whole" / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2] and (history["seconds"] > 0).all()
    timeless = [column for column in history.columns if column != "seconds"]  # wall time: the one thing that differs
    assert history[timeless].to_csv() == whole_history[timeless].to_csv()
    for a, b in zip(weights(run_dir / "last.keras"), weights(tmp_path / "whole" / "last.keras")):
        np.testing.assert_array_equal(a, b)
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] is True and not list(run_dir.glob("state-*.weights.h5"))
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["versions"]["keras"] and environment["devices"] and len(environment["resumes"]) == 2
    again = run_script("train.py", "--resume", run_dir)
    assert_user_error(again, str(run_dir), "nothing to resume")


def test_a_run_with_a_weight_average_resumes_exactly(tmp_path, short_data):
    """train.ema: an epoch ends with the average swapped into the model (validation and best.keras see it); a
    kill in the next epoch and --resume swap it back before training goes on, as the uninterrupted run did. That
    run holds its best epoch in memory until the end (HELD), the other writes it as it comes: the same best.keras."""
    # A learning rate this high makes the first epoch's validation loss the lowest: best.keras is not last.keras.
    ema = [*SHORT, *short_data, "--set", "train.ema=0.9", "--set", "train.seed=2", "--set", "train.learning_rate=0.05",
           "--set", f"output.dir={tmp_path}"]
    whole = start(*ema, *HELD, "--set", "output.name=whole")
    process = start(*ema, "--set", "output.name=broken", signal_at="SIGKILL@epoch 2 batch 2")
    process.communicate(timeout=300)
    assert process.returncode == -9 and epochs_done(tmp_path / "broken") == 1
    state = json.loads((tmp_path / "broken" / "state.json").read_text())
    assert {"_ema_weights_in_model": True} in state["callbacks"].values()
    assert whole.communicate(timeout=300)[0] and whole.returncode == 0
    resumed = run_script("train.py", "--resume", tmp_path / "broken", "--no-evaluate")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history, whole_history = (pd.read_csv(tmp_path / name / "history.csv") for name in ("broken", "whole"))
    timeless = [column for column in history.columns if column != "seconds"]
    assert history[timeless].to_csv() == whole_history[timeless].to_csv()
    for a, b in zip(weights(tmp_path / "broken" / "last.keras"), weights(tmp_path / "whole" / "last.keras")):
        np.testing.assert_array_equal(a, b)
    assert history["val_loss"].idxmin() < 2
    for a, b in zip(weights(tmp_path / "broken" / "best.keras"), weights(tmp_path / "whole" / "best.keras"),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_held_checkpoint_is_written_when_flushed_with_the_epoch_it_chose(tmp_path):
    """hold: the best epoch waits in memory, and flush writes it whole, leaving the model as it is now."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    checkpoint = resume.AtomicModelCheckpoint(str(tmp_path / "best.keras"), "min", hold=True, monitor="val_loss",
                                              save_best_only=True)
    checkpoint.set_model(model)
    chosen = model.get_weights()
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    model.set_weights([w + 1 for w in chosen])
    checkpoint.on_epoch_end(1, {"val_loss": 2.0})  # no better: epoch 1 stays the one held
    assert list(tmp_path.iterdir()) == [] and checkpoint.best == 1.0
    checkpoint.flush()
    assert [path.name for path in tmp_path.iterdir()] == ["best.keras"]
    for a, b in zip(weights(tmp_path / "best.keras"), chosen, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.get_weights(), chosen, strict=True):
        np.testing.assert_array_equal(a, b + 1)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_resumed_run_equals_an_uninterrupted_one_on(backend, tmp_path, short_data):
    """On JAX, where Keras's threaded enqueuer once put a resumed run's first epoch out of the seed's order, and on
    PyTorch, where Keras's Dropout without a seed draws from torch's global generator (model.py seeds it); the
    interrupted run holds its epochs in memory (HELD), and SIGTERM writes the last one."""
    needs(backend)
    common = [*SHORT, *short_data, *HELD, "--set", "train.epochs=2", "--set", f"output.dir={tmp_path}"]
    whole = start(*common, "--set", "output.name=whole", backend=backend)
    process = start(*common, "--set", "output.name=broken", signal_at="SIGTERM@epoch 2 batch 2", backend=backend)
    process.communicate(timeout=300)
    assert process.returncode == 143 and epochs_done(tmp_path / "broken") == 1
    assert whole.communicate(timeout=300)[0] and whole.returncode == 0
    resumed = start("--resume", tmp_path / "broken", "--no-evaluate", backend=backend)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    history, whole_history = (pd.read_csv(tmp_path / name / "history.csv") for name in ("broken", "whole"))
    timeless = [column for column in history.columns if column != "seconds"]
    assert history[timeless].to_csv() == whole_history[timeless].to_csv()
    for a, b in zip(weights(tmp_path / "broken" / "last.keras"), weights(tmp_path / "whole" / "last.keras")):
        np.testing.assert_array_equal(a, b)


def test_an_unseeded_run_resumes_in_its_own_shuffle_order(tmp_path, short_data):
    run_dir = tmp_path / "unseeded"
    process = start(*SHORT, *short_data, "--set", "train.seed=null", "--set", "data.limit=100", "--set",
                    "train.epochs=2", "--set", f"output.dir={tmp_path}", "--set", "output.name=unseeded",
                    signal_at="SIGTERM@epoch 2 batch 1")
    process.communicate(timeout=300)
    assert process.returncode == 143 and epochs_done(run_dir) == 1
    drawn = json.loads((run_dir / "state.json").read_text())["shuffle_seed"]
    assert isinstance(drawn, int)
    resumed = run_script("train.py", "--resume", run_dir, "--no-evaluate")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["epochs_done"] == 2 and state["shuffle_seed"] == drawn


def test_sigterm_before_the_first_epoch_keeps_nothing(tmp_path, short_data):
    process = start(*SHORT, *short_data, "--set", f"output.dir={tmp_path}", "--set", "output.name=early",
                    signal_at="SIGTERM@epoch 1 batch 2")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143
    assert "before any epoch was complete: nothing was kept" in stderr
    assert not (tmp_path / "early").exists() and list(tmp_path.iterdir()) == []


def test_a_kill_while_best_keras_is_written_leaves_the_previous_one(tmp_path, short_data):
    # Killed as epoch 2's best.keras is written whole under its temporary name, before the rename.
    # A twin, killed as epoch 2 begins, holds epoch 1's best.keras (the same seed trains the same weights).
    run_dir, twin_dir = tmp_path / "big", tmp_path / "twin"
    common = [*SHORT, *short_data, "--set", "data.limit=100", "--set", "callbacks.checkpoint.save_best_only=false",
              "--set", f"output.dir={tmp_path}"]
    processes = [start(*common, "--set", "output.name=big", signal_at="SIGKILL@replace best.keras epoch 2"),
                 start(*common, "--set", "output.name=twin", signal_at="SIGKILL@epoch 2 batch 1")]
    assert [process.communicate(timeout=300) and process.returncode for process in processes] == [-9, -9]
    assert (run_dir / "best.writing.keras").exists()  # epoch 2's, written whole but never renamed
    assert epochs_done(run_dir) == 1
    for a, b in zip(weights(run_dir / "best.keras"), weights(twin_dir / "best.keras")):
        np.testing.assert_array_equal(a, b)
    resumed = run_script("train.py", "--resume", run_dir, "--no-evaluate")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(run_dir.glob("*.writing*"))
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1, 2]


def test_output_errors_change_nothing_on_disk(tmp_path, synthetic_csv):
    config = load_config(ROOT / "configs" / "demo.yaml", [f"data.path={synthetic_csv}", f"output.dir={tmp_path}",
                                                          "output.name=taken"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError, match="taken already exists: choose another output.name"):
        train.train(config)
    (tmp_path / "taken" / "state.json").write_text(json.dumps({"epochs_done": 2}))
    with pytest.raises(UserError, match="holds an unfinished run: continue it with python train.py --resume"):
        train.train(config)
    (tmp_path / "taken" / "state.json").unlink()
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(UserError, match="no such run directory"):
        train.resume(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="not a resumable run"):
        train.resume(str(tmp_path / "taken"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config["output"].update(dir=str(blocker / "runs"), name=None)
    result = run_script("train.py", "--config", "configs/demo.yaml", "--set", f"data.path={synthetic_csv}",
                        "--set", f"output.dir={blocker}/runs")
    assert_user_error(result, "cannot write the run directory", str(blocker))
    assert set(tmp_path.rglob("*")) == set(before) | {blocker}


def test_a_run_started_in_the_same_second_as_another_leaves_it_alone(tmp_path, synthetic_csv):
    # Two runs of one config started together plan the same directory; the second to make it must neither remove
    # the first's nor write into it.
    config = load_config(ROOT / "configs" / "demo.yaml", [f"data.path={synthetic_csv}", f"output.dir={tmp_path}"])
    planned = outputs.plan_run_dir(config, "configs/demo.yaml")
    os.mkdir(planned)  # the other run, between this one's plan and its mkdir
    (tmp_path / planned / "state.json").write_text("{}")
    made = outputs.create_run_dir(planned, config, "configs/demo.yaml")
    assert made != planned and os.listdir(made) == [] and os.listdir(planned) == ["state.json"]
    config["output"]["name"] = "named"
    planned = outputs.plan_run_dir(config, None)
    os.mkdir(planned)
    (tmp_path / "named" / "state.json").write_text("{}")
    with pytest.raises(UserError, match="named holds an unfinished run"):
        outputs.create_run_dir(planned, config, None)
    assert os.listdir(planned) == ["state.json"]


def test_a_full_disk_stops_training_in_one_line_and_what_it_kept_resumes(tmp_path, short_data):
    # A small file system, mounted where only one process sees it (a mount namespace: Linux, as root).
    small = tmp_path / "small"
    small.mkdir()
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "mount", "-t", "tmpfs", "tmpfs", small],
                                                     capture_output=True).returncode:
        pytest.skip("needs unshare --mount and mount (root on Linux) for a small file system")
    run = [*SHORT, *short_data, "--set", "train.epochs=2", "--set", "data.limit=100"]
    # Room for what training ends with (best.keras and the state's weights, each about a checkpoint's size, both
    # held in memory until then), not for last.keras too. A checkpoint's size: this network's, saved here.
    config = load_config(ROOT / "configs" / "demo.yaml", ["train.precision=float32"])
    model = train.compile_model(build_model(config), config)
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "size.keras")
    size = int(2.5 * (tmp_path / "size.keras").stat().st_size)
    script = (f"mount -t tmpfs -o size={size} tmpfs {small} || exit 9; \"$@\"; status=$?; "
              f"cp -a {small}/full {tmp_path}/; exit $status")
    full = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "train.py", *run, *HELD,
                           "--set", f"output.dir={small}", "--set", "output.name=full"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    run_dir = tmp_path / "full"
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    lines = full.stderr.splitlines()
    assert lines[-1].startswith("error: No space left on device"), lines[-3:]
    assert lines[-2] == f"training failed after 2 complete epoch(s); {small / 'full'} keeps 2: " \
                        f"python train.py --resume {small / 'full'}"
    assert epochs_done(run_dir) == 2 and not list(run_dir.glob("*.writing*"))
    resumed = run_script("train.py", "--resume", run_dir, "--no-evaluate")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "state.json").read_text())["finished"] and (run_dir / "last.keras").is_file()
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]


def test_a_device_out_of_memory_a_read_only_disk_or_a_file_in_a_folder_s_place_is_one_line(capsys, tmp_path):
    import tensorflow as tf

    @common.exit_on_user_error
    def main():  # what TensorFlow raises where a GPU has too little memory for a batch (a real allocation failing
        # here waits 10 s in TensorFlow's allocator first, for memory that another thread might free)
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__Conv2D}} OOM when allocating "
                                               "tensor with shape[4096,48,48,64] and type half on GPU:0\nHint: ...")

    with pytest.raises(SystemExit) as stopped:
        main()
    line = capsys.readouterr().err.splitlines()[-1]
    assert stopped.value.code == 2 and line == "error: out of memory (OOM when allocating tensor with " \
        "shape[4096,48,48,64] and type half on GPU:0): smaller batches need less (train.batch_size, " \
        "train.validation_batch_size; evaluate.py --batch-size)"
    assert common.out_of_memory(ValueError("a bad value")) is None

    @common.exit_on_user_error
    def write():  # what the operating system says of a read-only mount (as Kaggle's /kaggle/input)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/kaggle/input/run/metrics.json")

    with pytest.raises(SystemExit) as stopped:
        write()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: Read-only file system (writing /kaggle/input/run/metrics.json)\n"

    # A file where a folder is needed (predict.py --out photo.jpg, or below it), or a folder where a file is.
    (tmp_path / "photo.jpg").write_bytes(b"")
    (tmp_path / "scores.npz").mkdir()
    file_in_the_way, folder_in_the_way = "photo.jpg is a file, where a folder is needed", \
        "scores.npz is a folder, where a file is needed"
    for make, said in ((lambda: os.makedirs(tmp_path / "photo.jpg", exist_ok=True), file_in_the_way),
                       (lambda: os.makedirs(tmp_path / "photo.jpg" / "out"), file_in_the_way),
                       (lambda: open(tmp_path / "scores.npz", "wb"), folder_in_the_way)):
        with pytest.raises(SystemExit) as stopped:
            common.exit_on_user_error(make)()
        assert stopped.value.code == 2 and capsys.readouterr().err == f"error: {tmp_path}/{said}\n"


def test_resume_refuses_other_faces_than_the_run_started_with(tmp_path, synthetic_csv):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(ROOT / "configs" / "demo.yaml", [f"data.path={synthetic_csv}", "data.limit=100"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "state.json").write_text(json.dumps({"epochs_done": 1}))
    splits = feed.prepare_data(config)
    (run_dir / "environment.json").write_text(json.dumps({"data_sha256": fer2013.digest(splits[::-1])}))
    before = sorted(run_dir.rglob("*"))
    with pytest.raises(UserError, match=f"does not hold the faces that {run_dir} started with"):
        train.resume(str(run_dir))
    assert sorted(run_dir.rglob("*")) == before


def test_resume_takes_only_more_epochs(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"epochs_done": 1}))
    with pytest.raises(UserError, match="--resume takes only --set train.epochs=N"):
        train.resume(str(tmp_path), ["train.learning_rate=0.1"])


def test_bad_checkpoints_get_one_line(tmp_path, trained_run):
    import keras

    run_dir, _ = trained_run
    whole = (run_dir / "best.keras").read_bytes()
    (tmp_path / "empty.keras").write_bytes(b"")
    (tmp_path / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.keras").write_text("not a model")
    (tmp_path / "weights.txt").write_text("not a model")
    keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(7, activation="softmax")]).save(tmp_path / "small-input.keras")
    keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(5, activation="softmax")]).save(tmp_path / "five-classes.keras")
    cases = {
        "missing.keras": "not found", "empty.keras": "is empty",
        "truncated.keras": "truncated or not a Keras file", "text.keras": "truncated or not a Keras file",
        "weights.txt": "not a model file", "small-input.keras": "inputs of shape (32, 32, 1), expected (48, 48, 1)",
        "five-classes.keras": "outputs shape (5,), expected (7,)",
    }
    for name, fragment in cases.items():
        with pytest.raises(UserError) as caught:
            checkpoints.load_checkpoint(str(tmp_path / name))
        assert name in str(caught.value) and fragment in str(caught.value), (name, str(caught.value))
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(run_script("evaluate.py", "--checkpoint", tmp_path / "truncated.keras"),
                      "truncated.keras", "truncated or not a Keras file")
    assert sorted(tmp_path.rglob("*")) == before
