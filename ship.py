"""A checkpoint made fit to ship in models/: computing in float32 whatever precision it trained in, no optimizer
state, weights stored as float16; and the model card (models/README.md) that says how it was made and what it
scored, from its run directory.

    python ship.py runs/<run>/best.keras models/fer2013-<name>.keras [--data fer2013.csv]
"""
if __name__ == "__main__":  # first, before the imports below bring in Keras
    from common import start_backend

    start_backend()

import argparse
import glob
import json
import os
import sys
import tempfile
import zipfile

import numpy as np

import data
import results
from checkpoints import load_checkpoint
from common import UserError, exit_on_user_error, replaced_atomically, without_home, write_text
from config import DEFAULTS, flatten, load_config
from evaluate import predict_probabilities
from synthetic import make_synthetic


def _float32_config(value):
    """A model config with every layer's dtype policy made float32 (a mixed_bfloat16 run computes in bfloat16)."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def _float16_weights(source_h5, out_h5):
    """Copy a Keras weights file, storing float32 arrays as float16. Keras casts them back to its float32
    variables on loading, on every backend."""
    import h5py

    def copy(source, target):
        target.attrs.update(source.attrs)
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
                continue
            array = item[()]
            target.create_dataset(name, data=array.astype(np.float16) if array.dtype == np.float32 else array)
            target[name].attrs.update(item.attrs)

    with h5py.File(source_h5, "r") as source, h5py.File(out_h5, "w") as target:
        copy(source, target)


def ship(checkpoint, out_path, images):
    """`checkpoint` as a model to ship: float32 computation whatever precision it trained in (bfloat16 is slow or
    missing on many CPUs), no optimizer state, and weights stored as float16, which halves the file (18 MB for the
    notebook's network). Returns (the shipped model's argmax agreement with the checkpoint on `images`, uint8
    faces; the largest probability gap)."""
    model = load_checkpoint(checkpoint)
    plain = type(model).from_config(_float32_config(model.get_config()))
    plain.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as folder:
        full = os.path.join(folder, "float32.keras")
        plain.save(full)
        with zipfile.ZipFile(full) as archive:
            archive.extractall(os.path.join(folder, "parts"))
        weights = os.path.join(folder, "parts", "model.weights.h5")
        _float16_weights(weights, weights + ".half")
        os.replace(weights + ".half", weights)
        with replaced_atomically(out_path) as temporary:
            with zipfile.ZipFile(temporary, "w") as archive:  # stored, as Keras writes them
                for name in sorted(os.listdir(os.path.join(folder, "parts"))):
                    archive.write(os.path.join(folder, "parts", name), name)
    before, after = (predict_probabilities(net, images) for net in (model, load_checkpoint(out_path)))
    return float(np.mean(before.argmax(1) == after.argmax(1))), float(np.abs(before - after).max())


CARD_MARK = "<!-- written by ship.py; written again by the next ship.py -->"
RUN_FILES = ("config.yaml", "environment.json", "history.csv")  # what makes a folder a run directory


FER2013_TERMS = ("The model learned from FER2013 (Goodfellow et al., 2013, \"Challenges in Representation Learning\", "
                 "ICML 2013 workshop; the Kaggle competition of the same name), so FER2013's own terms apply to it as "
                 "they apply to the data: read them before any use beyond research. FER2013 itself is not in this "
                 "repository.")


def _started_from(init_weights):
    """The card's sentence on where the run's weights started: nothing for a random initialisation; for a
    checkpoint of another run directory that is still there, that run's name, epochs and hours too."""
    if not init_weights:
        return ""
    path = init_weights["path"]
    earlier, run_dir = "an earlier training", os.path.dirname(os.path.abspath(path))
    if all(os.path.isfile(os.path.join(run_dir, part)) for part in RUN_FILES):
        summary = results.summarize(run_dir, results.read_history(os.path.join(run_dir, "history.csv")), None)
        earlier = (f"run `{summary['run']}` ({summary['epochs_done']} epochs, {summary.get('hours', '?')} hours, "
                   f"{results.validation_phrase(summary)})")
    return (f" Its weights started from {path} (`train.py --init-weights`), the end of {earlier}, not from a random "
            "initialisation: the hours below are this run's only.")


def write_model_card(checkpoint, out_path, agreement, own_scores=()):
    """README.md beside the shipped model: how it was made (config, commits, hours, CPUs, from the run directory
    the checkpoint came from), what the run's checkpoints scored and `own_scores`, (split, accuracy) pairs of the
    shipped file itself. Returns its path, or None where that folder has a README.md of its own, which is never
    overwritten."""
    card_path = os.path.join(os.path.dirname(os.path.abspath(out_path)), "README.md")
    if os.path.exists(card_path):
        with open(card_path, encoding="utf-8") as f:
            if f.readline().strip() != CARD_MARK:
                return None
    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    lines = [CARD_MARK, f"# {os.path.basename(out_path)}", "",
             f"`python ship.py {checkpoint} {out_path}`: {agreement}. It computes in float32 and stores "
             "its weights as float16; it takes 48x48x1 faces scaled to [0, 1] and answers the probabilities of "
             f"{', '.join(data.EMOTIONS)}. evaluate.py and predict.py use it when no --checkpoint is given; "
             f"plain Keras loads it too (`keras.models.load_model(\"{out_path}\")`).", ""]
    if all(os.path.isfile(os.path.join(run_dir, part)) for part in RUN_FILES):
        lines += how_it_was_made(run_dir) + what_it_scored(run_dir, os.path.basename(out_path), own_scores)
    else:
        lines += [f"{checkpoint} is not in a run directory of train.py: no record of how it was trained."]
    lines += ["", "## Terms", "", FER2013_TERMS, ""]
    write_text(card_path, without_home("\n".join(lines)))
    return card_path


def how_it_was_made(run_dir):
    """The card's lines on the run: epochs, hours, best validation accuracy, what its config changed, and a table
    of its parts (each start or resume: commit, CPU, precision, epochs, hours)."""
    summary = results.summarize(run_dir, results.read_history(os.path.join(run_dir, "history.csv")), None)
    config, defaults = flatten(load_config(os.path.join(run_dir, "config.yaml"))), flatten(DEFAULTS)
    changed = [f"`{key}={value}`" for key, value in config.items() if value != defaults.get(key)
               and not key.startswith(("data.path", "data.cache_dir", "output."))]
    lines = ["## How it was made", "",
             f"Run `{summary['run']}`: {summary['epochs_done']} of {summary['epochs']} epochs, "
             f"{summary.get('hours', '?')} hours of training; {results.validation_phrase(summary)}. Its config is "
             f"config.yaml's defaults with {', '.join(changed) or 'nothing changed'}."
             + _started_from(summary.get("init_weights")), "",
             "| part | started | commit | CPU | precision | epochs | hours |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for number, part in enumerate(summary["parts"], 1):
        epochs = "-".join(map(str, part.get("epochs") or [])) or "-"
        lines.append(f"| {number} | {part['started']} | {(part['commit'] or '-')[:12]} | {part['cpu']} "
                     f"({', '.join(part['cpu_bfloat16'] or []) or 'no bfloat16'}) | {part['precision']} | {epochs} "
                     f"| {part.get('hours', '-')} |")
    return lines


def what_it_scored(run_dir, name, own_scores):
    """The card's table of what the run's checkpoints scored (its metrics*.json) and the shipped file itself."""
    scores = []
    for path in sorted(glob.glob(os.path.join(run_dir, "metrics*.json"))):
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
        tta = metrics.get("tta_kind") or ("flip" if metrics.get("tta") else "none")
        scores.append(f"| {os.path.basename(metrics.get('checkpoint') or path)} | {metrics['split']} | {tta} "
                      f"| {metrics['accuracy']:.4f} |")
    retrained = load_config(os.path.join(run_dir, "config.yaml"))["data"]["protocol"] == "retrain"
    scores += [f"| {name} (this file) | {split}{' (trained on)' if retrained and split == 'PublicTest' else ''} "
               f"| none | {accuracy:.4f} |" for split, accuracy in own_scores]
    if not scores:
        return []
    return ["", "## What it scored", "", "The run's checkpoints as evaluate.py scored them, and this file itself "
            "with a plain argmax:", "", "| checkpoint | split | test-time augmentation | accuracy |",
            "| --- | --- | --- | --- |", *scores]


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Make a checkpoint fit to ship in models/: float32 computation, "
                                                 "float16-stored weights, no optimizer; and its model card.")
    parser.add_argument("checkpoint", help="the checkpoint to ship (runs/<run>/best.keras)")
    parser.add_argument("out", help="the .keras file to write (models/fer2013-<name>.keras)")
    parser.add_argument("--data", help="compare on this fer2013.csv's PublicTest faces (default: 2,000 synthetic "
                                       "faces), and score the shipped file on PublicTest and PrivateTest")
    args = parser.parse_args(argv)
    if not args.out.endswith(".keras"):
        raise UserError(f"{args.out}: the output must be a .keras file")
    folder = os.path.dirname(os.path.abspath(args.out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write {args.out}: cannot make the folder {folder} ({error.strerror})") from None
    splits = {split: data.load_split(args.data, split) for split in ("PublicTest", "PrivateTest")} if args.data else {}
    if args.data:
        images, where = splits["PublicTest"].images, f"{args.data} PublicTest"
    else:
        images, where = make_synthetic(2000, seed=3).images, "2,000 synthetic faces"
    agreement, gap = ship(args.checkpoint, args.out, images)
    said = f"the same top emotion as {args.checkpoint} on {agreement:.2%} of {where}, probabilities within {gap:.4f}"
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB): {said}")
    own_scores = []
    if args.data:
        shipped = load_checkpoint(args.out)
        for split, faces in splits.items():
            accuracy = float(np.mean(predict_probabilities(shipped, faces.images).argmax(1) == faces.labels))
            own_scores.append((split, accuracy))
            print(f"{args.out} on {split}: accuracy {accuracy:.4f} (plain argmax)")
    card = write_model_card(args.checkpoint, args.out, said, own_scores)
    print(f"wrote {card}" if card else "left the README.md beside it as it is (not one ship.py wrote)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
