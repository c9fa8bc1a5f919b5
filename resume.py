"""Exact resume: what a run directory keeps after every epoch, how training stops on Ctrl-C or SIGTERM, and how
a run goes on from where it stopped with the same weights, optimizer, dropout draws, shuffling and callbacks.

Every file is written to a temporary name and renamed, so a kill at any instant leaves the previous good file.
"""
import errno
import glob
import json
import os
import shutil
import signal
import sys
import time

import numpy as np

import fer2013
from common import UserError, native_stderr_held, replaced_atomically, signal_at, write_text

with native_stderr_held():
    import keras

STATE = "state.json"


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; the run directory holds what --resume needs."""

    def __init__(self, run_dir, where, signal_number):
        super().__init__(run_dir, where, signal_number)
        self.run_dir, self.where, self.exit_status = run_dir, where, 128 + signal_number


class SignalInterrupt(BaseException):
    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


class SignalGuard:
    """Ctrl-C (SIGINT) and SIGTERM go to `self.note(number)` while the block runs; the handlers from before
    come back after it. With `keep_ignored`, a signal the shell told this process to ignore (a background job's
    Ctrl-C) stays ignored. Threads other than the main one leave signals alone."""

    keep_ignored = False

    def __enter__(self):
        self.previous = {}
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                if not (self.keep_ignored and signal.getsignal(number) is signal.SIG_IGN):
                    self.previous[number] = signal.signal(number, lambda number, frame: self.note(number))
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False

    def note(self, number):
        raise SignalInterrupt(number)


class StopOnSignal(SignalGuard, keras.callbacks.Callback):
    """Ctrl-C and SIGTERM as SignalInterrupt, while the block it guards runs.

    During fit the signal is only noted, and raised at the next batch's start: an exception raised straight from
    a signal handler can land in a finalizer, which swallows it, and training would go on. A second signal,
    or one outside fit, is raised at once. It hooks no batch's end, so that Keras may hand batch-end callbacks
    to a thread (JAX, PyTorch) and never waits for a step to finish before starting the next.
    """

    def __init__(self):
        super().__init__()
        self.received, self.in_fit = None, False

    def note(self, number):
        first, self.received = self.received is None, self.received or number
        if self.in_fit and first:
            return
        raise SignalInterrupt(number)

    def on_train_begin(self, logs=None):
        self.in_fit = True
        self._raise_if_received()  # a signal before fit whose exception a finalizer swallowed

    def on_train_end(self, logs=None):
        self.in_fit = False

    def _raise_if_received(self, *args, **kwargs):
        if self.received is not None:
            raise SignalInterrupt(self.received)

    on_train_batch_begin = on_test_batch_begin = on_epoch_begin = _raise_if_received


def _host_copy(model):
    """The values of the model's and its optimizer's variables, copied to the host."""
    return [keras.ops.convert_to_numpy(variable) for variable in [*model.variables, *model.optimizer.variables]]


def _assign(model, values):
    """Put back values that _host_copy took."""
    for variable, value in zip([*model.variables, *model.optimizer.variables], values, strict=True):
        variable.assign(value)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras's ModelCheckpoint, writing to a temporary name that is renamed over the checkpoint once whole.

    With `hold`, an epoch to save is held in memory instead (a copy of the variables on the host) and written
    by `flush`, which RunState calls before it writes its own state, so that the checkpoint on disk always goes
    with the state --resume reads: a .keras file with the optimizer's slots took longer to write than a GPU's
    epoch to train. `mode` is 'min' or 'max', and an epoch is saved when Keras's would be."""

    # Keras may call its batch hook from a thread of its own (JAX, PyTorch): it saves only with an integer
    # save_freq, never used here. Without this, Keras would read every step's logs as it ends, waiting for the device.
    async_safe = True

    def __init__(self, filepath, mode, hold=False, **kwargs):
        self.final_path, self.hold, self.held = filepath, hold, None
        self.improves = keras.ops.less if mode == "min" else keras.ops.greater
        folder, name = os.path.split(filepath)
        super().__init__(os.path.join(folder, f"{name.partition('.')[0]}.writing.keras"), mode=mode, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        if not self.hold:
            super().on_epoch_end(epoch, logs)
            self._replace(epoch)
            return
        current = (logs or {}).get(self.monitor)
        if self.save_best_only and current is not None:
            if self.best is not None and not bool(self.improves(current, self.best)):
                return
            self.best = current
        self.held = epoch, _host_copy(self.model)

    def flush(self):
        """Write the epoch held in memory, if any; the model's variables are left as they were."""
        if self.held is None:
            return
        epoch, values = self.held
        now = _host_copy(self.model)
        try:
            _assign(self.model, values)
            self.model.save(self.filepath, overwrite=True)
        finally:
            _assign(self.model, now)
        self.held = None
        self._replace(epoch)

    def _replace(self, epoch):
        if os.path.exists(self.filepath):
            signal_at(f"replace {os.path.basename(self.final_path)} epoch {epoch + 1}")
            os.replace(self.filepath, self.final_path)


# What each callback must carry over a resume, beyond the model's and optimizer's variables.
CALLBACK_STATE = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ModelCheckpoint: ("best",),
    keras.callbacks.SwapEMAWeights: ("_ema_weights_in_model",),  # an epoch ends with the average in the model
}


class RunState(keras.callbacks.Callback):
    """After an epoch: the weights (with the optimizer's and the loss scale's state) and state.json (epochs
    done, dropout's random state, the history so far, the other callbacks' counters), which --resume goes on from.

    Weights alternate between two files and state.json, renamed into place last, names the one it goes with,
    so a kill at any instant leaves a consistent pair. history.csv is rewritten whole each epoch; --resume
    rewrites it from the state, so it never misses or repeats an epoch. Keras's BackupAndRestore keeps weights
    and the epoch only, written in place; this keeps the rest too.

    With `every` > 0 seconds, an epoch that ends sooner than that after the last write is held in memory instead
    (a copy of the variables on the host), and written by `flush`: at the end of training, or when a signal or a
    failure stops it. Only a kill that leaves no time to run (kill -9, a lost machine) loses those epochs. A
    checkpoint held in memory (AtomicModelCheckpoint's `hold`) is written first, whenever the state is.
    """

    def __init__(self, run_dir, callbacks, state=None, shuffle_seed=None, every=0):
        super().__init__()
        self.run_dir, self.callbacks, self.shuffle_seed, self.every = run_dir, callbacks, shuffle_seed, every
        self.state = state or {"epochs_done": 0, "history": [], "callbacks": {}, "training_over": False}
        self.held, self.written = None, time.time()

    def on_train_begin(self, logs=None):
        # Runs after the other callbacks' on_train_begin, which reset their counters: put them back.
        for index, callback in enumerate(self.callbacks):
            for name, value in self.state["callbacks"].get(str(index), {}).items():
                setattr(callback, name, value)
        self.written = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {**logs, "seconds": time.time() - self.epoch_started}
        weights = f"state-{(epoch + 1) % 2}.weights.h5"
        counters = {}
        for index, callback in enumerate(self.callbacks):
            names = next((names for kind, names in CALLBACK_STATE.items() if isinstance(callback, kind)), ())
            counters[str(index)] = {name: _plain(getattr(callback, name)) for name in names}
        self.state = {"epochs_done": epoch + 1, "weights": weights, "random": random_state(self.model),
                      "shuffle_seed": self.shuffle_seed,
                      "history": self.state["history"] + [{"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}}],
                      "callbacks": counters, "training_over": bool(self.model.stop_training)}
        write_history(self.run_dir, self.state["history"])
        if self.every and time.time() - self.written < self.every:
            self.held = _host_copy(self.model)
        else:
            self.held = None
            self._write()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self):
        """Write the last complete epoch, if it was held in memory (training must be over: the model's
        variables go back to that epoch's values)."""
        if self.held is not None:
            _assign(self.model, self.held)
            self.held = None
            self._write()

    def _write(self):
        for callback in self.callbacks:
            if isinstance(callback, AtomicModelCheckpoint):
                callback.flush()
        weights = os.path.join(self.run_dir, self.state["weights"])
        check_room(weights, [*self.model.variables, *self.model.optimizer.variables])
        with replaced_atomically(weights) as temporary:
            self.model.save_weights(temporary)
        write_text(os.path.join(self.run_dir, STATE), json.dumps(self.state, indent=1))
        self.written = time.time()


def check_room(path, variables):
    """OSError (no space left) before a weights file that the disk has no room for is begun: where HDF5 fails a
    write, it keeps the file open, and closing it as the process ends crashes the process."""
    needed = sum(np.prod(variable.shape, dtype=int) * np.dtype(variable.dtype).itemsize + 2048
                 for variable in variables)
    if shutil.disk_usage(os.path.dirname(path)).free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _seed_generator_states(model):
    # Dropout's random state: a model variable, but one that save_weights leaves out.
    return [variable for variable in model.non_trainable_variables if "seed_generator" in variable.path]


def lock_holder(path):
    """The process that holds a flock on `path`, as Linux lists it in /proc/locks ("1: FLOCK ADVISORY WRITE <pid>
    <major>:<minor>:<inode> 0 EOF", the device in hex), or None where that cannot be told."""
    try:
        found = os.stat(path)
        with open("/proc/locks") as listed:
            lines = listed.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
    for line in lines:
        fields = line.split()
        if fields[1:2] == ["FLOCK"] and len(fields) > 5 and fields[5] == where and fields[4].isdigit():
            return int(fields[4]) or None  # 0: a process outside this one's pid namespace
    return None


class RunLock:
    """A run directory held by the one process that trains it (an exclusive flock on the folder itself, let go when
    the process ends however it ends), so that a second train.py on the same run, such as a --resume while it still
    trains, stops with one line instead of writing the same files. Nothing is held where there are no such locks
    (Windows, some network file systems)."""

    def __init__(self):
        self.fd = None

    def take(self, run_dir):
        try:
            import fcntl
        except ImportError:
            return
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = lock_holder(run_dir)
            raise UserError(f"{run_dir} is being trained by another process{f' (pid {pid})' if pid else ''}: wait for "
                            f"it to end, or stop it (Ctrl-C{f', or kill {pid}' if pid else ''}) and resume it") from None
        except OSError:
            os.close(fd)
            return
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def random_state(model):
    return [keras.ops.convert_to_numpy(variable).tolist() for variable in _seed_generator_states(model)]


def remove_leftovers(run_dir):
    """Temporary files of writes that a kill interrupted."""
    for leftover in glob.glob(os.path.join(run_dir, "*.writing*")):
        os.remove(leftover)


def restore(model, run_dir, state):
    """The model, its optimizer and dropout's random state as they were after the state's last epoch."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(run_dir, state["weights"]))
    for variable, value in zip(_seed_generator_states(model), state["random"], strict=True):
        variable.assign(np.array(value, dtype=keras.backend.standardize_dtype(variable.dtype)))
    print(f"resuming {run_dir} after epoch {state['epochs_done']}")


def _plain(value):
    """A JSON-friendly copy of a callback counter or a logged metric."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return float(keras.ops.convert_to_numpy(value))


def write_history(run_dir, rows):
    import pandas as pd

    history = pd.DataFrame(rows)
    history = history[["epoch"] + sorted(column for column in history.columns if column != "epoch")]
    with replaced_atomically(os.path.join(run_dir, "history.csv")) as temporary:
        history.to_csv(temporary, index=False)


def read_state(run_dir):
    try:
        with open(os.path.join(run_dir, STATE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{run_dir}: not a resumable run ({STATE}: {getattr(error, 'strerror', None) or error})") from None


def epochs_done(callbacks, state):
    run_state = next((callback for callback in callbacks if isinstance(callback, RunState)), None)
    if run_state is not None:
        return run_state.state["epochs_done"]
    return state["epochs_done"] if state else 0


def data_digest(splits, resume_dir=None, path=None):
    """fer2013.digest of the run's faces, which environment.json records; resuming (resume_dir), a UserError
    unless they are those the run started with (a run from before the digest was recorded is not checked)."""
    digest = fer2013.digest(splits)
    if resume_dir is None:
        return digest
    try:
        with open(os.path.join(resume_dir, "environment.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("data_sha256")
    except (OSError, ValueError):
        return digest
    if recorded and recorded != digest:
        raise UserError(f"{path} does not hold the faces that {resume_dir} started with (environment.json, "
                        "data_sha256): resume with the same data, or start a new run")
    return digest


def epochs_kept(run_dir):
    """The complete epochs that state.json in run_dir holds, which --resume goes on from (0 without one)."""
    try:
        return read_state(run_dir)["epochs_done"]
    except UserError:
        return 0


def keep_last_epoch(callbacks):
    """After a signal or a failure: the last complete epoch on disk, if RunState held it in memory."""
    for callback in callbacks:
        if isinstance(callback, RunState):
            try:
                callback.flush()
            except Exception as error:  # the failure that stopped training comes first
                print(f"could not write the last complete epoch: {error}", file=sys.stderr)


def mark_finished(run_dir):
    """state.json says the run is over, and the per-epoch weights go (last.keras holds the final ones)."""
    final_state = read_state(run_dir) if os.path.exists(os.path.join(run_dir, STATE)) else {}
    write_text(os.path.join(run_dir, STATE), json.dumps({**final_state, "finished": True}, indent=1))
    for backup in glob.glob(os.path.join(run_dir, "state-*.weights.h5")):
        os.remove(backup)
