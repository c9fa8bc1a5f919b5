"""Train the notebook's CNN on FER2013 and write a run directory; resume it after any interruption.

    python train.py --config config.yaml [--set train.epochs=5 --set data.limit=2000 ...] [--no-evaluate]
    python train.py --config configs/demo.yaml      # synthetic faces, about a minute on a laptop CPU
    python train.py --resume runs/<run>             # after Ctrl-C, a kill or a lost Colab runtime
    python train.py --config config.yaml --init-weights runs/<run>/best.keras   # fine-tune from a checkpoint

The run directory output.dir/<name>/ gets: config.yaml (resolved), environment.json (versions, devices),
best.keras (ModelCheckpoint), last.keras (the weights at the end, which the notebook scored), history.csv,
curves.png, model.json + model.weights.h5 (the notebook's export), the test-split scores of last.keras and
best.keras, and state.json + state-*.weights.h5: what --resume continues from. Every file is written to a
temporary name and renamed, so a kill at any instant leaves the previous good file in place.
"""
import argparse
import gc
import glob
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

import backends
import data
import evaluate
from common import UserError, exit_on_user_error, native_stderr_held, replaced_atomically, write_text
from config import dump, load_config, monitor_mode, monitor_name
from model import build_model

with native_stderr_held():
    import keras

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = "state.json"


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM; the run directory holds what --resume needs."""

    def __init__(self, run_dir, where, signal_number):
        super().__init__(run_dir, where, signal_number)
        self.run_dir, self.where, self.exit_status = run_dir, where, 128 + signal_number


class Batches(keras.utils.PyDataset):
    """uint8 faces -> float32 batches (/ 255) with one-hot labels.

    Images stay uint8 in memory until a batch is formed. With `shuffle`, epoch e visits the faces in the
    order of a permutation drawn from (seed, e) alone, so a resumed run sees the same batches. Where
    `multiple` devices split each batch (JAX data parallelism), the last batch is cut to a multiple of them.
    """

    def __init__(self, faces, batch_size, shuffle=False, seed=None, multiple=1, epoch=0, **kwargs):
        super().__init__(**kwargs)
        self.faces, self.batch_size, self.shuffle, self.multiple = faces, batch_size, shuffle, multiple
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**32)
        self.epoch = epoch
        self.order = self._order()

    def _order(self):
        if not self.shuffle:
            return np.arange(len(self.faces))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.faces))

    def __len__(self):
        full, rest = divmod(len(self.faces), self.batch_size)
        return full + (rest - rest % self.multiple > 0)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rows = rows[:len(rows) - len(rows) % self.multiple]
        return data.to_float(self.faces.images[rows]), data.one_hot(self.faces.labels[rows])

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras's ModelCheckpoint, writing to a temporary name that is renamed over the checkpoint once whole."""

    def __init__(self, filepath, **kwargs):
        self.final_path = filepath
        folder, name = os.path.split(filepath)
        super().__init__(os.path.join(folder, f"{name.partition('.')[0]}.writing.keras"), **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if os.path.exists(self.filepath):
            os.replace(self.filepath, self.final_path)


# What each callback must carry over a resume, beyond the model's and optimizer's variables.
CALLBACK_STATE = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ModelCheckpoint: ("best",),
}


class RunState(keras.callbacks.Callback):
    """After every epoch: the weights (with the optimizer's and the loss scale's state) and state.json (epochs
    done, dropout's random state, the history so far, the other callbacks' counters), which --resume goes on from.

    Weights alternate between two files and state.json, renamed into place last, names the one it goes with,
    so a kill at any instant leaves a consistent pair. history.csv is rewritten whole from the state each
    epoch, so it never misses or repeats an epoch. Keras's BackupAndRestore keeps weights and the epoch only,
    written in place; this keeps the rest too.
    """

    def __init__(self, run_dir, callbacks, state=None, shuffle_seed=None):
        super().__init__()
        self.run_dir, self.callbacks, self.shuffle_seed = run_dir, callbacks, shuffle_seed
        self.state = state or {"epochs_done": 0, "history": [], "callbacks": {}, "training_over": False}

    def on_train_begin(self, logs=None):
        # Runs after the other callbacks' on_train_begin, which reset their counters: put them back.
        for index, callback in enumerate(self.callbacks):
            for name, value in self.state["callbacks"].get(str(index), {}).items():
                setattr(callback, name, value)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {**logs, "seconds": time.time() - self.epoch_started}
        weights = f"state-{(epoch + 1) % 2}.weights.h5"
        with replaced_atomically(os.path.join(self.run_dir, weights)) as temporary:
            self.model.save_weights(temporary)
        counters = {}
        for index, callback in enumerate(self.callbacks):
            names = next((names for kind, names in CALLBACK_STATE.items() if isinstance(callback, kind)), ())
            counters[str(index)] = {name: _plain(getattr(callback, name)) for name in names}
        self.state = {"epochs_done": epoch + 1, "weights": weights, "random": random_state(self.model),
                      "shuffle_seed": self.shuffle_seed,
                      "history": self.state["history"] + [{"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}}],
                      "callbacks": counters, "training_over": bool(self.model.stop_training)}
        write_history(self.run_dir, self.state["history"])
        write_text(os.path.join(self.run_dir, STATE), json.dumps(self.state, indent=1))


def _seed_generator_states(model):
    # Dropout's random state: a model variable, but one that save_weights leaves out.
    return [variable for variable in model.non_trainable_variables if "seed_generator" in variable.path]


def random_state(model):
    return [keras.ops.convert_to_numpy(variable).tolist() for variable in _seed_generator_states(model)]


def restore_random_state(model, values):
    for variable, value in zip(_seed_generator_states(model), values, strict=True):
        variable.assign(np.array(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


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


def prepare_data(config):
    """(train, validation, test) Faces for the config's data and protocol."""
    options = config["data"]
    path = options["path"]
    if not os.path.exists(path):
        if options["synthetic"]:
            print(f"{path} is missing and data.synthetic is set: drawing {options['synthetic']} SYNTHETIC faces "
                  f"(a stand-in for demos, not FER2013)")
            data.write_csv(path, data.make_synthetic(options["synthetic"], seed=0))
        else:
            raise UserError(f"no dataset at {path}: download fer2013.csv from {data.FER2013_URL} and put it at "
                            f"{path} (or point data.path at it, e.g. --set data.path=/path/to/fer2013.csv)")
    started = time.time()
    faces = data.limit_rows(data.read_faces(path, options["cache_dir"]), options["limit"])
    train, validation, test = data.split(faces, options["protocol"], options["validation_split"], path)
    kind = "SYNTHETIC faces" if options["synthetic"] else "faces"
    print(f"data: {path} ({kind}, read in {time.time() - started:.1f} s), protocol {options['protocol']}: "
          f"{len(train)} train, {len(validation)} validation, {len(test)} test")
    return train, validation, test


def plan_run_dir(config, config_path):
    """output.dir/<name>: output.name, else <config name>-<date>-<time>; checked before anything is written."""
    output = config["output"]
    if output["name"]:
        run_dir = os.path.join(output["dir"], output["name"])
        if os.path.exists(run_dir):
            if os.path.isfile(os.path.join(run_dir, STATE)) and not read_state(run_dir).get("finished"):
                raise UserError(f"{run_dir} holds an unfinished run: continue it with python train.py --resume "
                                f"{run_dir}, or choose another output.name")
            raise UserError(f"{run_dir} already exists: choose another output.name")
    else:
        stem = os.path.splitext(os.path.basename(config_path))[0] if config_path else "run"
        base = os.path.join(output["dir"], f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir, n = base, 1
        while os.path.exists(run_dir):
            n += 1
            run_dir = f"{base}-{n}"
    existing = os.path.abspath(run_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the run directory {run_dir}: {existing} is not a writable folder")
    return run_dir


def create_run_dir(run_dir):
    try:
        os.makedirs(run_dir)
        probe = os.path.join(run_dir, ".writable")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as error:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(f"cannot write the run directory {run_dir}: {error.strerror}") from None
    return run_dir


def read_state(run_dir):
    try:
        with open(os.path.join(run_dir, STATE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{run_dir}: not a resumable run ({STATE}: {getattr(error, 'strerror', None) or error})") from None


def make_callbacks(config, run_dir, state=None, shuffle_seed=None):
    options = config["callbacks"]
    reduce_lr, stopping, checkpoint = options["reduce_lr"], options["early_stopping"], options["checkpoint"]
    training = config["train"]
    if training["schedule"] == "cosine":
        schedule = keras.callbacks.LearningRateScheduler(lambda epoch: cosine_learning_rate(
            epoch, training["learning_rate"], training["epochs"], training["warmup_epochs"]))
    else:
        schedule = keras.callbacks.ReduceLROnPlateau(monitor=monitor_name(reduce_lr["monitor"]),
                                                     factor=reduce_lr["factor"], patience=reduce_lr["patience"],
                                                     mode=monitor_mode(reduce_lr["monitor"]), verbose=1)
    callbacks = [
        schedule,
        AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor=monitor_name(checkpoint["monitor"]),
                              save_best_only=checkpoint["save_best_only"], mode=monitor_mode(checkpoint["monitor"])),
    ]
    if stopping["enabled"]:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor_name(stopping["monitor"]), min_delta=stopping["min_delta"],
            patience=stopping["patience"], mode=monitor_mode(stopping["monitor"]), verbose=1))
    if config["output"]["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "tensorboard")))
    callbacks.append(RunState(run_dir, list(callbacks), state, shuffle_seed))  # last: it saves what the others did
    return callbacks


def cosine_learning_rate(epoch, peak, epochs, warmup_epochs=0):
    """Linear warm-up to `peak` over the first epochs, then half a cosine down towards 0 by the last one.
    A function of the epoch alone, so that a resumed run goes on with the same rates."""
    if epoch < warmup_epochs:
        return peak * (epoch + 1) / warmup_epochs
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def plot_curves(history_csv, path):
    """Loss and accuracy per epoch, train vs. validation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    history = pd.read_csv(history_csv)
    epochs = history["epoch"] + 1
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], label="train")
        ax.plot(epochs, history[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def save_exports(model, run_dir):
    """last.keras, and the notebook's own export: model.to_json() + the weights in HDF5."""
    with replaced_atomically(os.path.join(run_dir, "last.keras")) as temporary:
        model.save(temporary)
    write_text(os.path.join(run_dir, "model.json"), model.to_json())
    with replaced_atomically(os.path.join(run_dir, "model.weights.h5")) as temporary:
        model.save_weights(temporary)


def score(run_dir, model, test):
    """The notebook's last cell (the final weights on the test split), and the best checkpoint beside them."""
    results = {}
    best_path = os.path.join(run_dir, "best.keras")
    for name, candidate in (("last.keras", model), ("best.keras", best_path)):
        if isinstance(candidate, str):
            if not os.path.exists(candidate):
                print(f"{name}: not written (the monitored value never improved)")
                continue
            candidate = evaluate.load_checkpoint(candidate)
        metrics, probabilities = evaluate.evaluate_model(candidate, test)
        metrics = {"checkpoint": os.path.join(run_dir, name), **metrics}
        evaluate.write_report(metrics, probabilities, test, run_dir, name)
        results[name] = metrics["accuracy"]
    for name, accuracy in results.items():
        label = "final weights" if name == "last.keras" else "best checkpoint"
        print(f"{label} ({name}): PrivateTest accuracy {accuracy:.4f} ({len(test)} images)")
    return results


# Settings that change which kernels run or how many threads they get, kept with the run when set.
RECORDED_VARIABLES = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "TF_NUM_INTRAOP_THREADS",
                      "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")


def environment(precision, why, model, distribution):
    """What the run ran on: versions, devices and the choices made for them."""
    versions = {}
    for package in ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit,
            "python": platform.python_version(), "platform": platform.platform(), "cpu": backends.cpu_model(),
            "cpu_bfloat16": sorted({"avx512_bf16", "amx_bf16"} & backends.cpu_flags()), "versions": versions,
            "backend": backends.backend(), "devices": backends.describe_devices(), "onednn": backends.onednn_enabled(),
            "precision": precision, "precision_reason": why, "jit_compile": bool(model.jit_compile),
            "distribution": distribution.describe(),
            "environment_variables": {name: os.environ[name] for name in RECORDED_VARIABLES if name in os.environ}}


def record_environment(run_dir, current, resumed):
    """environment.json: what the run started on, and each resume after it."""
    path = os.path.join(run_dir, "environment.json")
    if resumed and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record.setdefault("resumes", []).append(current)
    else:
        record = current
    write_text(path, json.dumps(record, indent=2))


def copy_weights(source, model, name):
    """Start from another checkpoint's weights (fine-tuning): the networks must match layer for layer."""
    ours = [layer for layer in model.layers if layer.weights]
    theirs = [layer for layer in source.layers if layer.weights]
    for mine, other in zip(ours, theirs):
        shapes, other_shapes = [tuple(w.shape) for w in mine.weights], [tuple(w.shape) for w in other.weights]
        if shapes != other_shapes:
            raise UserError(f"--init-weights {name}: its layer {other.name} has weights {other_shapes}, the config's "
                            f"network has {shapes} at {mine.name} (set model.* to the checkpoint's network)")
    if len(ours) != len(theirs):
        raise UserError(f"--init-weights {name}: {len(theirs)} layers with weights, the config's network has {len(ours)}")
    for mine, other in zip(ours, theirs):
        mine.set_weights(other.get_weights())
    print(f"initial weights from {name}")


def train(config, config_path=None, evaluate_after=True, resume_dir=None, init_weights=None):
    """Run one training as the config says (or go on with the one in resume_dir); returns the run directory.
    init_weights: (checkpoint, weights or None) to start from, instead of a random initialisation.

    Raises Interrupted on Ctrl-C / SIGTERM once the last completed epoch is safe on disk.
    """
    state = read_state(resume_dir) if resume_dir else None
    run_dir = resume_dir or plan_run_dir(config, config_path)
    train_faces, validation, test = prepare_data(config)
    options = config["train"]
    if options["seed"] is not None:
        backends.make_deterministic(options["seed"])
    # Without train.seed, the epochs' order still comes from one seed, drawn once and kept in state.json, so a
    # resumed run visits the faces in the order the uninterrupted one would have.
    shuffle_seed = options["seed"] if options["seed"] is not None else (state or {}).get(
        "shuffle_seed", int(np.random.SeedSequence().entropy % 2**32))
    precision, why = backends.choose_precision(options["precision"])
    keras.mixed_precision.set_global_policy(precision)
    distribution = backends.Distribution(backends.choose_distribution(options["distribute"]))
    multiple = backends.batch_multiple()
    if options["batch_size"] % multiple:
        raise UserError(f"train.batch_size {options['batch_size']} cannot be split evenly over {multiple} devices")
    if not resume_dir:
        create_run_dir(run_dir)
    callbacks = []
    stop_on_signal = StopOnSignal()
    try:
        with stop_on_signal:
            with distribution.scope():
                model = build_model(config)
                if state:
                    for leftover in glob.glob(os.path.join(run_dir, "*.writing*")):
                        os.remove(leftover)
                    model.optimizer.build(model.trainable_variables)
                    model.load_weights(os.path.join(run_dir, state["weights"]))
                    restore_random_state(model, state["random"])
                    print(f"resuming {run_dir} after epoch {state['epochs_done']}")
                elif init_weights:
                    copy_weights(evaluate.load_checkpoint(*init_weights), model, init_weights[0])
            write_text(os.path.join(run_dir, "config.yaml"), dump(config))
            model.summary()
            print(f"backend {backends.backend()}, devices: {backends.describe_devices()}")
            print(f"precision {precision} ({why}), XLA {'on' if model.jit_compile else 'off'}, "
                  f"distribution {distribution.describe()}")
            record_environment(run_dir, {**environment(precision, why, model, distribution),
                                         "epochs_done_at_start": state["epochs_done"] if state else 0}, resumed=bool(state))
            callbacks = [stop_on_signal] + make_callbacks(config, run_dir, state, shuffle_seed)
            first_epoch = state["epochs_done"] if state else 0
            if not (state and state["training_over"]) and first_epoch < options["epochs"]:
                batches = dict(batch_size=options["batch_size"], multiple=multiple,
                               workers=backends.prefetch_workers())
                model.fit(Batches(train_faces, shuffle=options["shuffle"], seed=shuffle_seed, epoch=first_epoch,
                                  **batches),
                          validation_data=Batches(validation, **batches), epochs=options["epochs"],
                          initial_epoch=first_epoch, callbacks=callbacks, shuffle=False)
            save_exports(model, run_dir)
            plot_curves(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
            if evaluate_after:
                score(run_dir, model, test)
    except SignalInterrupt as interrupt:
        epochs_done = _epochs_done(callbacks, state)
        if epochs_done == 0 and not resume_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = None
        where = f"epoch {epochs_done + 1}" if epochs_done < options["epochs"] else "the end, while saving results"
        raise Interrupted(run_dir, where, interrupt.signal_number) from None
    except BaseException:
        epochs_done = _epochs_done(callbacks, state)
        if epochs_done == 0 and not resume_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"training failed after {epochs_done} complete epoch(s); {run_dir} keeps them: "
                  f"python train.py --resume {run_dir}", file=sys.stderr)
        raise
    final_state = read_state(run_dir) if os.path.exists(os.path.join(run_dir, STATE)) else {}
    write_text(os.path.join(run_dir, STATE), json.dumps({**final_state, "finished": True}, indent=1))
    for backup in glob.glob(os.path.join(run_dir, "state-*.weights.h5")):
        os.remove(backup)  # last.keras now holds the final weights
    print(f"run directory: {run_dir}")
    return run_dir


def _epochs_done(callbacks, state):
    run_state = next((callback for callback in callbacks if isinstance(callback, RunState)), None)
    if run_state is not None:
        return run_state.state["epochs_done"]
    return state["epochs_done"] if state else 0


class SignalInterrupt(BaseException):
    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) and SIGTERM as SignalInterrupt, while the block it guards runs.

    During fit the signal is only noted, and raised at the next batch's end: an exception raised straight from
    a signal handler can land in a finalizer, which swallows it, and training would go on. A second signal,
    or one outside fit, is raised at once.
    """

    def __init__(self):
        super().__init__()
        self.received, self.in_fit, self.previous = None, False, {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[number] = signal.signal(number, self._note)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        return False

    def _note(self, number, frame):
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

    on_train_batch_end = on_test_batch_end = on_epoch_begin = _raise_if_received


def resume(run_dir, overrides=(), evaluate_after=True):
    """Go on with an interrupted run: its own config.yaml, plus --set train.epochs=N to train longer."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run directory")
    state = read_state(run_dir)
    if state.get("finished"):
        raise UserError(f"{run_dir} finished all its epochs: there is nothing to resume")
    for item in overrides:
        if item.partition("=")[0].strip() != "train.epochs":
            raise UserError(f"--resume takes only --set train.epochs=N (a run's other settings are fixed), got {item!r}")
    config = load_config(os.path.join(run_dir, "config.yaml"), overrides)
    return train(config, evaluate_after=evaluate_after, resume_dir=run_dir)


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last complete epoch")
    parser.add_argument("--init-weights", metavar="CHECKPOINT",
                        help="start from these weights (.keras, or the notebook's model.json/.h5/.hd5) to fine-tune")
    parser.add_argument("--weights", help="with --init-weights model.json: its weights file")
    parser.add_argument("--no-evaluate", action="store_true", help="skip scoring on the test split at the end")
    args = parser.parse_args(argv)
    if args.resume and args.init_weights:
        raise UserError("--resume goes on from the run's own weights; it takes no --init-weights")
    init_weights = (args.init_weights, args.weights) if args.init_weights else None
    try:
        if args.resume:
            resume(args.resume, args.set, evaluate_after=not args.no_evaluate)
        else:
            train(load_config(args.config, args.set), args.config, evaluate_after=not args.no_evaluate,
                  init_weights=init_weights)
    except Interrupted as interrupted:
        if interrupted.run_dir is None:
            print(f"\ninterrupted at {interrupted.where}, before any epoch was complete: nothing was kept",
                  file=sys.stderr)
        else:
            print(f"\ninterrupted at {interrupted.where}; resume with: python train.py --resume "
                  f"{interrupted.run_dir}", file=sys.stderr)
        status = interrupted.exit_status
        del interrupted
        gc.collect()  # finalize the data pipeline's iterators while Python can still run their clean-up
        return status
    except KeyboardInterrupt:  # before training started: nothing was written yet
        print("\ninterrupted before training started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
