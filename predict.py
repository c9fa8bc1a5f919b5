"""Emotions of the faces in photos, folders of photos, videos, or a webcam.

    python predict.py --checkpoint runs/<run>/best.keras photo.jpg more/ clip.mp4 [--out predictions/]
    python predict.py --checkpoint runs/<run>/best.keras --no-detect faces48/     # already-cropped faces
    python predict.py --checkpoint runs/<run>/best.keras --webcam [0]             # live window; q or closing it quits

Faces are found and cropped as detect.py says, each box widened by predict.margin. Writes an annotated copy of each
image and video (a box, the top emotion and its probability per face) and predictions.jsonl (one line per face:
source, frame for videos, box, the seven probabilities, top emotion). Exit status 1 when some input could not be
read, 2 for a bad checkpoint or option.
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
from detect import HEIC_EXTENSIONS, FaceFinder, LiveFinder, crop_face, import_cv2, read_image, to_gray

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".gif",
                    *HEIC_EXTENSIONS}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
BOX_COLOUR = (0, 200, 255)  # BGR
WINDOW = "fer2013-keras (q quits)"  # the --webcam window


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
        """(the frame in grayscale, its face boxes). Photos are searched scaled down to predict.photo_detect_width,
        video and webcam frames to predict.video_detect_width, to keep up with a camera."""
        gray = to_gray(image)
        if not self.detect:
            return gray, [(0, 0, gray.shape[1], gray.shape[0])]
        return gray, self.finder(gray, self.finder.options["video_detect_width" if video else "photo_detect_width"])

    def live(self):
        """A function frame -> (its grayscale, its face boxes) for one live camera's frames in turn (LiveFinder)."""
        if not self.detect:
            return lambda image: self.find(image)
        finder = LiveFinder(self.finder, self.finder.options["video_detect_width"])
        return lambda image: (gray := to_gray(image), finder(gray))

    def crops(self, gray, boxes):
        """The 48x48 faces (n, 48, 48) the model sees for `boxes`, each widened by predict.margin (detect.crop_face)."""
        margin = self.margin if self.detect else 0.0
        return np.stack([crop_face(gray, box, margin) for box in boxes])

    def score(self, gray, boxes):
        """The probabilities (n, 7) of the faces in `boxes`."""
        if not boxes:
            return np.zeros((0, len(data.EMOTIONS)), np.float32)
        return self.probabilities(self.crops(gray, boxes))

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


def check_inputs(inputs):
    """A UserError for inputs that are not there (a typo, a web address), before any model loads."""
    if missing := [item for item in inputs if not os.path.exists(item)]:
        url = any("://" in item for item in missing)
        raise UserError(f"no such file or folder: {', '.join(missing)}" + (" (download it first)" if url else ""))


def output_name(path, used, extension=None):
    stem, original = os.path.splitext(os.path.basename(path))
    name, n = stem + (extension or original), 1
    while name in used:
        n += 1
        name = f"{stem}-{n}{extension or original}"
    used.add(name)
    return name


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
    # In the photo's own format where OpenCV writes it, else (HEIC, PCX...) as PNG; False: a full disk, a folder.
    extension = None if cv2.haveImageWriter(path) else ".png"
    if not cv2.imwrite(os.path.join(out_dir, output_name(path, used, extension)), annotated):
        raise OSError(f"its annotated copy could not be written in {out_dir}")
    return describe(boxes, probabilities, predictor.detect)


def frames_found_ahead(capture, predictor):
    """(frame, its grayscale, its face boxes) for each frame of a capture, read and searched one frame ahead on a
    thread of its own: OpenCV's decoding and face search run while the network scores the frame before (both
    release the GIL)."""
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


def window_closed(cv2, name):
    """Whether the window was closed with its own button: imshow would open it again."""
    try:
        return cv2.getWindowProperty(name, cv2.WND_PROP_VISIBLE) < 1
    except cv2.error:  # OpenCV's Qt builds raise once the window is gone
        return True


def run_webcam(predictor, camera):
    cv2 = import_cv2()
    capture = cv2.VideoCapture(camera)
    if not capture.isOpened():
        raise UserError(f"cannot open camera {camera}")
    try:
        cv2.namedWindow(WINDOW)
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
            cv2.imshow(WINDOW, predictor.annotate(image, boxes, probabilities))
            if cv2.waitKey(1) & 0xFF == ord("q") or window_closed(cv2, WINDOW):
                break
    finally:
        capture.release()
        cv2.destroyAllWindows()


def load_probabilities(checkpoint, weights=None, tta="none"):
    """faces -> probabilities for a checkpoint, with predict.tta's test-time augmentation (as evaluate.py --tta):
    an .onnx file runs on onnxruntime alone (no TensorFlow or Keras is imported), anything else through Keras."""
    if checkpoint.endswith(".onnx"):
        from export import OnnxModel

        onnx = OnnxModel(checkpoint)
        shifts = onnx.crop_shifts("predict.tta tencrop") if tta == "tencrop" else [(0, 0)]

        def probabilities(faces):  # the views evaluate.predict_probabilities averages
            return np.mean([onnx.predict(data.to_float(view)) for view in data.views(faces, shifts, tta != "none")],
                           axis=0)
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
    check_inputs(args.inputs)
    files = list(expand_inputs(args.inputs))
    if args.inputs and not files:
        raise UserError(f"no images or videos in {', '.join(args.inputs)}")
    if args.checkpoint is None:
        args.checkpoint = shipped_model()
        print(f"using the shipped model {args.checkpoint} (no --checkpoint given)")
    settings = config_beside(args.checkpoint, args.set)["predict"]
    predictor = Predictor(load_probabilities(args.checkpoint, args.weights, settings["tta"]), FaceFinder(settings),
                          settings["margin"], detect=not args.no_detect)
    if args.webcam is not None:
        run_webcam(predictor, args.webcam)
        return 0
    os.makedirs(args.out, exist_ok=True)
    return predict_files(predictor, files, args.out)


if __name__ == "__main__":
    sys.exit(main())
