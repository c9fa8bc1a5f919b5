"""Emotions of the faces in photos, folders of photos, videos, or a webcam.

    python predict.py --checkpoint runs/<run>/best.keras photo.jpg more/ clip.mp4 [--out predictions/]
    python predict.py --checkpoint runs/<run>/best.keras --no-detect faces48/     # already-cropped faces
    python predict.py --checkpoint runs/<run>/best.keras --webcam [0]             # live window, q quits

Faces are found with OpenCV's Haar cascade (the one inside the opencv package), each box widened by
predict.margin, cut from the grayscale image and resized to 48x48 with cv2.resize, then / 255 as in training:
the 2018 notebook's live demo used np.resize on the raw array instead, which repeats or truncates pixels and
swaps width and height. Writes an annotated copy of each image and video (a box, the top emotion and its
probability per face) and predictions.jsonl (one line per face: source, frame for videos, box, the seven
probabilities, top emotion). Exit status 1 when some input could not be read, 2 for a bad checkpoint or option.
"""
import argparse
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import data
from common import UserError, exit_on_user_error, replaced_atomically, shipped_model, signal_at, start_backend
from config import config_beside

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
BOX_COLOUR = (0, 200, 255)  # BGR


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("predict.py needs OpenCV: pip install 'opencv-python-headless<5' (or opencv-python for "
                        "the --webcam window)") from None
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
    if image.ndim == 2:
        return image
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


class Predictor:
    """Faces of one frame -> probabilities, annotations and records. `probabilities` maps uint8 faces
    (n, 48, 48) to (n, 7)."""

    def __init__(self, probabilities, finder, margin, detect=True):
        self.probabilities, self.finder, self.margin, self.detect = probabilities, finder, margin, detect

    def frame(self, image, video=False):
        """(boxes, probabilities (n, 7)) for one BGR or grayscale frame; with detect off the whole frame is one face."""
        gray, boxes = self.find(image, video)
        return boxes, self.score(gray, boxes)

    def find(self, image, video=False):
        """(the frame in grayscale, its face boxes). Video and webcam frames are searched at
        predict.video_detect_width, to keep up with a camera."""
        gray = to_gray(image)
        if not self.detect:
            return gray, [(0, 0, gray.shape[1], gray.shape[0])]
        return gray, self.finder(gray, self.finder.options["video_detect_width"] if video else None)

    def live(self):
        """A function frame -> (its grayscale, its face boxes) for one live camera's frames in turn (LiveFinder)."""
        if not self.detect:
            return lambda image: self.find(image)
        finder = LiveFinder(self.finder, self.finder.options["video_detect_width"])
        return lambda image: (gray := to_gray(image), finder(gray))

    def score(self, gray, boxes):
        """The probabilities (n, 7) of the faces in `boxes`."""
        if not boxes:
            return np.zeros((0, len(data.EMOTIONS)), np.float32)
        margin = self.margin if self.detect else 0.0
        faces = np.stack([crop_face(gray, box, margin) for box in boxes])
        return self.probabilities(faces)

    @staticmethod
    def annotate(image, boxes, probabilities):
        cv2 = import_cv2()
        annotated = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        scale = max(0.4, min(annotated.shape[:2]) / 600)
        for (x, y, w, h), row in zip(boxes, probabilities):
            top = int(row.argmax())
            cv2.rectangle(annotated, (x, y), (x + w, y + h), BOX_COLOUR, max(1, int(2 * scale)))
            label = f"{data.EMOTIONS[top]} {row[top]:.2f}"
            cv2.putText(annotated, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, BOX_COLOUR,
                        max(1, int(2 * scale)), cv2.LINE_AA)
        return annotated

    @staticmethod
    def records(source, boxes, probabilities, frame=None):
        for box, row in zip(boxes, probabilities):
            top = int(row.argmax())
            record = {"source": source}
            if frame is not None:
                record["frame"] = frame
            record.update(box=[int(v) for v in box],
                          probabilities={name: round(float(p), 6) for name, p in zip(data.EMOTIONS, row)},
                          emotion=data.EMOTIONS[top], probability=round(float(row[top]), 6))
            yield record


def expand_inputs(inputs):
    """Files in the order given; a folder gives its images and videos, sorted, recursively."""
    for item in inputs:
        if os.path.isdir(item):
            for folder, subfolders, files in os.walk(item):
                subfolders.sort()
                for name in sorted(files):
                    if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
                        yield os.path.join(folder, name)
        else:
            yield item


def output_name(path, used, extension=None):
    stem, original = os.path.splitext(os.path.basename(path))
    name = stem + (extension or original)
    n = 1
    while name in used:
        n += 1
        name = f"{stem}-{n}{extension or original}"
    used.add(name)
    return name


def read_image(path):
    """A photo as a uint8 BGR (or grayscale) array; OSError for a file that is not an image."""
    cv2 = import_cv2()
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError("not a readable image")
    if image.dtype != np.uint8:  # 16-bit PNG or TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def describe(boxes, probabilities, detect=True):
    """One line for a photo: "2 faces: Happy (0.91), Sad (0.40)", "0 faces"; without detection, the top emotion."""
    tops = [f"{data.EMOTIONS[int(row.argmax())]} ({row.max():.2f})" for row in probabilities]
    if detect:
        return f"{len(boxes)} face{'s' if len(boxes) != 1 else ''}" + (f": {', '.join(tops)}" if tops else "")
    return tops[0]


def predict_image(predictor, path, out_dir, used, write):
    cv2 = import_cv2()
    image = read_image(path)
    boxes, probabilities = predictor.frame(image)
    for record in predictor.records(path, boxes, probabilities):
        write(record)
    annotated = predictor.annotate(image, boxes, probabilities)
    # OpenCV answers False where it cannot write: a format it has no encoder for (then PNG), a full disk.
    if not (cv2.imwrite(os.path.join(out_dir, output_name(path, used)), annotated)
            or cv2.imwrite(os.path.join(out_dir, output_name(path, used, ".png")), annotated)):
        raise OSError(f"its annotated copy could not be written in {out_dir}")
    return describe(boxes, probabilities, predictor.detect)


def frames_found_ahead(capture, predictor):
    """(frame, its grayscale, its face boxes) for each frame of a capture, read and searched one frame ahead on a
    thread of its own: OpenCV's decoding and face search run while the network scores the frame before (both
    release the GIL). 1.06-1.09x the frames per second on 2 AVX2 cores, where each stage already keeps both
    cores busy; more where the network is fast and detection is most of the time."""
    def next_frame():
        ok, image = capture.read()
        return (image, *predictor.find(image, video=True)) if ok else None

    with ThreadPoolExecutor(max_workers=1) as reader:
        ahead = reader.submit(next_frame)
        while (found := ahead.result()) is not None:
            ahead = reader.submit(next_frame)
            yield found


def predict_video(predictor, path, out_dir, used, write):
    cv2 = import_cv2()
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise OSError("not a readable video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, frames, with_faces, emotions = None, 0, 0, Counter()
    try:
        for image, gray, boxes in frames_found_ahead(capture, predictor):
            probabilities = predictor.score(gray, boxes)
            for record in predictor.records(path, boxes, probabilities, frame=frames):
                write(record)
                emotions[record["emotion"]] += 1
            with_faces += bool(boxes)
            if writer is None:
                name = output_name(path, used, ".mp4")
                writer = cv2.VideoWriter(os.path.join(out_dir, name), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (image.shape[1], image.shape[0]))
                if not writer.isOpened():
                    raise OSError(f"its annotated copy could not be written in {out_dir}")
            writer.write(predictor.annotate(image, boxes, probabilities))
            frames += 1
            if sys.stdout.isatty() and total:
                print(f"\r{path}: frame {frames} of {total}", end="", flush=True)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if sys.stdout.isatty() and total:
            print("\r", end="")
    if frames == 0:
        raise OSError("no frames could be read")
    common = ", ".join(f"{name} {count}" for name, count in emotions.most_common(3))
    return f"{frames} frames, faces in {with_faces}" + (f" (most seen: {common})" if common else "")


def predict_files(predictor, files, out_dir):
    """Each file's faces found and scored, its annotated copy written, and its records added to predictions.jsonl
    once it is done (an input that fails or is interrupted adds none); returns the exit status."""
    # Names in out_dir that are inputs (or links to them) are not written over (predict.py photo.jpg --out .).
    inputs, failed = {os.path.realpath(path) for path in files}, 0
    used = {name for name in os.listdir(out_dir) if os.path.realpath(os.path.join(out_dir, name)) in inputs}
    with replaced_atomically(os.path.join(out_dir, "predictions.jsonl")) as temporary, \
            open(temporary, "w", encoding="utf-8") as jsonl:
        for number, path in enumerate(files, start=1):
            records = []
            try:
                signal_at(f"input {number}")
                video = os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS
                summary = (predict_video if video else predict_image)(predictor, path, out_dir, used, records.append)
            except (OSError, ValueError) as error:
                failed += 1
                print(f"error: {path}: {error}", file=sys.stderr)
                continue
            except KeyboardInterrupt:  # Ctrl-C: predictions.jsonl keeps the inputs done before this one
                print(f"\ninterrupted at input {number}: {number - 1 - failed} of {len(files)} inputs done; "
                      f"annotated copies and predictions.jsonl in {out_dir}", file=sys.stderr)
                return 130
            jsonl.writelines(json.dumps(record) + "\n" for record in records)
            print(f"[{number}/{len(files)}] {path}: {summary}")
    print(f"{len(files) - failed} of {len(files)} inputs done; annotated copies and predictions.jsonl in {out_dir}")
    return 1 if failed else 0


def run_webcam(predictor, camera):
    cv2 = import_cv2()
    capture = cv2.VideoCapture(camera)
    if not capture.isOpened():
        raise UserError(f"cannot open camera {camera}")
    try:
        cv2.namedWindow("fer2013-keras (q quits)")
    except cv2.error:
        capture.release()
        raise UserError("no window can be opened: --webcam needs a display and the full OpenCV "
                        "(pip install 'opencv-python<5' in place of opencv-python-headless)") from None
    find = predictor.live()
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                raise UserError(f"camera {camera} stopped giving frames")
            gray, boxes = find(image)
            probabilities = predictor.score(gray, boxes)
            cv2.imshow("fer2013-keras (q quits)", predictor.annotate(image, boxes, probabilities))
            if cv2.waitKey(1) & 0xFF == ord("q"):
                break
    finally:
        capture.release()
        cv2.destroyAllWindows()


def load_probabilities(checkpoint, weights=None, tta="none"):
    """faces -> probabilities for a checkpoint, with predict.tta's test-time augmentation (as evaluate.py --tta):
    an .onnx file runs on onnxruntime alone (no TensorFlow or Keras is imported), anything else through Keras."""
    if checkpoint.endswith(".onnx"):
        from export import OnnxModel

        if tta == "tencrop":
            raise UserError("predict.tta tencrop needs a Keras checkpoint: an .onnx file does not say where its "
                            "model crops (flip works)")
        onnx = OnnxModel(checkpoint)

        def probabilities(faces):
            plain = onnx.predict(data.to_float(faces))
            return plain if tta == "none" else (plain + onnx.predict(data.to_float(faces[:, :, ::-1]))) / 2
        return probabilities
    start_backend()
    from checkpoints import load_checkpoint
    from evaluate import crop_shifts, predict_probabilities

    model = load_checkpoint(checkpoint, weights)
    if tta == "tencrop":
        crop_shifts(model)  # a model without its own crop is refused now, not at its first face
    return lambda faces: predict_probabilities(model, faces, tta=None if tta == "none" else tta)


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="image files, folders of images, video files")
    parser.add_argument("--checkpoint", help="a .keras file, an .onnx export, a Keras 2 .h5/.hdf5/.hd5 model, or a "
                                             "model.json (with --weights); default: the model shipped in models/")
    parser.add_argument("--weights", help="weights for a model.json (default: the .h5 beside it)")
    parser.add_argument("--out", default="predictions", help="folder for annotated copies and predictions.jsonl")
    parser.add_argument("--no-detect", action="store_true", help="each input is one already-cropped face")
    parser.add_argument("--webcam", nargs="?", const=0, type=int, metavar="N", help="live window from camera N")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="e.g. --set predict.min_neighbors=3 --set predict.margin=0.2")
    args = parser.parse_args(argv)
    if not args.inputs and args.webcam is None:
        raise UserError("give images, folders or videos to predict on, or --webcam")
    if args.checkpoint is None:
        args.checkpoint = shipped_model()
        print(f"using the shipped model {args.checkpoint} (no --checkpoint given)")
    settings = config_beside(args.checkpoint, args.set)["predict"]
    predictor = Predictor(load_probabilities(args.checkpoint, args.weights, settings["tta"]), FaceFinder(settings),
                          settings["margin"], detect=not args.no_detect)
    if args.webcam is not None:
        run_webcam(predictor, args.webcam)
        return 0
    files = list(expand_inputs(args.inputs))
    if not files:
        raise UserError(f"no images or videos in {', '.join(args.inputs)}")
    os.makedirs(args.out, exist_ok=True)
    return predict_files(predictor, files, args.out)


if __name__ == "__main__":
    sys.exit(main())
