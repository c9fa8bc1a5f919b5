"""The predictions behind a results folder's figures: how results.py writes them and how --check recomputes every
metric from them and anyone's fer2013.csv.

predictions*.csv.gz: train.py's and evaluate.py's predictions*.csv without the true-label column (FER2013's labels
stay out of the repository), gzipped with no name and no time in it, so that the same table gives the same bytes;
the faces' fingerprints (fingerprint.py), the same in every file of one split, are kept once in faces.csv.gz.
"""
import glob
import gzip
import json
import os

import numpy as np

from common import UserError, replaced_atomically

FACES = "faces.csv.gz"  # the fingerprints of the faces that the predictions files share


def write(tables, out_dir):
    """Each {name: table} as out_dir/<name>.gz, gzipped with no name and no time in it (the same bytes for the same
    table). The faces' fingerprints, the same in every file of one split, are kept once, in faces.csv.gz (row, face):
    a file whose rows and faces are those drops its face column."""
    shared = None
    if os.path.exists(os.path.join(out_dir, FACES)):
        os.remove(os.path.join(out_dir, FACES))  # an earlier publication's
    for name, table in tables.items():
        if "face" in table.columns:
            if shared is None:
                shared = table[["row", "face"]]
                _write_gzipped(shared, os.path.join(out_dir, FACES))
            if table["row"].equals(shared["row"]) and table["face"].equals(shared["face"]):
                table = table.drop(columns=["face"])
        target = os.path.join(out_dir, name.removesuffix(".gz"))
        _write_gzipped(table, target + ".gz")
        if os.path.exists(target):
            os.remove(target)  # an earlier publication's, uncompressed


def _write_gzipped(table, path):
    with replaced_atomically(path) as temporary, open(temporary, "wb") as f:
        f.write(gzip.compress(table.to_csv(index=False).encode(), mtime=0))


def check(out_dir, data_path):
    """Recompute every metrics*.json in out_dir from its predictions*.csv and the split's true labels in
    data_path (fer2013.csv); raises UserError on any difference. Returns the files checked."""
    import pandas as pd

    import data
    import fingerprint

    faces = data.read_faces(data_path, None)
    checked = []
    for metrics_path in sorted(glob.glob(os.path.join(out_dir, "metrics*.json"))):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        predictions_path = os.path.join(out_dir, os.path.basename(metrics_path).replace("metrics", "predictions")
                                        .replace(".json", ".csv.gz"))
        if not os.path.isfile(predictions_path) and os.path.isfile(predictions_path[:-3]):
            predictions_path = predictions_path[:-3]  # published uncompressed
        if not os.path.isfile(predictions_path):
            raise UserError(f"{metrics_path}: no {os.path.basename(predictions_path)} beside it")
        table = pd.read_csv(predictions_path)
        if "face" not in table.columns and os.path.isfile(os.path.join(out_dir, FACES)):
            shared = pd.read_csv(os.path.join(out_dir, FACES))
            if not table["row"].equals(shared["row"]):
                raise UserError(f"{predictions_path}: its rows are not those of {FACES} beside it")
            table["face"] = shared["face"]
        split = faces.select(faces.usage == data.USAGES.index(metrics["split"]))
        predicted = table["predicted"].to_numpy()
        if "face" in table.columns:  # each prediction finds its face by its fingerprint, in any row order
            where = f"{data_path} ({metrics['split']})"
            rows = fingerprint.match(fingerprint.decode(list(table["face"])), predicted, split.images, split.labels,
                                     where)
        else:  # files written before fingerprints: the face's position within its split
            rows = table["row"].to_numpy()
        truth = split.labels.astype(np.int64)[rows]
        probabilities = table[[f"p_{name}" for name in data.EMOTIONS]].to_numpy()
        counts = np.zeros((len(data.EMOTIONS),) * 2, np.int64)
        np.add.at(counts, (truth, predicted), 1)
        found = {"rows": (len(table), metrics["n"], len(split)),
                 "accuracy": (round(float(np.mean(predicted == truth)), 6), round(metrics["accuracy"], 6)),
                 "confusion_matrix": (counts.tolist(), metrics["confusion_matrix"]),
                 "predicted = argmax of the probabilities": (True, bool(np.all(
                     probabilities[np.arange(len(table)), predicted] >= probabilities.max(axis=1) - 1e-6)))}
        for what, (ours, theirs, *more) in found.items():
            if ours != theirs or any(value != ours for value in more):
                raise UserError(f"{predictions_path}: {what} recomputes to {ours}, {metrics_path} says {theirs}")
        checked.append(predictions_path)
    if not checked:
        raise UserError(f"{out_dir}: no metrics*.json to check")
    return checked
