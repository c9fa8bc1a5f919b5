"""What FER2013 is, as arrays: 48x48 grayscale faces, 7 emotions, 3 Usage blocks."""
import hashlib
from typing import NamedTuple

import numpy as np

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
USAGES = ("Training", "PublicTest", "PrivateTest")
TRAINING, PUBLIC_TEST, PRIVATE_TEST = range(3)
SIZE = 48
PIXELS = SIZE * SIZE
IMAGE_SHAPE = (SIZE, SIZE, 1)
FER2013_URL = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data"


class Faces(NamedTuple):
    """A FER2013-shaped dataset: images uint8 (N, 48, 48), labels uint8 (N,) in 0..6, usage uint8 (N,) in 0..2."""
    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray

    def select(self, mask):
        return Faces(self.images[mask], self.labels[mask], self.usage[mask])

    def __len__(self):
        return len(self.labels)


def digest(splits):
    """sha256 of (train, validation, test) Faces: their faces and labels, in order. A run records it, and --resume
    refuses other data, which would change what each epoch's batches and the held-out faces are."""
    hash = hashlib.sha256()
    for faces in splits:
        for array in (faces.images, faces.labels):
            hash.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
        hash.update(b"|")
    return hash.hexdigest()


def to_float(images):
    """uint8 (N, 48, 48) -> float32 (N, 48, 48, 1) in [0, 1], as the notebook fed its model (pixels / 255.0)."""
    return images[..., None].astype(np.float32) / np.float32(255)


def one_hot(labels, classes=len(EMOTIONS)):
    return np.eye(classes, dtype=np.float32)[labels]


def crop_shifts(crop):
    """The five shifts of a 48x48 face after which a network's own centre crop of crop x crop pixels (what
    train.augment.crop puts in it) sees the centre and the four corner crops: ten crops, each also mirrored. The
    pixels a shift wraps around land outside the crop."""
    margin = (SIZE - crop) // 2
    return [(0, 0), (margin, margin), (margin, -margin), (-margin, margin), (-margin, -margin)]


def views(images, shifts=((0, 0),), flip=True):
    """What test-time augmentation averages the probabilities of: uint8 faces (N, 48, 48) after each of `shifts`
    (crop_shifts, for ten crops), and with `flip` each of those mirrored too."""
    shifted = [images if shift == (0, 0) else np.roll(images, shift, axis=(1, 2)) for shift in shifts]
    return shifted + ([view[:, :, ::-1] for view in shifted] if flip else [])
