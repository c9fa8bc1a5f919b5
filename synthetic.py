"""Synthetic FER-format faces: procedurally drawn 48x48 faces whose expression decides the class. A stand-in
for demos and tests (the demo config draws them when its CSV is missing), never for FER2013.

    python synthetic.py OUT.csv [--rows 3000] [--seed 0] [--force]    # as a Kaggle-format CSV
"""
import argparse
import os
import sys

import numpy as np

from common import UserError, exit_on_user_error
from fer2013 import EMOTIONS, PRIVATE_TEST, PUBLIC_TEST, SIZE, TRAINING, Faces
from kaggle_csv import write_csv


# Per class: mouth curve (+ smiles), mouth opening, brow slant (+ inner ends down), brow lift, eye opening.
EXPRESSIONS = {
    "Angry":    dict(curve=-0.6, open=0.0, slant=3.0, lift=0.0, eyes=0.6),
    "Disgust":  dict(curve=-1.2, open=0.0, slant=1.5, lift=-0.5, eyes=0.4, tilt=3.0),
    "Fear":     dict(curve=-0.4, open=2.0, slant=-2.5, lift=2.0, eyes=1.6),
    "Happy":    dict(curve=3.5, open=0.0, slant=0.0, lift=0.5, eyes=0.8),
    "Sad":      dict(curve=-3.0, open=0.0, slant=-2.0, lift=0.5, eyes=0.8),
    "Surprise": dict(curve=0.0, open=4.5, slant=0.0, lift=3.5, eyes=1.7),
    "Neutral":  dict(curve=0.0, open=0.0, slant=0.0, lift=0.0, eyes=1.0),
}


def _stroke(canvas, xs, ys, ink, width, grid):
    """Darken each canvas (B, 48, 48) along its polyline (xs, ys: (B, K)) with a soft pen of `width` pixels."""
    coordinate = grid[0][0]  # 0..47, the same along x and y
    across = (coordinate[None, None, :, None] - xs[:, None, None, :]) ** 2
    down = (coordinate[None, :, None, None] - ys[:, None, None, :]) ** 2
    distance = np.sqrt((across + down).min(axis=-1))
    alpha = np.clip(width - distance + 0.5, 0, 1)
    canvas += alpha * (ink[:, None, None] - canvas)


def _draw_faces(rng, labels, grid):
    """One face per label, all drawn at once: every part's parameters are arrays over the batch."""
    n = len(labels)
    gx, gy = grid

    def expression(key, spread):
        values = np.array([EXPRESSIONS[name].get(key, 0.0) for name in EMOTIONS], np.float32)
        return (values[labels] + rng.normal(0, spread, n))[:, None].astype(np.float32)

    def column(values):
        return np.asarray(values, np.float32)[:, None]

    background = rng.uniform(20, 235, n)
    canvas = background[:, None, None] + rng.normal(0, 12, n)[:, None, None] * (gx - SIZE / 2) / SIZE
    cx, cy = column(SIZE / 2 + rng.normal(0, 2, n)), column(SIZE / 2 + rng.normal(0, 2, n))
    scale = column(rng.uniform(0.85, 1.1, n))
    skin = rng.uniform(90, 210, n)
    too_close = np.abs(skin - background) < 30
    skin[too_close] = np.where(background < 128, background + 40, background - 40)[too_close]
    head = ((gx - cx[:, :, None]) / (17 * scale[:, :, None])) ** 2 + ((gy - cy[:, :, None]) / (21 * scale[:, :, None])) ** 2
    canvas = np.where(head < 1, skin[:, None, None], canvas).astype(np.float32)
    ink = (skin * rng.uniform(0.1, 0.45, n)).astype(np.float32)
    t = np.linspace(-1, 1, 15, dtype=np.float32)[None, :]
    angle = np.linspace(0, 2 * np.pi, 20, dtype=np.float32)[None, :]
    # Eyes: ellipses whose height shows how wide open they are.
    eye_open = np.maximum(expression("eyes", 0.15), 0.2)
    for side in (-1, 1):
        ex, ey = cx + side * 7 * scale, cy - 4 * scale
        _stroke(canvas, ex + 3.2 * scale * np.cos(angle), ey + 1.8 * scale * eye_open * np.sin(angle), ink, 0.6, grid)
        _stroke(canvas, ex, ey, ink, np.minimum(eye_open, 1.2)[:, :, None], grid)
        # Brows: the inner end goes down by `slant`, the whole brow up by `lift`.
        slant, lift = expression("slant", 0.4), expression("lift", 0.4)
        inner = (-side * t + 1) / 2
        _stroke(canvas, ex + t * 4 * scale, ey - (5 + lift) * scale + slant * inner * scale, ink, 0.8, grid)
    # Mouth: a parabola whose corners rise with `curve`, tilted for disgust, open for fear and surprise.
    curve, tilt = expression("curve", 0.5), expression("tilt", 0.4)
    opening = np.maximum(expression("open", 0.4), 0.0)
    mx = cx + t * 7 * scale
    my = cy + 10 * scale - curve * t ** 2 * scale + tilt * t * scale / 2
    lips = opening / 2 * np.sqrt(1 - t ** 2) * scale
    _stroke(canvas, mx, my - lips, ink, 0.8, grid)
    _stroke(canvas, mx, my + lips, ink, 0.8, grid)
    # Nose.
    _stroke(canvas, np.repeat(cx, 4, axis=1), cy + np.linspace(-1, 4, 4, dtype=np.float32) * scale, ink * 1.3, 0.5, grid)
    canvas += rng.normal(0, 1, canvas.shape).astype(np.float32) * rng.uniform(4, 14, n)[:, None, None].astype(np.float32)
    return np.clip(canvas, 0, 255).round().astype(np.uint8)


def make_synthetic(rows, seed=0):
    """`rows` procedurally drawn 48x48 faces whose expression decides the class (mouth, brows, eyes), with
    random position, size, contrast and noise. Usage blocks as in FER2013: 80% Training, 10% PublicTest,
    10% PrivateTest. A stand-in for demos and tests, never for FER2013."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(np.arange(SIZE, dtype=np.float32), np.arange(SIZE, dtype=np.float32))
    labels = rng.integers(0, len(EMOTIONS), rows).astype(np.uint8)
    images = np.concatenate([_draw_faces(rng, labels[i:i + 256], grid) for i in range(0, rows, 256)])
    n_train, n_public = int(rows * 0.8), int(rows * 0.1)
    usage = np.full(rows, PRIVATE_TEST, np.uint8)
    usage[:n_train] = TRAINING
    usage[n_train:n_train + n_public] = PUBLIC_TEST
    return Faces(images, labels, usage)


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic FER-format CSV (not FER2013).")
    parser.add_argument("out", metavar="OUT.csv", help="the CSV to write")
    parser.add_argument("--rows", type=int, default=3000, help="rows of the CSV (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="its seed (default 0)")
    parser.add_argument("--force", action="store_true", help="write over OUT.csv if it exists")
    args = parser.parse_args(argv)
    if args.rows <= 0:
        raise UserError(f"--rows must be positive, got {args.rows}")
    if os.path.exists(args.out) and not args.force:  # `python synthetic.py fer2013.csv` would replace FER2013
        raise UserError(f"{args.out} exists: synthetic.py writes a new file only (--force writes over it)")
    faces = make_synthetic(args.rows, args.seed)
    write_csv(args.out, faces)
    print(f"wrote {args.out}: {len(faces)} SYNTHETIC faces (not FER2013), seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
