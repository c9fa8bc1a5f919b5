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
import math
import os
import shutil
import sys
import tempfile
import types

import numpy as np

import backends
import checkpoints
import data
import distribute
import evaluate
import feed
import outputs
import resume as resume_lib
from common import TEST_SIGNAL, UserError, exit_on_user_error, native_stderr_held, sha256, signal_at, write_text
from config import dump, load_config, monitor_mode, monitor_name
from model import build_model
from resume import Interrupted

with native_stderr_held():
    import keras


class SignalAt(keras.callbacks.Callback):
    """For tests: common.signal_at at the start of every batch, named "epoch E batch B" (both from 1)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        signal_at(f"epoch {self.epoch} batch {batch + 1}")


def make_callbacks(config, run_dir, state=None, shuffle_seed=None, state_seconds=None):
    """The schedule, EMA swap, checkpoint, early stopping, TensorBoard, TerminateOnNaN and RunState callbacks the
    config asks for; RunState writes the resume state at most every `state_seconds` (default: output.state_seconds)."""
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
    callbacks = [schedule]
    if training["ema"]:  # validation and the checkpoints see the weights' moving average
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    every = config["output"]["state_seconds"] if state_seconds is None else state_seconds
    callbacks.append(resume_lib.AtomicModelCheckpoint(  # held in memory as RunState holds its state
        os.path.join(run_dir, "best.keras"), monitor_mode(checkpoint["monitor"]), hold=every > 0,
        monitor=monitor_name(checkpoint["monitor"]), save_best_only=checkpoint["save_best_only"]))
    if stopping["enabled"]:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor_name(stopping["monitor"]), min_delta=stopping["min_delta"],
            patience=stopping["patience"], mode=monitor_mode(stopping["monitor"]), verbose=1))
    if config["output"]["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "tensorboard")))
    # A loss that turns NaN or infinite (a learning rate too high) ends training at that batch, as EarlyStopping
    # would; best.keras keeps the best epoch before it, if any. After the others, whose places state.json numbers.
    # async_safe: Keras may call it from its thread for batch-end callbacks (JAX, PyTorch); a batch hook that
    # is not would make every step wait for the device.
    stop_on_nan = keras.callbacks.TerminateOnNaN()
    stop_on_nan.async_safe = True
    callbacks.append(stop_on_nan)
    # Last: it saves what the others did.
    callbacks.append(resume_lib.RunState(run_dir, list(callbacks), state, shuffle_seed, every))
    return callbacks


def cosine_learning_rate(epoch, peak, epochs, warmup_epochs=0):
    """Linear warm-up to `peak` over the first epochs, then half a cosine down towards 0 by the last one.
    A function of the epoch alone, so that a resumed run goes on with the same rates."""
    if epoch < warmup_epochs:
        return peak * (epoch + 1) / warmup_epochs
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def compile_model(model, config, fused_batch_norm=True, steps_per_execution=1):
    """The notebook's compile: Adam (or the config's optimizer), categorical cross-entropy, accuracy; and on
    TensorFlow its fused BatchNormalization kernel unless `fused_batch_norm` is off (backends.py)."""
    options = config["train"]
    settings = dict(learning_rate=options["learning_rate"], use_ema=options["ema"] > 0,
                    ema_momentum=options["ema"] or 0.99)
    if options["weight_decay"] is not None:
        settings["weight_decay"] = options["weight_decay"]
    if options["optimizer"] == "sgd":
        optimizer = keras.optimizers.SGD(momentum=0.9, nesterov=True, **settings)
    else:
        optimizer = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                     "rmsprop": keras.optimizers.RMSprop}[options["optimizer"]](**settings)
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=options["label_smoothing"])
            if options["label_smoothing"] else "categorical_crossentropy")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=options["jit_compile"],
                  steps_per_execution=steps_per_execution)
    return backends.fuse_batch_normalization(model) if fused_batch_norm else model


def make_model(config, run_dir, state, init_weights, steps_per_execution=1):
    """The compiled network: as the run left it (resume), from another checkpoint (fine-tuning), or fresh."""
    model = compile_model(build_model(config), config, steps_per_execution=steps_per_execution)
    if state:
        resume_lib.restore(model, run_dir, state)
    elif init_weights:
        checkpoints.copy_weights(checkpoints.load_checkpoint(*init_weights), model, init_weights[0])
    return model


def distilled_targets(options, faces):
    """train.distill's target for each training face: (1 - weight) x its one-hot label + weight x the teachers'
    mean probabilities for it (evaluate.teacher_probabilities: the face and its mirror image, and its ten crops
    where the teacher crops its input), from each teacher's checkpoint or its soft-label file
    (evaluate.py --soft-labels, .npz); None without teachers."""
    teachers, weight = options["distill"]["teachers"], options["distill"]["weight"]
    if not teachers:
        return None
    taught = np.mean([evaluate.read_soft_labels(path, faces.images) if path.endswith(".npz")
                      else evaluate.teacher_probabilities([checkpoints.load_checkpoint(path)], faces.images)
                      for path in teachers], axis=0)
    print(f"distilling from {len(teachers)} teacher(s), weight {weight}: their mean probabilities name the true "
          f"emotion of {np.mean(taught.argmax(axis=1) == faces.labels):.4f} of the {len(faces)} training faces")
    return ((1 - weight) * data.one_hot(faces.labels) + weight * taught).astype(np.float32)


def announce(model, run_dir, setup, state, init_weights=None, teachers=(), data_sha256=None):
    """The model and what it runs on, on screen and in environment.json (with the checkpoint it started from, the
    teachers it learns from, and the digest of its faces, fer2013.digest)."""
    model.summary()
    print(f"backend {backends.backend()}, devices: {backends.describe_devices()}")
    if note := backends.unused_gpu(backends.gpus()):
        print(note)
    calls = max(setup.group, setup.steps_per_execution)
    why = (" (scanned on the device)" if setup.group > 1 else "" if calls == setup.asked else
           " (Keras on PyTorch calls each step from Python)" if backends.backend() == "torch" else
           f" (the most up to train.steps_per_execution {setup.asked} that divides an epoch's {setup.steps} steps)")
    compiler = "torch.compile" if backends.backend() == "torch" else "XLA"  # what Keras's jit_compile turns on
    print(f"precision {setup.precision} ({setup.why}), {compiler} {'on' if model.jit_compile else 'off'}, "
          f"distribution {setup.distribution.describe()}, batches formed on the {setup.feed}, "
          f"{calls} batch{'es' if calls > 1 else ''} a call into the compiled function{why}")
    started_from = {}
    if init_weights and not state:
        started_from["init_weights"] = {"path": os.path.abspath(init_weights[0]),
                                        "sha256": sha256(init_weights[0])}
    if teachers:
        started_from["teachers"] = [{"path": os.path.abspath(path), "sha256": sha256(path)} for path in teachers]
    started_from["data_sha256"] = data_sha256
    outputs.record_environment(run_dir, {**outputs.environment(setup, model), **started_from,
                                 "epochs_done_at_start": state["epochs_done"] if state else 0}, resumed=bool(state))


def fit(model, config, callbacks, splits, state, setup, targets=None):
    """model.fit from the first epoch not yet done; one line per epoch where stdout is not a terminal. `targets`:
    the training faces' own (distilled_targets), instead of their one-hot labels."""
    options = config["train"]
    first_epoch = state["epochs_done"] if state else 0
    if (state and state["training_over"]) or first_epoch >= options["epochs"]:
        return
    # One worker: Keras's threaded enqueuer (workers > 1) starts an epoch's batches before the epoch's callbacks
    # run, and the batch fit peeks at first leaves the rest in its queue, so the order would not be (seed, epoch)'s.
    batches = dict(multiple=backends.batch_multiple(), share=backends.process_share(),
                   on_device=setup.feed == "device")
    training = feed.Batches(splits[0], options["batch_size"], shuffle=options["shuffle"], seed=setup.shuffle_seed,
                            epoch=first_epoch, mixup=options["mixup"], cutmix=options["cutmix"],
                            group=setup.group, targets=targets, **batches)
    if setup.group > 1:
        feed.scan_steps(model, options["batch_size"])
    validation = (feed.Batches(splits[1], options["validation_batch_size"] or options["batch_size"], **batches)
                  if len(splits[1]) else None)  # data.protocol retrain: nothing held out
    model.fit(training, validation_data=validation, epochs=options["epochs"], initial_epoch=first_epoch,
              callbacks=[feed.FollowEpochs(training), *callbacks], shuffle=False,
              verbose="auto" if sys.stdout.isatty() else 2)


def train(config, config_path=None, evaluate_after=True, resume_dir=None, init_weights=None):
    """Run one training as the config says (or go on with the one in resume_dir); returns the run directory
    (None on a process of a multi-machine run that is not the chief).
    init_weights: (checkpoint, weights or None) to start from, instead of a random initialisation.

    Raises Interrupted on Ctrl-C / SIGTERM once the last completed epoch is safe on disk.
    """
    options = config["train"]
    kind = distribute.choose_distribution(options["distribute"])
    # One writer: in a multi-machine run only the chief writes the run directory; every other process writes to
    # a folder of its own, removed at the end (as TensorFlow's multi-worker guide does).
    writer = distribute.is_chief(kind)
    with resume_lib.RunLock() as lock:  # the run held against another train.py on it
        if resume_dir and writer:
            lock.take(resume_dir)  # before its state is read
        state = resume_lib.read_state(resume_dir) if resume_dir else None
        run_dir = (resume_dir or outputs.plan_run_dir(config, config_path)) if writer else None
        splits = feed.prepare_data(config)
        data_sha256 = resume_lib.data_digest(splits, resume_dir, config["data"]["path"])
        targets = distilled_targets(options, splits[0])  # before set_up seeds the run: loading teachers draws none
        setup = set_up(options, kind, state, splits[0])
        run_dir = open_run_dir(run_dir, writer, resume_dir, config, config_path, lock)
        stop_on_signal, callbacks = resume_lib.StopOnSignal(), []
        try:
            with stop_on_signal:
                with setup.distribution.scope():
                    model = make_model(config, resume_dir or run_dir, state, init_weights, setup.steps_per_execution)
                write_text(os.path.join(run_dir, "config.yaml"), dump(config))
                announce(model, run_dir, setup, state, init_weights, options["distill"]["teachers"], data_sha256)
                # Every process of a multi-machine run writes its state after each epoch, as the others do.
                callbacks = [stop_on_signal] + make_callbacks(config, run_dir, state, setup.shuffle_seed,
                                                              0 if kind == "multi_worker" else None)
                if os.environ.get(TEST_SIGNAL):
                    callbacks.insert(0, SignalAt())
                fit(model, config, callbacks, splits, state, setup, targets)
                outputs.save_exports(model, run_dir)
                outputs.plot_curves(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
                if evaluate_after and writer:
                    outputs.score(run_dir, model, splits[2], kind)
        except BaseException as stop:
            resume_lib.keep_last_epoch(callbacks)
            kept = resume_lib.epochs_kept(run_dir)  # fewer than trained where a write failed (a full disk)
            if not writer:
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir = resume_dir or "the chief's run directory"
            raise_stopped(stop, run_dir, resume_dir or not writer, resume_lib.epochs_done(callbacks, state), kept,
                          options["epochs"])
        return finish(model, run_dir, kind, writer, setup.shuffle_seed)


def open_run_dir(run_dir, writer, resume_dir, config, config_path, lock):
    """The folder this process writes, held by it (lock): a new run's, made now; the resumed one's, rid of what a
    kill left half written; on a process of a multi-machine run that is not the chief, a temporary one."""
    if not writer:
        return tempfile.mkdtemp(prefix="fer2013-worker-")
    if resume_dir:
        resume_lib.remove_leftovers(resume_dir)
        return resume_dir
    run_dir = outputs.create_run_dir(run_dir, config, config_path)
    lock.take(run_dir)
    return run_dir


def set_up(options, kind, state, training_faces):
    """Seeds, precision, data parallelism and where batches are formed, for the run: a SimpleNamespace of
    precision, why (the precision's reason), distribution, shuffle_seed, feed (host or device),
    group (train.scan_steps: batches an item, which one compiled call trains through, feed.scan_steps),
    faces and steps (an epoch's), asked (train.steps_per_execution) and steps_per_execution (Keras's: 1 with a
    group or on PyTorch, whose Keras trainer takes no other, else the largest divisor of steps up to asked)."""
    if options["seed"] is not None:
        backends.make_deterministic(options["seed"])
    precision, why = backends.choose_precision(options["precision"])
    keras.mixed_precision.set_global_policy(precision)
    distribution = distribute.Distribution(kind, options["cluster_timeout"])
    # Without train.seed, the epochs' order still comes from one seed, drawn once (by the chief, in a
    # multi-machine run) and kept in state.json, so a resumed run visits the faces as the uninterrupted one would.
    shuffle_seed = options["seed"] if options["seed"] is not None else (state or {}).get(
        "shuffle_seed", distribution.fresh_seed)
    for key in ("batch_size", "validation_batch_size"):
        if (options[key] or 0) % backends.batch_multiple():
            raise UserError(f"train.{key} {options[key]} cannot be split evenly over {backends.batch_multiple()} "
                            "devices")
    steps = feed.Batches(training_faces, options["batch_size"], multiple=backends.batch_multiple(),
                         share=backends.process_share()).batch_count()
    where, group = backends.choose_feed(options["feed"]), options["scan_steps"]
    if group > 1 and not (where == "device" and backends.backend() == "jax" and kind == "none"):
        raise UserError("train.scan_steps > 1 needs the jax backend (KERAS_BACKEND=jax), train.feed device (auto "
                        "with a GPU) and one device")
    return types.SimpleNamespace(precision=precision, why=why, distribution=distribution, shuffle_seed=shuffle_seed,
                                 feed=where, group=group, faces=len(training_faces), steps=steps,
                                 asked=options["steps_per_execution"],
                                 steps_per_execution=1 if group > 1 or backends.backend() == "torch" else
                                 feed.steps_per_call(options["steps_per_execution"], steps))


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


def raise_stopped(stop, run_dir, resume_dir, trained, kept, epochs):
    """A run stopped by a signal or a failure, after `trained` complete epochs, `kept` of them in its state on disk:
    a new run that kept none goes; else it stays, to resume."""
    if kept == 0 and not resume_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = None
    else:
        resume_lib.remove_leftovers(run_dir)
    if isinstance(stop, resume_lib.SignalInterrupt):
        where = f"epoch {kept + 1}" if kept < epochs else "the end, while saving results"
        raise resume_lib.Interrupted(run_dir, where, stop.signal_number) from None
    lost = f", {trained - kept} of them lost with a write that failed" if kept < trained else ""
    if run_dir is not None:
        print(f"training failed after {trained} complete epoch(s){lost}; {run_dir} keeps {kept}: "
              f"python train.py --resume {run_dir}", file=sys.stderr)
    elif trained:
        print(f"training failed after {trained} complete epoch(s){lost}; nothing to resume", file=sys.stderr)
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
    except KeyboardInterrupt:  # before training started: nothing was written yet
        print("\ninterrupted before training started", file=sys.stderr)
        return 130
    else:
        return 0
    # Out of the except block, the error's traceback is free to go: the data pipeline's iterators are finalized
    # while Python can still run their clean-up. TensorFlow 2.22 logs each batch its stopped pipeline was still
    # fetching as a failed op, with a traceback: held back, after the one line above.
    with native_stderr_held():
        gc.collect()
    return status


if __name__ == "__main__":
    sys.exit(main())
