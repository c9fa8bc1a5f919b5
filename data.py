"""FER2013 data: the notebook's load_data, the parse cache, the image-folder release, the two split protocols.

    python data.py PATH [--preview faces.png]         # images per Usage x emotion [and sample faces of each]

Images are kept as uint8 (N, 48, 48) until a batch is formed; `load_data` alone returns the notebook's
float32 arrays. A synthetic FER-format CSV: synthetic.py; FER2013 from Kaggle: download.py.
"""
import argparse
import glob
import hashlib
import json
import os
import sys
import zipfile

import numpy as np

from common import UserError, exit_on_user_error, replaced_atomically
# data.EMOTIONS, data.Faces, data.write_csv...: what the other scripts use, from where it is defined.
from fer2013 import (EMOTIONS, FER2013_URL, IMAGE_SHAPE, PRIVATE_TEST, PUBLIC_TEST, SIZE, TRAINING,  # noqa: F401
                     USAGES, Faces, crop_shifts, one_hot, to_float, views)
from kaggle_csv import read_csv, write_csv  # noqa: F401

FOLDER_CLASSES = tuple(name.lower() for name in EMOTIONS)


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


def download_command(path):
    """The command that puts FER2013 at `path` (where path is .../fer2013.csv), or in data/."""
    folder = os.path.dirname(path) or "."
    return f"python download.py --dest {folder}" if os.path.basename(path) == "fer2013.csv" else "python download.py"


def read_faces(path, cache_dir="auto"):
    """Read a FER2013 CSV (.csv or .csv.gz) or an image-folder release into uint8 arrays.

    With a cache directory ("auto": the user's cache, $XDG_CACHE_HOME/fer2013-keras or ~/.cache/fer2013-keras;
    None: no cache), the parsed arrays are kept there and reused while the source is unchanged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder (`{download_command(path)}` fetches FER2013 from Kaggle)")
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
    retrain:  Training+PublicTest to train on, no validation, PrivateTest to test: the standard recipe's last run,
              once its choices are made, on every face but the test ones (so nothing is left to choose a
              checkpoint on).
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
    if protocol == "retrain":
        train = faces.select(faces.usage != PRIVATE_TEST)
        if len(train) == 0:
            raise UserError(f"{path}: no Training or PublicTest rows")
        return train, faces.select(np.zeros(len(faces), bool)), test
    raise ValueError(f"unknown protocol {protocol!r}")


def limit_rows(faces, limit):
    """The first `limit` rows of each Usage, in file order: a quick subset that keeps every split."""
    if limit is None:
        return faces
    keep = np.zeros(len(faces), bool)
    for code in range(len(USAGES)):
        keep[np.flatnonzero(faces.usage == code)[:limit]] = True
    return faces.select(keep)


def load_split(path, split, limit=None, cache_dir="auto"):
    """The faces of one Usage (after data.limit), as evaluate.py, ship.py and explain.py score them."""
    faces = limit_rows(read_faces(path, cache_dir), limit)
    selected = faces.select(faces.usage == USAGES.index(split))
    if len(selected) == 0:
        raise UserError(f"{path}: no {split} rows")
    return selected


def face_keys(images):
    """A 64-bit key per face, from its pixels alone (BLAKE2b): the same face has the same key in any copy of the
    data with the same pixels, whatever its row or Usage."""
    return np.frombuffer(b"".join(hashlib.blake2b(face.tobytes(), digest_size=8).digest() for face in images),
                         "<u8").copy()


def counts_table(faces):
    """Images per Usage (rows) x emotion (columns), with totals."""
    import pandas as pd

    table = pd.crosstab(pd.Categorical.from_codes(faces.usage, USAGES, validate=False),
                        pd.Categorical.from_codes(faces.labels, EMOTIONS, validate=False),
                        margins=True, margins_name="total", dropna=False)
    table.index.name, table.columns.name = "Usage", None
    return table


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a fer2013.csv (.csv.gz) or image-folder release to count")
    parser.add_argument("--preview", metavar="OUT.png", help="draw sample faces per emotion, with the counts")
    args = parser.parse_args(argv)
    faces = read_faces(args.path)
    import pandas as pd

    with pd.option_context("display.width", 200):
        print(counts_table(faces).to_string())
    if args.preview:
        os.makedirs(os.path.dirname(os.path.abspath(args.preview)), exist_ok=True)
        plot_preview(faces, args.preview)
        print(f"wrote {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
