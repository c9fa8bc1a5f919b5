"""Faces in an image, as predict.py and app.py find them: a photo read upright, OpenCV's frontal-face Haar cascade
(the one inside the opencv package) with the config's predict settings, and the 48x48 crop of each face that the
model sees (cv2.resize of the box, / 255 as in training; the 2018 notebook's live demo used np.resize on the raw
array instead, which repeats or truncates pixels and swaps width and height).
"""
import os

import numpy as np

import data
from common import UserError

HEIC_EXTENSIONS = {".heic", ".heif"}  # an iPhone's photos: OpenCV cannot read them, Pillow with pillow-heif can


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("predict.py and app.py need OpenCV: pip install 'opencv-python-headless<5' (or "
                        "opencv-python for the --webcam window)") from None
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its warnings said what our error lines say
    return cv2


class FaceFinder:
    """OpenCV's frontal-face Haar cascade with the config's predict settings."""

    def __init__(self, options):
        cv2 = import_cv2()
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise UserError(f"OpenCV could not load its face detector {path}")
        self.options = options

    def __call__(self, gray, width=None, sizes=None):
        """[(x, y, w, h)] of the faces in a grayscale image, left to right. With `width`, the search runs on the
        image scaled down to that width (faster: the search's work grows with the pixels), boxes given in the
        image's own pixels; faces smaller than the cascade's 24-pixel window at that scale are not found.
        `sizes`: (smallest, largest) face to look for, in the image's pixels, instead of predict.min_size and up."""
        scale = min(1.0, width / gray.shape[1]) if width else 1.0
        if scale < 1:
            cv2 = import_cv2()
            gray = cv2.resize(gray, (width, max(1, round(gray.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        smallest, largest = sizes or (self.options["min_size"], 0)
        min_size, max_size = max(1, round(smallest * scale)), round(largest * scale)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=self.options["scale_factor"],
                                              minNeighbors=self.options["min_neighbors"], minSize=(min_size, min_size),
                                              maxSize=(max_size, max_size))
        return sorted((tuple(int(round(v / scale)) for v in box) for box in boxes), key=lambda box: box[0])


class LiveFinder:
    """Faces in a live camera's frames: a full search every `every` frames, and in between a search around each
    face of the frame before only (boxes from 0.7 to 1.4 times its size), which costs a small part of a full
    search; a frame in which a face is not found again gets a full search. A face that comes into view is found
    at the next full search."""

    def __init__(self, finder, width, every=10):
        self.finder, self.width, self.every = finder, width, every
        self.boxes, self.frames = [], 0

    def __call__(self, gray):
        near = self.frames % self.every and self.boxes and [self.near(gray, box) for box in self.boxes]
        self.frames += 1
        if near and all(near):
            self.boxes = [found[0] for found in near]
        else:
            self.boxes = self.finder(gray, self.width)
        return self.boxes

    def near(self, gray, box):
        x, y, w, h = box
        left, top = max(0, x - w // 2), max(0, y - h // 2)
        region = gray[top:y + h + h // 2, left:x + w + w // 2]
        found = self.finder(region, None, sizes=(int(w * 0.7), int(w * 1.4)))
        return [(bx + left, by + top, bw, bh) for bx, by, bw, bh in found]


def crop_face(gray, box, margin=0.0):
    """The 48x48 face the model sees: the box widened by `margin` of its size on each side (clipped to the
    image), resized with cv2.resize. Rows are y and columns x: gray[y:y+h, x:x+w]."""
    cv2 = import_cv2()
    x, y, w, h = box
    dx, dy = int(round(w * margin)), int(round(h * margin))
    top, bottom = max(0, y - dy), min(gray.shape[0], y + h + dy)
    left, right = max(0, x - dx), min(gray.shape[1], x + w + dx)
    return cv2.resize(gray[top:bottom, left:right], (data.SIZE, data.SIZE), interpolation=cv2.INTER_AREA)


def to_gray(image):
    cv2 = import_cv2()
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def read_heic():
    """Let Pillow open HEIC and HEIF files (pillow-heif, in requirements.txt); False where it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def read_with_pillow(path):
    """What OpenCV cannot read and Pillow can (an iPhone's HEIC; a GIF's first frame where OpenCV has no GIF reader,
    as before 4.11; PCX, ICO...), upright, as a BGR or grayscale uint8 array; None if Pillow cannot read it either."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    read_heic()  # by its content, whatever the file's name
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            gray = image.mode in ("1", "L", "LA")  # a palette (GIF) or any other mode: colour
            return np.asarray(image.convert("L")) if gray else np.asarray(image.convert("RGB"))[:, :, ::-1].copy()
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def read_image(path):
    """A photo as a uint8 BGR (or grayscale) array, turned upright as its EXIF orientation says (a phone's portrait
    photo is stored on its side); OSError for a file that is not an image."""
    cv2 = import_cv2()
    # Not IMREAD_UNCHANGED, which ignores the EXIF orientation; an alpha channel is dropped.
    image = cv2.imread(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        image = read_with_pillow(path)
    if image is None:
        if os.path.splitext(path)[1].lower() not in HEIC_EXTENSIONS:
            raise OSError("not a readable image")
        raise OSError("not a readable HEIC image" if read_heic() else
                      "HEIC, which OpenCV cannot read: pip install pillow-heif, or convert it to JPEG")
    if image.dtype != np.uint8:  # 16-bit PNG or TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    return image
