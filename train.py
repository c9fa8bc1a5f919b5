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
if __name__ == "__main__":  # first, before the imports below bring in Keras
    from common import start_backend

    start_backend()

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import numpy as np

import backends
import checkpoints
import data
import evaluate
import resume as resume_lib
import synthetic
from common import (TEST_SIGNAL, UserError, exit_on_user_error, native_stderr_held, pyplot, replaced_atomically,
                    save_figure, sha256, signal_at, write_text)
from config import dump, load_config, monitor_mode, monitor_name
from model import build_model
from resume import Interrupted

with native_stderr_held():
    import keras

HERE = os.path.dirname(os.path.abspath(__file__))
STATE = resume_lib.STATE


class Batches(keras.utils.PyDataset):
    """uint8 faces -> float32 batches (/ 255) with one-hot labels.

    Images stay uint8 in memory until a batch is formed. With `shuffle`, epoch e visits the faces in the
    order of a permutation drawn from (seed, e) alone, so a resumed run sees the same batches. Where
    `multiple` devices split each batch (JAX data parallelism), the last batch is cut to a multiple of them.
    """

    def __init__(self, faces, batch_size, shuffle=False, seed=None, multiple=1, epoch=0, share=(0, 1), **kwargs):
        super().__init__(**kwargs)
        self.faces, self.batch_size, self.shuffle, self.multiple = faces, batch_size, shuffle, multiple
        self.share = share
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
        index, count = self.share
        rows = rows[index * len(rows) // count:(index + 1) * len(rows) // count]
        return data.to_float(self.faces.images[rows]), data.one_hot(self.faces.labels[rows])

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def prepare_data(config):
    """(train, validation, test) Faces for the config's data and protocol."""
    options = config["data"]
    path = options["path"]
    if not os.path.exists(path):
        if options["synthetic"]:
            print(f"{path} is missing and data.synthetic is set: drawing {options['synthetic']} SYNTHETIC faces "
                  f"(a stand-in for demos, not FER2013)")
            data.write_csv(path, synthetic.make_synthetic(options["synthetic"], seed=0))
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
            if os.path.isfile(os.path.join(run_dir, STATE)) and not resume_lib.read_state(run_dir).get("finished"):
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


class SignalAt(keras.callbacks.Callback):
    """For tests: common.signal_at at the start of every batch, named "epoch E batch B" (both from 1)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        signal_at(f"epoch {self.epoch} batch {batch + 1}")


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
        resume_lib.AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor=monitor_name(checkpoint["monitor"]),
                              save_best_only=checkpoint["save_best_only"], mode=monitor_mode(checkpoint["monitor"])),
    ]
    if stopping["enabled"]:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor_name(stopping["monitor"]), min_delta=stopping["min_delta"],
            patience=stopping["patience"], mode=monitor_mode(stopping["monitor"]), verbose=1))
    if config["output"]["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "tensorboard")))
    callbacks.append(resume_lib.RunState(run_dir, list(callbacks), state, shuffle_seed))  # last: it saves what the others did
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
    plt = pyplot()
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
    save_figure(figure, path)


def save_exports(model, run_dir):
    """last.keras, and the notebook's own export: model.to_json() + the weights in HDF5. Keras 3's save_weights
    also stores a compiled model's optimizer state (Adam's two moments: 3x the weights, 5x under mixed_float16),
    so the export saves an uncompiled copy: the layers' weights alone, as the notebook's Keras 2 file held."""
    with replaced_atomically(os.path.join(run_dir, "last.keras")) as temporary:
        model.save(temporary)
    write_text(os.path.join(run_dir, "model.json"), model.to_json())
    weights_only = type(model).from_config(model.get_config())
    weights_only.set_weights(model.get_weights())
    with replaced_atomically(os.path.join(run_dir, "model.weights.h5")) as temporary:
        weights_only.save_weights(temporary)


def score(run_dir, model, test, kind="none"):
    """The notebook's last cell (the final weights on the test split), and the best checkpoint beside them."""
    if kind == "multi_worker":
        print(f"scoring skipped in a multi-machine run: python evaluate.py --checkpoint {run_dir}/best.keras on one "
              "machine scores it")
        return {}
    results = {}
    best_path = os.path.join(run_dir, "best.keras")
    for name, candidate in (("last.keras", model), ("best.keras", best_path)):
        if isinstance(candidate, str):
            if not os.path.exists(candidate):
                print(f"{name}: not written (the monitored value never improved)")
                continue
            candidate = checkpoints.load_checkpoint(candidate)
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
            "cpu_family_model": "/".join(filter(None, (backends.cpuinfo_field(key) for key in ("cpu family", "model"))))
            or None, "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_bfloat16": sorted({"avx512_bf16", "amx_bf16"} & backends.cpu_flags()), "versions": versions,
            "backend": backends.backend(), "devices": backends.describe_devices(), "onednn": backends.onednn_enabled(),
            "precision": precision, "precision_reason": why, "jit_compile": bool(model.jit_compile),
            "batch_norm": "fused kernel" if backends.uses_fused_batch_norm(model) else "Keras's own layer",
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


def compile_model(model, config, fused_batch_norm=True):
    """The notebook's compile: Adam (or the config's optimizer), categorical cross-entropy, accuracy; and on
    TensorFlow its fused BatchNormalization kernel unless `fused_batch_norm` is off (backends.py)."""
    options = config["train"]
    if options["optimizer"] == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=options["learning_rate"], momentum=0.9, nesterov=True)
    else:
        optimizer = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                     "rmsprop": keras.optimizers.RMSprop}[options["optimizer"]](learning_rate=options["learning_rate"])
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=options["label_smoothing"])
            if options["label_smoothing"] else "categorical_crossentropy")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=options["jit_compile"])
    return backends.fuse_batch_normalization(model) if fused_batch_norm else model


def make_model(config, run_dir, state, init_weights):
    """The compiled network: as the run left it (resume), from another checkpoint (fine-tuning), or fresh."""
    model = compile_model(build_model(config), config)
    if state:
        resume_lib.restore(model, run_dir, state)
    elif init_weights:
        checkpoints.copy_weights(checkpoints.load_checkpoint(*init_weights), model, init_weights[0])
    return model


def announce(model, run_dir, precision, why, distribution, state, init_weights=None):
    """The model and what it runs on, on screen and in environment.json (with the checkpoint it started from)."""
    model.summary()
    print(f"backend {backends.backend()}, devices: {backends.describe_devices()}")
    print(f"precision {precision} ({why}), XLA {'on' if model.jit_compile else 'off'}, "
          f"distribution {distribution.describe()}")
    started_from = {}
    if init_weights and not state:
        started_from["init_weights"] = {"path": os.path.abspath(init_weights[0]),
                                        "sha256": sha256(init_weights[0])}
    record_environment(run_dir, {**environment(precision, why, model, distribution), **started_from,
                                 "epochs_done_at_start": state["epochs_done"] if state else 0}, resumed=bool(state))


def fit(model, config, callbacks, splits, state, shuffle_seed):
    """model.fit from the first epoch not yet done; one line per epoch where stdout is not a terminal."""
    options = config["train"]
    first_epoch = state["epochs_done"] if state else 0
    if (state and state["training_over"]) or first_epoch >= options["epochs"]:
        return
    batches = dict(batch_size=options["batch_size"], multiple=backends.batch_multiple(),
                   workers=backends.prefetch_workers(), share=backends.process_share())
    model.fit(Batches(splits[0], shuffle=options["shuffle"], seed=shuffle_seed, epoch=first_epoch, **batches),
              validation_data=Batches(splits[1], **batches), epochs=options["epochs"], initial_epoch=first_epoch,
              callbacks=callbacks, shuffle=False, verbose="auto" if sys.stdout.isatty() else 2)


def train(config, config_path=None, evaluate_after=True, resume_dir=None, init_weights=None):
    """Run one training as the config says (or go on with the one in resume_dir); returns the run directory
    (None on a process of a multi-machine run that is not the chief).
    init_weights: (checkpoint, weights or None) to start from, instead of a random initialisation.

    Raises Interrupted on Ctrl-C / SIGTERM once the last completed epoch is safe on disk.
    """
    options = config["train"]
    kind = backends.choose_distribution(options["distribute"])
    # One writer: in a multi-machine run only the chief writes the run directory; every other process writes to
    # a folder of its own, removed at the end (as TensorFlow's multi-worker guide does).
    writer = backends.is_chief(kind)
    state = resume_lib.read_state(resume_dir) if resume_dir else None
    run_dir = (resume_dir or plan_run_dir(config, config_path)) if writer else None
    splits = prepare_data(config)
    if options["seed"] is not None:
        backends.make_deterministic(options["seed"])
    precision, why = backends.choose_precision(options["precision"])
    keras.mixed_precision.set_global_policy(precision)
    distribution = backends.Distribution(kind, options["cluster_timeout"])
    # Without train.seed, the epochs' order still comes from one seed, drawn once (by the chief, in a
    # multi-machine run) and kept in state.json, so a resumed run visits the faces as the uninterrupted one would.
    shuffle_seed = options["seed"] if options["seed"] is not None else (state or {}).get(
        "shuffle_seed", distribution.fresh_seed)
    if options["batch_size"] % backends.batch_multiple():
        raise UserError(f"train.batch_size {options['batch_size']} cannot be split evenly over "
                        f"{backends.batch_multiple()} devices")
    if not writer:
        run_dir = tempfile.mkdtemp(prefix="fer2013-worker-")
    elif not resume_dir:
        create_run_dir(run_dir)
    else:
        resume_lib.remove_leftovers(run_dir)
    stop_on_signal, callbacks = resume_lib.StopOnSignal(), []
    try:
        with stop_on_signal:
            with distribution.scope():
                model = make_model(config, resume_dir or run_dir, state, init_weights)
            write_text(os.path.join(run_dir, "config.yaml"), dump(config))
            announce(model, run_dir, precision, why, distribution, state, init_weights)
            callbacks = [stop_on_signal] + make_callbacks(config, run_dir, state, shuffle_seed)
            if os.environ.get(TEST_SIGNAL):
                callbacks.insert(0, SignalAt())
            fit(model, config, callbacks, splits, state, shuffle_seed)
            save_exports(model, run_dir)
            plot_curves(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
            if evaluate_after and writer:
                score(run_dir, model, splits[2], kind)
    except BaseException as stop:
        if not writer:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = resume_dir or "the chief's run directory"
        raise_stopped(stop, run_dir, resume_dir or not writer, resume_lib.epochs_done(callbacks, state),
                      options["epochs"])
    return finish(model, run_dir, kind, writer, shuffle_seed)


def finish(model, run_dir, kind, writer, shuffle_seed):
    """The run marked finished; in a multi-machine run every process prints its weights' checksum and its
    shuffling seed (they must all agree), and a process other than the chief removes its own folder."""
    resume_lib.mark_finished(run_dir)
    if kind == "multi_worker":
        digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()
        print(f"final weights sha256 {digest}, shuffle seed {shuffle_seed}")
    if not writer:
        shutil.rmtree(run_dir, ignore_errors=True)
        print("worker done: the chief writes the run directory")
        return None
    print(f"run directory: {run_dir}")
    return run_dir


def raise_stopped(stop, run_dir, resume_dir, epochs_done, epochs):
    """A run stopped by a signal or a failure: a new run with no complete epoch goes; else it stays, to resume."""
    if epochs_done == 0 and not resume_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = None
    if isinstance(stop, resume_lib.SignalInterrupt):
        where = f"epoch {epochs_done + 1}" if epochs_done < epochs else "the end, while saving results"
        raise resume_lib.Interrupted(run_dir, where, stop.signal_number) from None
    if run_dir is not None:
        print(f"training failed after {epochs_done} complete epoch(s); {run_dir} keeps them: "
              f"python train.py --resume {run_dir}", file=sys.stderr)
    raise stop


def resume(run_dir, overrides=(), evaluate_after=True):
    """Go on with an interrupted run: its own config.yaml, plus --set train.epochs=N to train longer."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: no such run directory")
    state = resume_lib.read_state(run_dir)
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
