"""FER2013 data: the notebook's load_data, the two split protocols, the image-folder release, synthetic faces.

    python data.py PATH [--preview faces.png]         # images per Usage x emotion [and sample faces of each]
    python data.py --synthetic OUT.csv --rows 3000    # a synthetic FER-format CSV (not FER2013!)
    python data.py --download [--dest data/]          # FER2013 from Kaggle into data/fer2013.csv

Images are kept as uint8 (N, 48, 48) until a batch is formed; `load_data` alone returns the notebook's
float32 arrays. Parsing is vectorized with numpy over blocks of rows, never a Python loop over pixels.
"""
import argparse
import glob
import gzip
import hashlib
import json
import mmap
import os
import re
import sys
import zipfile
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
SPACE, ZERO, NEWLINE, CARRIAGE_RETURN, COMMA = (np.uint8(ord(c)) for c in " 0\n\r,")
STRIPPED = b' \t\r"'  # around a field: spaces, tabs, the CR of CRLF, quotes
ROWS_PER_BLOCK = 256  # rows parsed per vectorized step: ~2 MB of text, so that its arrays stay in cache


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
    source = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    version = hashlib.sha256(json.dumps(source_fingerprint(path)).encode()).hexdigest()[:16]
    cache_file = os.path.join(directory, f"{source}-{version}.npz")
    faces = load_cache(cache_file)
    if faces is None:
        faces = read(path)
        save_cache(cache_file, faces, stale=glob.glob(os.path.join(glob.escape(directory), f"{source}-*.npz")))
    return faces


# --- the parse cache ------------------------------------------------------------------------------------
# A plain NumPy .npz file (images, labels, usage) named by the source's path and fingerprint, so that a changed
# source (size, mtime or sampled content) finds no cache and is parsed again. A damaged file (short, not a zip,
# a CRC-32 mismatch in any array, bytes after its end) is rebuilt, never trusted.

SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 16
ZIP_END = b"PK\x05\x06"  # the signature of a zip file's last 22 bytes (NumPy writes no zip comment)


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


def load_cache(cache_file):
    """The cached Faces if the file is there and whole, else None."""
    try:
        with open(cache_file, "rb") as f:
            f.seek(-len(ZIP_END) - 18, os.SEEK_END)
            if f.read(len(ZIP_END)) != ZIP_END:
                return None
        with np.load(cache_file) as arrays:
            faces = Faces(*(arrays[name] for name in Faces._fields))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    whole = (all(array.dtype == np.uint8 for array in faces) and faces.images.shape[1:] == (SIZE, SIZE)
             and len(faces.images) == len(faces.labels) == len(faces.usage))
    return faces if whole else None


def save_cache(cache_file, faces, stale=()):
    """Write the cache to a temporary name, then rename, and remove the source's older caches; a cache that
    cannot be written is only skipped."""
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        with replaced_atomically(cache_file) as temporary:
            np.savez(temporary, **faces._asdict())
        for old in stale:
            if old != cache_file:
                os.remove(old)
    except OSError as error:
        print(f"note: could not write the data cache {cache_file}: {error.strerror}", file=sys.stderr)


# --- the Kaggle CSV -------------------------------------------------------------------------------------

def _read_bytes(path):
    """The file's bytes: mapped, not copied into memory (the parse goes faster), or decompressed if it is gzip."""
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                f.seek(0)
                return gzip.decompress(f.read())
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as error:
        raise UserError(f"{path}: cannot be read: {error}") from None


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

    Handles CRLF, stray spaces and quotes around fields, blank lines, gzip. Any bad row raises a UserError
    that names the file, the line number and what is wrong. A file in the plain layout (Kaggle's) is parsed in
    chunks of rows on all cores with numpy alone; any other goes line by line through the tolerant reader.
    """
    raw = _read_bytes(path)
    if not re.search(rb"\S", raw):
        raise UserError(f"{path}: the file is empty")
    columns, n_columns, pos = _parse_header(path, raw)
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        faces = _read_plain_rows(raw, pos, columns, n_columns, pool)
        if faces is None:
            faces = _read_any_rows(path, raw, pos, columns, n_columns, pool, workers)
    return faces


def _read_plain_rows(raw, pos, columns, n_columns, pool):
    """All rows, if every one is in the plain layout (no quotes, spaces or blank lines; LF or CRLF), else None."""
    first_line = raw.find(b"\n", pos)
    chunk_bytes = ROWS_PER_BLOCK * ((len(raw) if first_line < 0 else first_line) - pos + 1)
    bounds = [pos]
    while bounds[-1] < len(raw):
        cut = raw.find(b"\n", bounds[-1] + chunk_bytes)
        bounds.append(len(raw) if cut < 0 else cut + 1)
    parts = list(pool.map(lambda span: _parse_plain_chunk(raw, *span, columns, n_columns), zip(bounds, bounds[1:])))
    if not parts or any(part is None for part in parts):
        return None
    return Faces(*(np.concatenate(arrays) for arrays in zip(*parts)))


def _parse_plain_chunk(raw, start, stop, columns, n_columns):
    """(images, labels, usage) of the whole lines in raw[start:stop], or None if any is not plain."""
    text = np.frombuffer(raw, np.uint8, stop - start, start)
    line_ends = np.flatnonzero(text == NEWLINE)
    if text[-1] != NEWLINE:
        line_ends = np.append(line_ends, len(text))
    line_starts = np.concatenate(([0], line_ends[:-1] + 1))
    if np.any(line_ends == line_starts):
        return None
    ends = line_ends - (text[line_ends - 1] == CARRIAGE_RETURN)
    commas = np.flatnonzero(text == COMMA)
    if len(commas) != len(line_starts) * (n_columns - 1):
        return None
    commas = commas.reshape(len(line_starts), n_columns - 1)
    if np.any(commas[:, 0] < line_starts) or np.any(commas[:, -1] >= ends):
        return None  # some line has more commas than the header, another fewer
    field_starts = np.column_stack([line_starts, commas + 1])
    field_stops = np.column_stack([commas, ends])
    (emotion_starts, pixel_starts, usage_starts) = (field_starts[:, at] for at in columns)
    (emotion_stops, pixel_stops, usage_stops) = (field_stops[:, at] for at in columns)
    if np.any(emotion_stops - emotion_starts != 1) or np.any(pixel_stops <= pixel_starts):
        return None
    labels = text[emotion_starts] - ZERO
    if np.any(labels > 6):
        return None
    usage = np.full(len(line_starts), len(USAGES), np.uint8)
    for code, name in enumerate(USAGES):
        name = np.frombuffer(name.encode(), np.uint8)
        rows = np.flatnonzero(usage_stops - usage_starts == len(name))
        matches = np.all(text[usage_starts[rows, None] + np.arange(len(name))] == name, axis=1)
        usage[rows[matches]] = code
    if np.any(usage == len(USAGES)):
        return None
    if np.any(text[pixel_starts] - ZERO > 9) or np.any(text[pixel_stops - 1] - ZERO > 9):
        return None
    view = memoryview(raw)[start:stop]
    images = _parse_pixels_fast([view[a:b] for a, b in zip(pixel_starts.tolist(), pixel_stops.tolist())])
    return None if images is None else (images, labels, usage)


def _read_any_rows(path, raw, pos, columns, n_columns, pool, workers):
    """The tolerant reader: one line at a time, naming the line of any fault; pixels parsed on the pool."""
    emotion_at, pixels_at, usage_at = columns
    usage_codes = {name.encode(): code for code, name in enumerate(USAGES)}
    labels, usage, blocks = [], [], []
    pending, pending_lines = [], []
    line_no = 1
    view = memoryview(raw)  # pixel fields go to the workers as views: the 300 MB is not copied line by line
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            end = len(raw)
        spans = _field_spans(raw, pos, end, n_columns)
        line_start, pos = pos, end + 1
        line_no += 1
        if spans is None:
            fields = raw[line_start:end].split(b",")
            if len(fields) == 1 and not fields[0].strip():
                continue
            raise UserError(f"{path}, line {line_no}: {len(fields)} fields, expected {n_columns} "
                            f"({','.join(COLUMNS)})")
        emotion = raw[slice(*spans[emotion_at])].strip(STRIPPED)
        if not emotion.isdigit() or int(emotion) > 6:
            raise UserError(f"{path}, line {line_no}: emotion {emotion.decode(errors='replace')!r} "
                            f"is not a label 0..6")
        usage_field = raw[slice(*spans[usage_at])]
        code = usage_codes.get(usage_field.strip(STRIPPED))
        if code is None:
            raise UserError(f"{path}, line {line_no}: unknown Usage "
                            f"{usage_field.strip().decode(errors='replace')!r} "
                            f"(expected {', '.join(USAGES)})")
        labels.append(int(emotion))
        usage.append(code)
        start, stop = spans[pixels_at]
        while start < stop and raw[start] in STRIPPED:
            start += 1
        while stop > start and raw[stop - 1] in STRIPPED:
            stop -= 1
        pixels = view[start:stop]
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


def _field_spans(raw, start, end, n_columns):
    """(start, stop) of each comma-separated field of raw[start:end], or None if it has another number of fields."""
    spans = []
    for _ in range(n_columns - 1):
        comma = raw.find(b",", start, end)
        if comma < 0:
            return None
        spans.append((start, comma))
        start = comma + 1
    if raw.find(b",", start, end) >= 0:
        return None
    spans.append((start, end))
    return spans


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
    tokens = bytes(field).split()
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

    This release has no file order: each Usage block is sorted by file name, so the notebook protocol's last-20%
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

def split(faces, protocol="notebook", validation_split=0.2, path="data"):
    """(train, validation, test) Faces for a protocol.

    notebook: the notebook's split. Training+PublicTest in file order, the LAST `validation_split` of it held out
              (what Keras's fit(validation_split=...) does, before shuffling); test is PrivateTest.
    standard: Training / PublicTest / PrivateTest as train / validation / test.
    """
    test = faces.select(faces.usage == PRIVATE_TEST)
    if len(test) == 0:
        raise UserError(f"{path}: no PrivateTest rows, so there is nothing to test on")
    if protocol == "notebook":
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


def write_csv(path, faces):
    """Write Faces in the Kaggle format (emotion,pixels,Usage), to a temporary name first."""
    as_text = np.array([str(value) for value in range(256)])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path) as temporary, open(temporary, "w", newline="\n") as f:
        f.write(",".join(COLUMNS) + "\n")
        for image, label, usage in zip(faces.images, faces.labels, faces.usage):
            f.write(f"{label},{' '.join(as_text[image.ravel()])},{USAGES[usage]}\n")


def plot_preview(faces, path, per_class=8, seed=0):
    """A grid of `per_class` faces of each emotion (rows), drawn at random, each row titled with its count."""
    from common import pyplot, save_figure

    rng = np.random.default_rng(seed)
    figure, axes = pyplot().subplots(len(EMOTIONS), per_class, figsize=(per_class * 1.1, len(EMOTIONS) * 1.25))
    for label, row in enumerate(axes):
        members = np.flatnonzero(faces.labels == label)
        chosen = rng.choice(members, min(per_class, len(members)), replace=False) if len(members) else []
        for column, ax in enumerate(row):
            ax.axis("off")
            if column < len(chosen):
                ax.imshow(faces.images[chosen[column]], cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"{EMOTIONS[label]}: {len(members):,} faces", loc="left", fontsize=9)
    figure.suptitle(f"{len(faces):,} faces, {per_class} drawn at random per emotion", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


# --- command line ---------------------------------------------------------------------------------------

@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="a fer2013.csv (.csv.gz) or image-folder release to count")
    parser.add_argument("--preview", metavar="OUT.png", help="with PATH: draw sample faces per emotion, with the counts")
    parser.add_argument("--synthetic", metavar="OUT.csv", help="write a synthetic FER-format CSV")
    parser.add_argument("--rows", type=int, default=3000, help="rows of the synthetic CSV (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic CSV (default 0)")
    parser.add_argument("--download", action="store_true", help="fetch FER2013 into DEST/fer2013.csv (kagglehub)")
    parser.add_argument("--dest", default="data", help="--download's folder (default data/)")
    parser.add_argument("--source", default="auto",
                        help="--download from: auto, competition, folders, or a Kaggle dataset handle (default auto)")
    args = parser.parse_args(argv)
    if args.download:
        import download

        download.download(args.dest, args.source)
        return 0
    if args.synthetic:
        if args.rows <= 0:
            raise UserError(f"--rows must be positive, got {args.rows}")
        import synthetic

        faces = synthetic.make_synthetic(args.rows, args.seed)
        write_csv(args.synthetic, faces)
        print(f"wrote {args.synthetic}: {len(faces)} SYNTHETIC faces (not FER2013), seed {args.seed}")
        return 0
    if not args.path:
        parser.error("give a PATH to count, or --synthetic OUT.csv")
    faces = read_faces(args.path)
    import pandas as pd

    with pd.option_context("display.width", 200):
        print(counts_table(faces).to_string())
    if args.preview:
        plot_preview(faces, args.preview)
        print(f"wrote {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
