"""FER2013 data: the notebook's load_data, the two split protocols, the image-folder release, synthetic faces.

    python data.py PATH                               # images per Usage x emotion
    python data.py --synthetic OUT.csv --rows 3000    # a synthetic FER-format CSV (not FER2013!)
    python data.py --download [--dest data/]          # FER2013 from Kaggle into data/fer2013.csv

Images are kept as uint8 (N, 48, 48) until a batch is formed; `load_data` alone returns the notebook's
float32 arrays. Parsing is vectorized with numpy over blocks of rows, never a Python loop over pixels.
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from common import UserError, exit_on_user_error, replaced_atomically

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
USAGES = ("Training", "PublicTest", "PrivateTest")
TRAINING, PUBLIC_TEST, PRIVATE_TEST = range(3)
SIZE = 48
PIXELS = SIZE * SIZE
IMAGE_SHAPE = (SIZE, SIZE, 1)
COLUMNS = ("emotion", "pixels", "Usage")
FOLDER_CLASSES = tuple(name.lower() for name in EMOTIONS)
FER2013_URL = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data"
SPACE, ZERO = np.uint8(ord(" ")), np.uint8(ord("0"))
ROWS_PER_BLOCK = 512  # rows parsed per vectorized step: ~4 MB, small enough to stay in cache


class Faces(NamedTuple):
    """A FER2013-shaped dataset: images uint8 (N, 48, 48), labels uint8 (N,) in 0..6, usage uint8 (N,) in 0..2."""
    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray

    def select(self, mask):
        return Faces(self.images[mask], self.labels[mask], self.usage[mask])

    def __len__(self):
        return len(self.labels)


def to_float(images):
    """uint8 (N, 48, 48) -> float32 (N, 48, 48, 1) in [0, 1], as the notebook fed its model (pixels / 255.0)."""
    return images[..., None].astype(np.float32) / np.float32(255)


def one_hot(labels, classes=len(EMOTIONS)):
    return np.eye(classes, dtype=np.float32)[labels]


def load_data(dataset_path, cache_dir="auto"):
    """The notebook's loader: (x_train, y_train, x_test, y_test), float32.

    Every row whose Usage is not PrivateTest goes to the training arrays in file order (Training then
    PublicTest), PrivateTest rows to the test arrays; images (N, 48, 48, 1) / 255, labels one-hot (N, 7).
    """
    faces = read_faces(dataset_path, cache_dir)
    test = faces.usage == PRIVATE_TEST
    train = faces.select(~test)
    test = faces.select(test)
    return to_float(train.images), one_hot(train.labels), to_float(test.images), one_hot(test.labels)


def read_faces(path, cache_dir="auto"):
    """Read a FER2013 CSV (.csv or .csv.gz) or an image-folder release into uint8 arrays.

    With a cache directory ("auto": the user's cache, $XDG_CACHE_HOME/fer2013-keras or ~/.cache/fer2013-keras;
    None: no cache), the parsed arrays are kept there and reused while the source is unchanged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder")
    read = read_folders if os.path.isdir(path) else read_csv
    directory = cache_location(cache_dir)
    if directory is None:
        return read(path)
    cache_file = os.path.join(directory, hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:24] + ".fer")
    fingerprint = source_fingerprint(path)
    faces = load_cache(cache_file, fingerprint)
    if faces is None:
        faces = read(path)
        save_cache(cache_file, fingerprint, faces)
    return faces


# --- the parse cache ------------------------------------------------------------------------------------
# One file per source path: a JSON header line (the source's fingerprint, array shapes and CRC-32s), then
# the raw uint8 images, labels and usage. A changed source (size, mtime or sampled content) or a damaged
# file (short, bad header, CRC mismatch) is rebuilt, never trusted.

CACHE_VERSION = 1
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 16


def cache_location(cache_dir):
    if cache_dir is None:
        return None
    if cache_dir == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "fer2013-keras")
    return os.path.expanduser(os.fspath(cache_dir))


def source_fingerprint(path):
    """Size, mtime and a content hash of a CSV (of its first and last 64 KiB and 16 blocks between, so
    that a warm load does not re-read 300 MB); for a folder, the names, sizes and mtimes of its files."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        size = mtime = 0
        for folder, subfolders, files in (entry for split in ("train", "test")
                                          for entry in os.walk(os.path.join(path, split))):
            subfolders.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(folder, name))
                size, mtime = size + stat.st_size, max(mtime, stat.st_mtime_ns)
                digest.update(f"{os.path.relpath(os.path.join(folder, name), path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"size": size, "mtime_ns": mtime, "sha256": digest.hexdigest()}
    stat = os.stat(path)
    with open(path, "rb") as f:
        for i in range(SAMPLE_BLOCKS + 2):
            f.seek(max(0, min(stat.st_size - SAMPLE_BYTES, i * stat.st_size // (SAMPLE_BLOCKS + 1))))
            digest.update(f.read(SAMPLE_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def load_cache(cache_file, fingerprint):
    """The cached Faces if the file is whole and was made from this very source, else None."""
    try:
        with open(cache_file, "rb") as f:
            header = json.loads(f.readline())
            if header.get("version") != CACHE_VERSION or header.get("source") != fingerprint:
                return None
            arrays = []
            for name in Faces._fields:
                shape, crc = header["arrays"][name]
                array = np.fromfile(f, np.uint8, count=int(np.prod(shape)))
                if array.size != np.prod(shape) or zlib.crc32(array) != crc:
                    return None
                arrays.append(array.reshape(shape))
            if f.read(1):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Faces(*arrays)


def save_cache(cache_file, fingerprint, faces):
    """Write the cache to a temporary name, then rename; a cache that cannot be written is only skipped."""
    header = {"version": CACHE_VERSION, "source": fingerprint,
              "arrays": {name: [list(array.shape), zlib.crc32(array)] for name, array in zip(Faces._fields, faces)}}
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        with replaced_atomically(cache_file) as temporary, open(temporary, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            for array in faces:
                f.write(np.ascontiguousarray(array, np.uint8).tobytes())
    except OSError as error:
        print(f"note: could not write the data cache {cache_file}: {error.strerror}", file=sys.stderr)


# --- the Kaggle CSV -------------------------------------------------------------------------------------

def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"{path}: cannot be read: {error}") from None
    return raw


def _parse_header(path, raw):
    end = raw.find(b"\n")
    header = raw[: len(raw) if end < 0 else end].decode("utf-8-sig", errors="replace")
    names = [name.strip().strip('"').strip() for name in header.split(",")]
    lowered = [name.lower() for name in names]
    positions = []
    for column in COLUMNS:
        if column.lower() not in lowered:
            raise UserError(f"{path}, line 1: missing column '{column}' (header is {header.strip()!r}, "
                            f"expected {','.join(COLUMNS)})")
        positions.append(lowered.index(column.lower()))
    return positions, len(names), len(raw) if end < 0 else end + 1


def read_csv(path):
    """Parse the Kaggle file: header emotion,pixels,Usage (any order), one face per line.

    Handles CRLF, stray spaces and quotes around fields, gzip. Any bad row raises a UserError that names
    the file, the line number and what is wrong. Blocks of rows are parsed on worker threads (numpy
    releases the GIL) while this thread splits the next lines.
    """
    raw = _read_bytes(path)
    if not raw.strip():
        raise UserError(f"{path}: the file is empty")
    (emotion_at, pixels_at, usage_at), n_columns, pos = _parse_header(path, raw)
    usage_codes = {name.encode(): code for code, name in enumerate(USAGES)}
    labels, usage, blocks = [], [], []
    pending, pending_lines = [], []
    line_no = 1
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pos < len(raw):
            end = raw.find(b"\n", pos)
            if end < 0:
                end = len(raw)
            fields = raw[pos:end].split(b",")
            pos = end + 1
            line_no += 1
            if len(fields) != n_columns:
                if len(fields) == 1 and not fields[0].strip():
                    continue
                raise UserError(f"{path}, line {line_no}: {len(fields)} fields, expected {n_columns} "
                                f"({','.join(COLUMNS)})")
            emotion = fields[emotion_at].strip(b' \t\r"')
            if not emotion.isdigit() or int(emotion) > 6:
                raise UserError(f"{path}, line {line_no}: emotion {emotion.decode(errors='replace')!r} "
                                f"is not a label 0..6")
            code = usage_codes.get(fields[usage_at].strip(b' \t\r"'))
            if code is None:
                raise UserError(f"{path}, line {line_no}: unknown Usage "
                                f"{fields[usage_at].strip().decode(errors='replace')!r} "
                                f"(expected {', '.join(USAGES)})")
            labels.append(int(emotion))
            usage.append(code)
            pixels = fields[pixels_at]
            if not (pixels[:1].isdigit() and pixels[-1:].isdigit()):
                pixels = pixels.strip(b' \t\r"')
            pending.append(pixels)
            pending_lines.append(line_no)
            if len(pending) == ROWS_PER_BLOCK:
                blocks.append(pool.submit(_parse_pixel_block, path, pending, pending_lines))
                pending, pending_lines = [], []
                if len(blocks) > 2 * workers:  # bound the rows held as text
                    blocks[-2 * workers - 1].result()
        if pending:
            blocks.append(pool.submit(_parse_pixel_block, path, pending, pending_lines))
        if not labels:
            raise UserError(f"{path}: no data rows below the header")
        images = np.empty((len(labels), SIZE, SIZE), np.uint8)
        for i, block in enumerate(blocks):
            images[i * ROWS_PER_BLOCK:(i + 1) * ROWS_PER_BLOCK] = block.result()
    return Faces(images, np.array(labels, np.uint8), np.array(usage, np.uint8))


def _parse_pixel_block(path, fields, line_numbers):
    """Space-separated pixel strings -> uint8 (n, 48, 48); vectorized, with an exact per-row diagnosis on failure."""
    images = _parse_pixels_fast(fields)
    if images is None:
        images = np.stack([_parse_pixels_exact(path, field, line) for field, line in zip(fields, line_numbers)])
    return images


def _parse_pixels_fast(fields):
    """The common case (2,304 values of 0..255 a row, digits separated by spaces), else None.

    A value is read off at the last digit of its token from the (up to) three bytes before it; the
    tens and hundreds count only where they are digits, not the space before the token.
    """
    text = np.frombuffer(b" ".join([b"   ", *fields, b""]), np.uint8)
    space = text == SPACE
    if text.max() > ord("9") or np.count_nonzero(text < ZERO) != np.count_nonzero(space):
        return None  # a character other than a digit or a space
    ends = np.flatnonzero(space[4:] > space[3:-1])  # a digit followed by a space, at ends + 3
    if len(ends) != len(fields) * PIXELS:
        return None
    row_ends = np.cumsum([len(field) + 1 for field in fields])  # in text[3:]
    if np.any(np.searchsorted(ends, row_ends) != np.arange(1, len(fields) + 1) * PIXELS):
        return None
    ones, tens, hundreds, thousands = text[3:][ends], text[2:][ends], text[1:][ends], text[ends]
    has_tens = tens != SPACE
    has_hundreds = has_tens & (hundreds != SPACE)
    if np.any(has_hundreds & (thousands != SPACE)):
        return None
    values = (ones - ZERO).astype(np.uint16)
    values += ((tens - ZERO) * has_tens).astype(np.uint16) * np.uint16(10)
    values += ((hundreds - ZERO) * has_hundreds).astype(np.uint16) * np.uint16(100)
    if values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(len(fields), SIZE, SIZE)


def _parse_pixels_exact(path, field, line_no):
    tokens = field.split()
    if len(tokens) != PIXELS:
        raise UserError(f"{path}, line {line_no}: {len(tokens)} pixels, expected {PIXELS} (48x48)")
    values = []
    for token in tokens:
        try:
            value = int(token)
        except ValueError:
            raise UserError(f"{path}, line {line_no}: pixel {token.decode(errors='replace')!r} "
                            f"is not an integer") from None
        if not 0 <= value <= 255:
            raise UserError(f"{path}, line {line_no}: pixel {value} is outside 0..255")
        values.append(value)
    return np.array(values, np.uint8).reshape(SIZE, SIZE)


# --- the image-folder release ---------------------------------------------------------------------------

def read_folders(root):
    """train/<class>/*.jpg and test/<class>/*.jpg; Usage from the file-name prefix (Training_, PublicTest_,
    PrivateTest_), else from the folder (train -> Training, test -> PrivateTest).

    This release has no file order: each Usage block is sorted by file name, so the seed protocol's last-20%
    validation rows are not the same faces as in the CSV.
    """
    from PIL import Image, UnidentifiedImageError

    found = []
    for split, fallback in (("train", TRAINING), ("test", PRIVATE_TEST)):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        for class_name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, class_name)
            if class_name.startswith(".") or not os.path.isdir(class_dir):
                continue
            if class_name.lower() not in FOLDER_CLASSES:
                raise UserError(f"{class_dir}: unknown class folder (expected {', '.join(FOLDER_CLASSES)})")
            label = FOLDER_CLASSES.index(class_name.lower())
            for name in os.listdir(class_dir):
                if name.startswith("."):
                    continue
                prefix = name.split("_", 1)[0]
                usage = USAGES.index(prefix) if prefix in USAGES else fallback
                found.append((usage, name, label, os.path.join(class_dir, name)))
    if not found:
        raise UserError(f"{root}: no images found (expected train/<class>/*.jpg and test/<class>/*.jpg "
                        f"with classes {', '.join(FOLDER_CLASSES)})")
    found.sort()
    images = np.empty((len(found), SIZE, SIZE), np.uint8)
    for i, (_, _, _, file) in enumerate(found):
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("L"))
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{file}: not a readable image ({error.__class__.__name__})") from None
        if pixels.shape != (SIZE, SIZE):
            raise UserError(f"{file}: image is {pixels.shape[1]}x{pixels.shape[0]}, expected 48x48")
        images[i] = pixels
    labels = np.array([label for _, _, label, _ in found], np.uint8)
    usage = np.array([usage for usage, _, _, _ in found], np.uint8)
    return Faces(images, labels, usage)


# --- protocols ------------------------------------------------------------------------------------------

def split(faces, protocol="seed", validation_split=0.2, path="data"):
    """(train, validation, test) Faces for a protocol.

    seed:     the notebook. Training+PublicTest in file order, the LAST `validation_split` of it held out
              (what Keras's fit(validation_split=...) does, before shuffling); test is PrivateTest.
    standard: Training / PublicTest / PrivateTest as train / validation / test.
    """
    test = faces.select(faces.usage == PRIVATE_TEST)
    if len(test) == 0:
        raise UserError(f"{path}: no PrivateTest rows, so there is nothing to test on")
    if protocol == "seed":
        rest = faces.select(faces.usage != PRIVATE_TEST)
        split_at = int(np.floor(len(rest) * (1.0 - validation_split)))
        if split_at == 0 or split_at == len(rest):
            raise UserError(f"{path}: {len(rest)} training rows are too few for validation_split={validation_split}")
        keep = np.arange(len(rest)) < split_at
        return rest.select(keep), rest.select(~keep), test
    if protocol == "standard":
        train = faces.select(faces.usage == TRAINING)
        validation = faces.select(faces.usage == PUBLIC_TEST)
        if len(validation) == 0:
            raise UserError(f"{path}: no PublicTest rows, which the standard protocol validates on")
        if len(train) == 0:
            raise UserError(f"{path}: no Training rows")
        return train, validation, test
    raise ValueError(f"unknown protocol {protocol!r}")


def limit_rows(faces, limit):
    """The first `limit` rows of each Usage, in file order: a quick subset that keeps every split."""
    if limit is None:
        return faces
    keep = np.zeros(len(faces), bool)
    for code in range(len(USAGES)):
        keep[np.flatnonzero(faces.usage == code)[:limit]] = True
    return faces.select(keep)


def counts_table(faces):
    """Images per Usage (rows) x emotion (columns), with totals."""
    import pandas as pd

    table = pd.crosstab(pd.Categorical.from_codes(faces.usage, USAGES, validate=False),
                        pd.Categorical.from_codes(faces.labels, EMOTIONS, validate=False),
                        margins=True, margins_name="total", dropna=False)
    table.index.name, table.columns.name = "Usage", None
    return table


# --- synthetic faces ------------------------------------------------------------------------------------

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


def write_csv(path, faces):
    """Write Faces in the Kaggle format (emotion,pixels,Usage), to a temporary name first."""
    as_text = np.array([str(value) for value in range(256)])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path) as temporary, open(temporary, "w", newline="\n") as f:
        f.write(",".join(COLUMNS) + "\n")
        for image, label, usage in zip(faces.images, faces.labels, faces.usage):
            f.write(f"{label},{' '.join(as_text[image.ravel()])},{USAGES[usage]}\n")


# --- download -------------------------------------------------------------------------------------------

COMPETITION = "challenges-in-representation-learning-facial-expression-recognition-challenge"
FOLDER_RELEASE = "msambare/fer2013"  # the public image-folder release on Kaggle


def download(dest="data", source="auto"):
    """Put FER2013 at dest/fer2013.csv through kagglehub.

    source "competition": the competition's own fer2013.csv (needs Kaggle credentials, KAGGLE_USERNAME and
    KAGGLE_KEY or ~/.kaggle/kaggle.json, and the competition's rules accepted on its page). "folders", or any
    Kaggle dataset handle: the image-folder release, converted to the Kaggle CSV (its Usage blocks sorted by
    file name, having no row order of their own). "auto": the competition when credentials are set, else the
    folders. Nothing is downloaded when dest/fer2013.csv exists already.
    """
    target = os.path.join(dest, "fer2013.csv")
    if os.path.exists(target):
        print(f"{target} is there already; delete it to download again")
        return target
    try:
        import kagglehub
        from kagglehub.config import get_kaggle_credentials
    except ImportError:
        raise UserError("the download needs kagglehub: pip install kagglehub") from None
    if source == "auto":
        source = "competition" if get_kaggle_credentials() else "folders"
    handle = FOLDER_RELEASE if source == "folders" else source
    try:
        if source == "competition":
            found = _competition_csv(kagglehub.competition_download(COMPETITION), dest)
            os.makedirs(dest, exist_ok=True)
            with replaced_atomically(target) as temporary:
                shutil.copyfile(found, temporary)
        else:
            faces = read_folders(_release_root(kagglehub.dataset_download(handle)))
            write_csv(target, faces)
    except UserError:
        raise
    except Exception as error:  # kagglehub raises requests', its own and OS errors alike
        raise UserError(f"could not download {'the competition files' if source == 'competition' else handle}: "
                        f"{_download_problem(error)}; or download fer2013.csv by hand from {FER2013_URL} and put it "
                        f"at {target}") from None
    print(f"wrote {target} ({'the competition file' if source == 'competition' else handle + ', converted'})")
    return target


def _download_problem(error):
    import requests
    from kagglehub.exceptions import UnauthenticatedError

    if isinstance(error, requests.exceptions.ConnectionError):
        return "cannot reach Kaggle (offline?)"
    if isinstance(error, UnauthenticatedError):
        return ("Kaggle credentials are needed (KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json), "
                "with the competition's rules accepted on its page")
    text = " ".join(str(error).split()) or error.__class__.__name__
    return text[:300] + ("..." if len(text) > 300 else "")


def _competition_csv(path, dest):
    """fer2013.csv from the competition files: as it is, inside fer2013.tar.gz, or as icml_face_data.csv."""
    for folder, _, files in os.walk(path):
        if "fer2013.csv" in files:
            return os.path.join(folder, "fer2013.csv")
    for folder, _, files in os.walk(path):
        if "fer2013.tar.gz" in files:
            with tarfile.open(os.path.join(folder, "fer2013.tar.gz")) as archive:
                member = next((m for m in archive.getmembers() if m.name.endswith("fer2013.csv")), None)
                if member is not None:
                    os.makedirs(dest, exist_ok=True)
                    extracted = os.path.join(dest, "fer2013.extracting.csv")
                    with archive.extractfile(member) as source, open(extracted, "wb") as out:
                        shutil.copyfileobj(source, out)
                    return extracted
        if "icml_face_data.csv" in files:
            return os.path.join(folder, "icml_face_data.csv")
    raise UserError(f"{path}: the competition files hold no fer2013.csv")


def _release_root(path):
    for folder, subfolders, _ in os.walk(path):
        if "train" in subfolders and "test" in subfolders:
            return folder
    raise UserError(f"{path}: no train/ and test/ folders in the downloaded release")


# --- command line ---------------------------------------------------------------------------------------

@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="a fer2013.csv (.csv.gz) or image-folder release to count")
    parser.add_argument("--synthetic", metavar="OUT.csv", help="write a synthetic FER-format CSV")
    parser.add_argument("--rows", type=int, default=3000, help="rows of the synthetic CSV (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic CSV (default 0)")
    parser.add_argument("--download", action="store_true", help="fetch FER2013 into DEST/fer2013.csv (kagglehub)")
    parser.add_argument("--dest", default="data", help="--download's folder (default data/)")
    parser.add_argument("--source", default="auto",
                        help="--download from: auto, competition, folders, or a Kaggle dataset handle (default auto)")
    args = parser.parse_args(argv)
    if args.download:
        download(args.dest, args.source)
        return 0
    if args.synthetic:
        if args.rows <= 0:
            raise UserError(f"--rows must be positive, got {args.rows}")
        faces = make_synthetic(args.rows, args.seed)
        write_csv(args.synthetic, faces)
        print(f"wrote {args.synthetic}: {len(faces)} SYNTHETIC faces (not FER2013), seed {args.seed}")
        return 0
    if not args.path:
        parser.error("give a PATH to count, or --synthetic OUT.csv")
    faces = read_faces(args.path)
    import pandas as pd

    with pd.option_context("display.width", 200):
        print(counts_table(faces).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
