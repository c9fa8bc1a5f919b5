"""Score a checkpoint on a FER2013 split as the notebook did: argmax of predict against the true labels.

    python evaluate.py --checkpoint RUN/best.keras [--data PATH] [--split PrivateTest|PublicTest] [--out DIR]
    python evaluate.py --checkpoint RUN/model.json [--weights RUN/model.weights.h5]
    python evaluate.py --checkpoint model.json --weights model.h5       # the 2018 notebook's own files
    python evaluate.py --checkpoint model.onnx [--tta]                  # an export, on onnxruntime
    python evaluate.py --checkpoint A/best.keras B/best.keras --tta tencrop   # an ensemble: probabilities averaged
    python evaluate.py --checkpoint A/best.keras [B/best.keras] --soft-labels teacher.npz   # a teacher, as a file

Prints the accuracy and a per-class report, and writes metrics.json and confusion_matrix.png beside the
checkpoint (or in --out; for the model shipped in models/, or one in a folder that cannot be written, in
runs/evaluate-<its name>/). For a checkpoint not named best.keras the files carry its name (metrics-last.json,
confusion_matrix-last.png), and a split other than PrivateTest its name (metrics-PublicTest.json), so that
evaluations of one run never overwrite each other; an ensemble's files are metrics-ensemble.json ..., beside its
first checkpoint.
"""
if __name__ == "__main__":  # first, before the imports below bring in Keras
    from common import start_backend

    start_backend()

import argparse
import json
import os
import sys

import numpy as np

import backends
import data
import fingerprint
import model as model_lib
from checkpoints import load_checkpoint
from common import (MODELS, UserError, exit_on_user_error, native_stderr_held, pyplot, replaced_atomically, save_figure,
                    shipped_model, write_text)
from config import config_beside
from export import OnnxModel

with native_stderr_held():
    import keras


def predict_probabilities(model, images, batch_size=256, tta=None):
    """Class probabilities (N, 7) for uint8 images (N, 48, 48), fed as the notebook did (/ 255). Test-time
    augmentation: tta "flip" (or True) averages each face and its mirror image; "tencrop" averages the ten crops
    of a model that crops its input (train.augment.crop): the centre and the four corners, each also mirrored.

    Each batch is padded to a multiple of the devices that split it (JAX data parallelism) and the padding's
    outputs are dropped, so every image is scored exactly once.
    """
    if tta:
        shifts = crop_shifts(model) if tta == "tencrop" else [(0, 0)]
        return np.mean([predict_probabilities(model, view, batch_size) for view in data.views(images, shifts)], axis=0)
    multiple = backends.batch_multiple()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = data.to_float(images[start:start + batch_size])
        padding = -len(batch) % multiple
        if padding:
            batch = np.concatenate([batch, np.zeros((padding, *batch.shape[1:]), batch.dtype)])
        outputs.append(keras.ops.convert_to_numpy(model.predict_on_batch(batch))[:len(batch) - padding])
    return np.concatenate(outputs).astype(np.float32)


def teacher_probabilities(models, images):
    """What teachers say of each face (train.distill): the mean over `models` of each one's probabilities for the
    face and its mirror image, and its ten crops where the model crops its input."""
    return np.mean([predict_probabilities(model, images, tta="flip" if crop_size(model) is None else "tencrop")
                    for model in models], axis=0)


def write_soft_labels(models, faces, path):
    """A teacher as a file, for train.distill.teachers: teacher_probabilities for every Training and PublicTest
    face (what any protocol trains on), in float16, each under its face's key (data.face_keys), so that a run on
    any copy of FER2013 with the same pixels finds its faces. A few hundred kB where a checkpoint is megabytes."""
    faces = faces.select(faces.usage != data.PRIVATE_TEST)
    probabilities = teacher_probabilities(models, faces.images)
    with replaced_atomically(path) as temporary, open(temporary, "wb") as f:
        np.savez_compressed(f, keys=data.face_keys(faces.images), probabilities=probabilities.astype(np.float16))
    return len(faces)


def read_soft_labels(path, images):
    """The probabilities a soft-label file (write_soft_labels) holds for each of `images`, found by its key."""
    if not os.path.isfile(path):
        raise UserError(f"teacher {path} not found")
    try:
        with np.load(path) as archive:
            keys, probabilities = archive["keys"], archive["probabilities"]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"teacher {path}: not a soft-label file from evaluate.py --soft-labels ({error})") from None
    order = np.argsort(keys, kind="stable")
    keys, probabilities = keys[order], probabilities[order]
    wanted = data.face_keys(images)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    missing = int(np.sum(keys[at] != wanted))
    if missing:
        raise UserError(f"teacher {path} has no probabilities for {missing} of the {len(images)} training faces "
                        "(made from another fer2013.csv?)")
    return probabilities[at].astype(np.float32)


def crop_size(model):
    """The side of the model's own centre crop (train.augment.crop), or what an .onnx export recorded of it; or None."""
    return model.crop if isinstance(model, OnnxModel) else model_lib.crop_size(model)


def crop_shifts(model):
    """fer2013.crop_shifts for the model's own centre crop; a model without one is refused."""
    if isinstance(model, OnnxModel):
        return model.crop_shifts("--tta tencrop")
    if crop_size(model) is None:
        raise UserError("--tta tencrop needs a model that crops its input (trained with train.augment.crop)")
    return data.crop_shifts(crop_size(model))


def evaluate_model(model, faces, split="PrivateTest", batch_size=256, tta=None):
    """Accuracy, per-class precision/recall/F1 (scikit-learn's classification report) and the confusion matrix
    of `model` (or of a list of models: an ensemble, their probabilities averaged) on `faces`; and the class
    probabilities of every face."""
    from sklearn.metrics import classification_report, confusion_matrix

    probabilities = np.mean([predict_probabilities(member, faces.images, batch_size, tta)
                             for member in (model if isinstance(model, list) else [model])], axis=0)
    predicted = probabilities.argmax(axis=1)
    truth = faces.labels.astype(np.int64)
    classes = list(range(len(data.EMOTIONS)))
    report = classification_report(truth, predicted, labels=classes, target_names=data.EMOTIONS,
                                   output_dict=True, zero_division=0)
    return {
        "split": split,
        "tta": bool(tta),
        "tta_kind": "flip" if tta is True else tta or None,
        "n": int(len(truth)),
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "classes": list(data.EMOTIONS),
        "per_class": {name: {"precision": float(report[name]["precision"]), "recall": float(report[name]["recall"]),
                             "f1": float(report[name]["f1-score"]), "support": int(report[name]["support"])}
                      for name in data.EMOTIONS},
        "confusion_matrix": confusion_matrix(truth, predicted, labels=classes).tolist(),
    }, probabilities


def report_names(checkpoint, tta=None, split="PrivateTest"):
    """metrics.json, confusion_matrix.png, predictions.csv, mistakes.png for best.keras on PrivateTest;
    metrics-<stem>.json ... for any other checkpoint (metrics-best-onnx.json for best.onnx); -PublicTest or
    -Training added for another split, -tta with flip test-time augmentation, -tencrop with ten crops."""
    stem, extension = os.path.splitext(os.path.basename(checkpoint))
    stem += "-onnx" if extension == ".onnx" else ""
    suffix = (("" if stem == "best" else f"-{stem}") + ("" if split == "PrivateTest" else f"-{split}")
              + ({"tencrop": "-tencrop"}.get(tta, "-tta") if tta else ""))
    return (f"metrics{suffix}.json", f"confusion_matrix{suffix}.png", f"predictions{suffix}.csv",
            f"mistakes{suffix}.png")


def write_report(metrics, probabilities, faces, out_dir, checkpoint):
    """metrics.json, confusion_matrix.png, predictions.csv and mistakes.png (names as report_names) in out_dir;
    returns their paths. predictions.csv has one row per face of the split, in file order: its fingerprint (which
    finds the face in any copy of FER2013), the true label, the predicted one and the 7 probabilities, from which
    anyone can recompute the scores."""
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    names = report_names(checkpoint, metrics.get("tta_kind"), metrics["split"])
    paths = [os.path.join(out_dir, name) for name in names]
    json_path, png_path, csv_path, mistakes_path = paths
    write_text(json_path, json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(metrics, png_path)
    plot_mistakes(faces, probabilities, mistakes_path)
    prints = fingerprint.encode(fingerprint.fingerprints(faces.images))
    table = pd.DataFrame({"row": np.arange(len(faces)), "face": prints, "true": faces.labels.astype(np.int64),
                          "predicted": probabilities.argmax(axis=1)})
    for index, name in enumerate(data.EMOTIONS):
        table[f"p_{name}"] = np.round(probabilities[:, index].astype(np.float64), 6)
    with replaced_atomically(csv_path) as temporary:
        table.to_csv(temporary, index=False)
    return paths


def plot_confusion_matrix(metrics, path):
    """scikit-learn's confusion-matrix picture: each true class's faces, as shares of what they were taken for."""
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.array(metrics["confusion_matrix"])
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = pyplot().subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(rates, display_labels=metrics["classes"]).plot(
        ax=axes, cmap="Blues", values_format=".0%", xticks_rotation=45, colorbar=False, im_kw={"vmin": 0, "vmax": 1})
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{metrics['split']}: accuracy {metrics['accuracy']:.4f} ({metrics['n']} images)")
    figure.tight_layout()
    save_figure(figure, path)


def plot_mistakes(faces, probabilities, path, count=24):
    """The `count` most confident wrong answers, each face with its true and predicted emotion; returns their
    indices, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != faces.labels)
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
    columns = 8
    rows = max(1, -(-len(worst) // columns))
    figure, axes = pyplot().subplots(rows, columns, figsize=(columns * 1.5, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, worst):
        ax.imshow(faces.images[index], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {data.EMOTIONS[faces.labels[index]]}\nsaid {data.EMOTIONS[predicted[index]]} "
                     f"{probabilities[index, predicted[index]]:.0%}", fontsize=8)
    figure.suptitle(f"the {len(worst)} most confident mistakes of {len(wrong):,} ({len(faces):,} faces)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return worst


def print_report(metrics):
    tta = f" with test-time augmentation ({metrics.get('tta_kind') or 'flip'})" if metrics.get("tta") else ""
    print(f"{metrics['split']} accuracy{tta}: {metrics['accuracy']:.4f} ({metrics['n']} images)")
    print(f"{'':>10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for name, row in metrics["per_class"].items():
        print(f"{name:>10} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")


def load_model(path, weights=None):
    """A checkpoint (checkpoints.load_checkpoint), or an .onnx export run by onnxruntime (export.OnnxModel)."""
    if path.endswith(".onnx"):
        return OnnxModel(path)
    return load_checkpoint(path, weights)


def data_for(checkpoint, data_path):
    """The data to score on: --data, else the run's own (config.yaml beside the checkpoint), else the default."""
    config = config_beside(checkpoint)
    if data_path:
        return data_path, None, config["data"]["cache_dir"]
    return config["data"]["path"], config["data"]["limit"], config["data"]["cache_dir"]


def default_out(checkpoint):
    """Beside the checkpoint; for a model shipped in models/ (which holds the shipped files alone, and no file with
    FER2013's labels) or one in a folder this process cannot write (a read-only mount, as Kaggle's /kaggle/input),
    runs/evaluate-<its name>/."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if (os.path.isdir(MODELS) and os.path.samefile(folder, MODELS)) or not os.access(folder, os.W_OK | os.X_OK):
        return os.path.join("runs", "evaluate-" + os.path.splitext(os.path.basename(checkpoint))[0])
    return folder


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", help="a .keras file, a Keras 2 .h5/.hdf5/.hd5 model, a "
                        "model.json (with --weights), or an .onnx export; several: an ensemble, scored on their "
                        "averaged probabilities; default: the model shipped in models/")
    parser.add_argument("--weights", help="weights for a model.json (default: the .h5 beside it)")
    parser.add_argument("--data", help="fer2013.csv or image folder (default: the run's data.path)")
    parser.add_argument("--split", default="PrivateTest", choices=data.USAGES, help="default: PrivateTest")
    parser.add_argument("--out", help="folder for metrics.json and confusion_matrix.png (default: beside the "
                                      "checkpoint; for a model shipped in models/ or in a folder that cannot be "
                                      "written, runs/evaluate-<its name>/)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tta", nargs="?", const="flip", choices=("flip", "tencrop"),
                        help="test-time augmentation: flip (the default) averages each face with its mirror image; "
                             "tencrop, for a model trained with train.augment.crop, its ten crops")
    parser.add_argument("--soft-labels", metavar="OUT.npz",
                        help="score nothing: write what the checkpoint(s) say of every Training and PublicTest face "
                             "(as a teacher: mirrored, and ten crops where it crops) to OUT.npz, a teacher file for "
                             "train.distill.teachers")
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        args.checkpoint = [shipped_model()]
        print(f"using the shipped model {args.checkpoint[0]} (no --checkpoint given)")
    if len(args.checkpoint) > 1 and args.weights:
        raise UserError("--weights goes with one model.json checkpoint, not an ensemble")
    models = [load_model(path, args.weights) for path in args.checkpoint]
    if args.tta == "tencrop":
        for model in models:  # a model without its own crop is refused before the data loads
            crop_shifts(model)
    first = args.checkpoint[0]
    data_path, limit, cache_dir = data_for(first, args.data)
    if args.soft_labels:
        folder = os.path.dirname(os.path.abspath(args.soft_labels))
        if not args.soft_labels.endswith(".npz") or not os.path.isdir(folder):
            raise UserError(f"--soft-labels {args.soft_labels}: must be an .npz file in an existing folder")
        count = write_soft_labels(models, data.limit_rows(data.read_faces(data_path, cache_dir), limit),
                                  args.soft_labels)
        print(f"wrote {args.soft_labels}: what {len(models)} teacher(s) say of {count} Training and PublicTest faces")
        return 0
    faces = data.load_split(data_path, args.split, limit, cache_dir)
    metrics, probabilities = evaluate_model(models, faces, args.split, args.batch_size, args.tta)
    ensemble = {"ensemble": args.checkpoint} if len(models) > 1 else {}
    metrics = {"checkpoint": "ensemble" if ensemble else first, **ensemble, "data": data_path, **metrics}
    print_report(metrics)
    out_dir = args.out or default_out(first)
    for path in write_report(metrics, probabilities, faces, out_dir, "ensemble" if ensemble else first):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
