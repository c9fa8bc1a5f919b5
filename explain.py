"""Which parts of a face made the model name its emotion: occlusion maps (Zeiler & Fergus, 2014).

    python explain.py photo.jpg [more.jpg folder/] [--checkpoint X] [--out explanations] [--emotion Sad]
    python explain.py --data data/fer2013.csv [--split PrivateTest] [--per-class 100] [--checkpoint X]

A square of the face's own mean grey (--patch pixels of the 48x48 face) slides over it --stride pixels at a time;
at each place, the fall in the probability of the emotion the model names is the weight of what the square hid.
A pixel's value is the mean fall over the squares that covered it: red where that part of the face spoke for the
emotion, blue where it spoke against it. Works with any checkpoint predict.py takes, .onnx included.

With photos: each face found (as predict.py finds it) with its map over it, in explanations/<photo>.png, and one
line per face with the share of its evidence in the face's upper, middle and lower third (roughly forehead and
brows, eyes and nose, mouth and chin, in a face cropped as the detector and FER2013 crop it). With --data: the mean
map of each emotion over the first --per-class faces of the split that the model names rightly, in
explanations/<split>-by-emotion.png and .json.
"""
import argparse
import json
import os
import sys

import numpy as np

import data
from common import UserError, exit_on_user_error, pyplot, replaced_atomically, save_figure, shipped_model
from config import config_beside
from detect import FaceFinder, read_image
from predict import IMAGE_EXTENSIONS, Predictor, check_inputs, expand_inputs, load_probabilities, output_name

THIRDS = ("upper", "middle", "lower")


def occlusion_maps(probabilities, faces, classes=None, patch=8, stride=4, chunk=64):
    """(maps (n, 48, 48), classes (n,), probabilities (n, 7)) for uint8 faces (n, 48, 48): each map the mean fall in
    the probability of its class (default: the emotion the model names) when a patch x patch square of the face's
    mean grey covers that pixel. `probabilities` maps uint8 faces to (n, 7), as predict.load_probabilities's does."""
    size = faces.shape[1]
    starts = sorted(set(range(0, size - patch + 1, stride)) | {size - patch})  # the last square reaches the edge
    squares = [(y, x) for y in starts for x in starts]
    coverage = np.zeros((size, size), np.float32)
    for y, x in squares:
        coverage[y:y + patch, x:x + patch] += 1
    scores = probabilities(faces)
    classes = scores.argmax(axis=1) if classes is None else np.asarray(classes)
    maps = np.zeros(faces.shape, np.float32)
    for begin in range(0, len(faces), chunk):
        batch, picked = faces[begin:begin + chunk], classes[begin:begin + chunk]
        grey = batch.reshape(len(batch), -1).mean(axis=1).round().astype(faces.dtype)
        hidden = np.repeat(batch[:, None], len(squares), axis=1)
        for k, (y, x) in enumerate(squares):
            hidden[:, k, y:y + patch, x:x + patch] = grey[:, None, None]
        after = probabilities(hidden.reshape(-1, size, size)).reshape(len(batch), len(squares), -1)
        rows = np.arange(len(batch))
        fall = scores[begin:begin + chunk][rows, picked][:, None] - after[rows, :, picked]  # (faces, squares)
        for k, (y, x) in enumerate(squares):
            maps[begin:begin + len(batch), y:y + patch, x:x + patch] += fall[:, k, None, None]
    return maps / coverage, classes, scores


def thirds(heat):
    """The share of a map's positive evidence in the upper, middle and lower third of the face (rows)."""
    evidence = np.maximum(heat, 0)
    parts = [part.sum() for part in np.array_split(evidence, 3, axis=0)]
    total = sum(parts)
    return [round(float(part / total), 3) if total > 0 else 0.0 for part in parts]


def draw(axes, face, heat, title):
    """The face in grey with its map over it, on one matplotlib Axes: red where that part spoke for the emotion,
    blue where against, the more opaque the more it weighed (scaled to the map's own largest value)."""
    scale = float(np.abs(heat).max()) or 1.0
    overlay = np.zeros((*heat.shape, 4), np.float32)
    overlay[..., 0], overlay[..., 2] = heat > 0, heat < 0
    overlay[..., 3] = 0.8 * np.abs(heat) / scale
    axes.imshow(face, cmap="gray", vmin=0, vmax=255)
    axes.imshow(overlay, interpolation="bilinear")
    axes.set_title(title, fontsize=9)
    axes.axis("off")


def faces_figure(faces, maps, classes, scores, titles=None, columns=6):
    """A matplotlib figure: each face with its map over it, titled with its emotion and probability (after its
    title in `titles`, if given). app.py shows it too."""
    plt = pyplot()
    rows, wide = -(-len(faces) // columns), min(columns, len(faces))
    figure, grid = plt.subplots(rows, wide, figsize=(2.2 * wide, 2.4 * rows), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for n, (axes, face, heat, top, row) in enumerate(zip(grid.flat, faces, maps, classes, scores)):
        draw(axes, face, heat, (f"{titles[n]}: " if titles else "") + f"{data.EMOTIONS[top]} {row[top]:.2f}")
    figure.tight_layout()
    return figure


def explain_photos(probabilities, files, settings, out_dir, patch, stride, emotion=None):
    """A figure per photo with a face; a line per face. Each map is the named emotion's, or `emotion`'s (what in
    the face speaks for it, and against). Returns how many photos could not be read."""
    predictor, used, failed = Predictor(probabilities, FaceFinder(settings), settings["margin"]), set(), 0
    for path in files:
        try:
            gray, boxes = predictor.find(read_image(path))
        except OSError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failed += 1
            continue
        if not boxes:
            print(f"{path}: 0 faces")
            continue
        faces = predictor.crops(gray, boxes)
        chosen = None if emotion is None else [data.EMOTIONS.index(emotion)] * len(faces)
        maps, classes, scores = occlusion_maps(probabilities, faces, chosen, patch, stride)
        figure = os.path.join(out_dir, output_name(path, used, ".png"))
        save_figure(faces_figure(faces, maps, classes, scores), figure)
        for n, (heat, top, row) in enumerate(zip(maps, classes, scores), 1):
            shares = ", ".join(f"{name} {share:.2f}" for name, share in zip(THIRDS, thirds(heat)))
            print(f"{path}: face {n} of {len(boxes)}, {data.EMOTIONS[top]} ({row[top]:.2f}): its evidence by third "
                  f"of the face: {shares}")
        print(f"wrote {figure}")
    return failed


def explain_split(probabilities, faces, per_class, out_dir, split, patch, stride):
    """The mean map of each emotion over the first `per_class` faces of the split the model names rightly: a
    figure (each over the mean of those faces) and a JSON file; returns the JSON's content."""
    scores = probabilities(faces.images)
    right = scores.argmax(axis=1) == faces.labels
    summary, panels = {}, []
    for label, name in enumerate(data.EMOTIONS):
        chosen = np.flatnonzero(right & (faces.labels == label))[:per_class]
        if len(chosen) == 0:
            summary[name] = {"faces": 0}
            continue
        maps, _, _ = occlusion_maps(probabilities, faces.images[chosen], faces.labels[chosen], patch, stride)
        mean = maps.mean(axis=0)
        summary[name] = {"faces": len(chosen), "thirds": dict(zip(THIRDS, thirds(mean))),
                         "peak": round(float(mean.max()), 4),  # the largest mean fall, and where it is
                         "peak_row_col": [int(v) for v in np.unravel_index(mean.argmax(), mean.shape)]}
        panels.append((faces.images[chosen].mean(axis=0), mean, f"{name} (n={len(chosen)}), peak {mean.max():.3f}"))
    plt = pyplot()
    figure, grid = plt.subplots(1, len(data.EMOTIONS), figsize=(2.2 * len(data.EMOTIONS), 2.5), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, (face, heat, title) in zip(grid.flat, panels):
        draw(axes, face, heat, title)
    figure.suptitle(f"{split}, faces the model names rightly: where the evidence for their emotion lies (red; peak: "
                    "the largest mean fall in its probability)", fontsize=10)
    figure.tight_layout()
    stem = os.path.join(out_dir, f"{split}-by-emotion")
    save_figure(figure, stem + ".png")
    with replaced_atomically(stem + ".json") as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump({"split": split, "patch": patch, "stride": stride, "per_class": per_class, "emotions": summary},
                  f, indent=1)
    print(f"wrote {stem}.png and {stem}.json")
    return summary


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="photos, or folders of photos")
    parser.add_argument("--checkpoint", help="as predict.py's (default: the model shipped in models/)")
    parser.add_argument("--weights", help="weights for a model.json (default: the .h5 beside it)")
    parser.add_argument("--data", help="fer2013.csv or image folder: the mean map of each emotion over a split")
    parser.add_argument("--split", default="PrivateTest", choices=data.USAGES, help="with --data (default PrivateTest)")
    parser.add_argument("--per-class", type=int, default=100, help="with --data: faces per emotion (default 100)")
    parser.add_argument("--patch", type=int, default=8, help="side of the hiding square, in pixels (default 8)")
    parser.add_argument("--stride", type=int, default=4, help="its step, in pixels (default 4)")
    parser.add_argument("--emotion", choices=data.EMOTIONS, help="with photos: map this emotion in every face "
                        "(default: the one the model names)")
    parser.add_argument("--out", default="explanations", help="folder for the figures (default: explanations)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="predict settings, as "
                        "predict.py's (e.g. --set predict.margin=0.2)")
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.data):
        raise UserError("give photos (or folders of photos) to explain, or --data fer2013.csv"
                        + (", not both" if args.data else ""))
    if args.emotion and args.data:
        raise UserError("--emotion goes with photos: with --data, each emotion's map is drawn over its own faces")
    if args.per_class < 1:
        raise UserError(f"--per-class must be at least 1, got {args.per_class}")
    if not 1 <= args.stride <= args.patch <= data.SIZE:
        raise UserError(f"--patch {args.patch} --stride {args.stride}: need 1 <= stride <= patch <= {data.SIZE}")
    check_inputs(args.inputs)
    files = [path for path in expand_inputs(args.inputs) if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS]
    if args.inputs and not files:
        raise UserError(f"no photos in {', '.join(args.inputs)}")
    if args.checkpoint is None:
        args.checkpoint = shipped_model()
        print(f"using the shipped model {args.checkpoint} (no --checkpoint given)")
    config = config_beside(args.checkpoint, args.set)
    if args.data:
        faces = data.load_split(args.data, args.split, cache_dir=config["data"]["cache_dir"])
    probabilities = load_probabilities(args.checkpoint, args.weights, config["predict"]["tta"])
    os.makedirs(args.out, exist_ok=True)
    if args.data:
        explain_split(probabilities, faces, args.per_class, args.out, args.split, args.patch, args.stride)
        return 0
    failed = explain_photos(probabilities, files, config["predict"], args.out, args.patch, args.stride, args.emotion)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
