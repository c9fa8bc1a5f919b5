"""Train the notebook's CNN on FER2013 and write a run directory.

    python train.py --config config.yaml [--set train.epochs=5 --set data.limit=2000 ...] [--no-evaluate]
    python train.py --config configs/demo.yaml      # synthetic faces, about a minute on a laptop CPU

The run directory output.dir/<name>/ gets: config.yaml (resolved), best.keras (ModelCheckpoint), last.keras
(the weights at the end, which the notebook scored), history.csv, curves.png, model.json +
model.weights.h5 (the notebook's export), and the test-split scores of last.keras and best.keras.
"""
import argparse
import os
import sys
import time

import numpy as np

from config import UserError, dump, exit_on_user_error, load_config, monitor_mode, monitor_name, native_stderr_held
import backends
import data
import evaluate
from model import build_model

with native_stderr_held():
    import keras


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


def new_run_dir(config, config_path):
    output = config["output"]
    if output["name"]:
        run_dir = os.path.join(output["dir"], output["name"])
        if os.path.exists(run_dir):
            raise UserError(f"{run_dir} already exists: choose another output.name")
    else:
        stem = os.path.splitext(os.path.basename(config_path))[0] if config_path else "run"
        base = os.path.join(output["dir"], f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir, n = base, 1
        while os.path.exists(run_dir):
            n += 1
            run_dir = f"{base}-{n}"
    try:
        os.makedirs(run_dir)
    except OSError as error:
        raise UserError(f"cannot create the run directory {run_dir}: {error.strerror}") from None
    return run_dir


def make_callbacks(config, run_dir):
    options = config["callbacks"]
    reduce_lr, stopping, checkpoint = options["reduce_lr"], options["early_stopping"], options["checkpoint"]
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor_name(reduce_lr["monitor"]), factor=reduce_lr["factor"],
                                          patience=reduce_lr["patience"], mode=monitor_mode(reduce_lr["monitor"]),
                                          verbose=1),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor=monitor_name(checkpoint["monitor"]),
                                        save_best_only=checkpoint["save_best_only"],
                                        mode=monitor_mode(checkpoint["monitor"])),
    ]
    if stopping["enabled"]:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor_name(stopping["monitor"]), min_delta=stopping["min_delta"],
            patience=stopping["patience"], mode=monitor_mode(stopping["monitor"]), verbose=1))
    callbacks.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv")))
    if config["output"]["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "tensorboard")))
    return callbacks


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
    temporary = f"{path}.part.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def save_exports(model, run_dir):
    """last.keras, and the notebook's own export: model.to_json() + the weights in HDF5."""
    model.save(os.path.join(run_dir, "last.keras"))
    with open(os.path.join(run_dir, "model.json"), "w", encoding="utf-8") as f:
        f.write(model.to_json())
    model.save_weights(os.path.join(run_dir, "model.weights.h5"))


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
        metrics = {"checkpoint": os.path.join(run_dir, name), **evaluate.evaluate_model(candidate, test)}
        evaluate.write_report(metrics, run_dir, name)
        results[name] = metrics["accuracy"]
    for name, accuracy in results.items():
        label = "final weights" if name == "last.keras" else "best checkpoint"
        print(f"{label} ({name}): PrivateTest accuracy {accuracy:.4f} ({len(test)} images)")
    return results


def train(config, config_path=None, evaluate_after=True):
    """Run one training as the config says; returns the run directory."""
    train_faces, validation, test = prepare_data(config)
    options = config["train"]
    if options["seed"] is not None:
        backends.make_deterministic(options["seed"])
    precision, why = backends.choose_precision(options["precision"])
    keras.mixed_precision.set_global_policy(precision)
    distribution = backends.Distribution(backends.choose_distribution(options["distribute"]))
    multiple = backends.batch_multiple()
    if options["batch_size"] % multiple:
        raise UserError(f"train.batch_size {options['batch_size']} cannot be split evenly over {multiple} devices")
    run_dir = new_run_dir(config, config_path)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(dump(config))
    with distribution.scope():
        model = build_model(config)
    model.summary()
    print(f"backend {backends.backend()}, devices: {backends.describe_devices()}")
    print(f"precision {precision} ({why}), XLA {'on' if model.jit_compile else 'off'}, "
          f"distribution {distribution.describe()}")
    batches = dict(batch_size=options["batch_size"], multiple=multiple, workers=backends.prefetch_workers())
    model.fit(Batches(train_faces, shuffle=options["shuffle"], seed=options["seed"], **batches),
              validation_data=Batches(validation, **batches),
              epochs=options["epochs"], callbacks=make_callbacks(config, run_dir), shuffle=False)
    save_exports(model, run_dir)
    plot_curves(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
    if evaluate_after:
        score(run_dir, model, test)
    print(f"run directory: {run_dir}")
    return run_dir


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip scoring on the test split at the end")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    train(config, args.config, evaluate_after=not args.no_evaluate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
