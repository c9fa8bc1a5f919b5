"""A page in the browser for the model: photos and a webcam, each face boxed and named with its emotion.

    python app.py                                   # the model shipped in models/, on http://127.0.0.1:7860
    python app.py --checkpoint runs/<run>/best.keras --port 8080
    python app.py --checkpoint model.onnx           # onnxruntime alone: no TensorFlow or Keras is imported
    python app.py --share                           # a public gradio.live link as well (Colab, a remote machine)

Served with Gradio. The Photo tab takes one or more photos and shows each with its faces boxed, a bar chart of the
seven probabilities per face, each face's occlusion map (explain.py: what in it decided its emotion), and the JSON
lines predict.py writes, to download. The Webcam tab streams the browser's camera to the app and shows the annotated
frames as they come back, with the frames per second. Both go through predict.py's own face finder and crop
(detect.py) and model (its Predictor), with the predict settings of the checkpoint's run (config.yaml beside it) and
--set overrides.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque

import numpy as np

import data
import detect
import explain
import predict
from common import UserError, exit_on_user_error, pyplot, shipped_model
from config import config_beside

RATE_WINDOW = 30  # webcam frames over which the frames per second are counted


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise UserError("app.py needs Gradio: pip install 'gradio>=5' (requirements-dev.txt has it too)") from None
    return gradio


def load_predictor(checkpoint, overrides=()):
    """predict.py's Predictor for a checkpoint (default: the shipped model) and the checkpoint's path."""
    if checkpoint is None:
        checkpoint = shipped_model()
    settings = config_beside(checkpoint, overrides)["predict"]
    predictor = predict.Predictor(predict.load_probabilities(checkpoint, tta=settings["tta"]),
                                  detect.FaceFinder(settings), settings["margin"])
    return predictor, checkpoint


def rgb(image):
    return np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else image


def bar_charts(faces):
    """One horizontal bar chart of the seven probabilities per face: faces is [(title, probabilities)]."""
    plt = pyplot()
    figure, axes = plt.subplots(len(faces), 1, figsize=(6, 1.9 * len(faces)), squeeze=False)
    for ax, (title, row) in zip(axes[:, 0], faces):
        top = int(row.argmax())
        ax.barh(data.EMOTIONS, row, color=["tab:orange" if i == top else "tab:blue" for i in range(len(row))])
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(f"{title}: {data.EMOTIONS[top]} {row[top]:.2f}", fontsize=10)
        ax.tick_params(labelsize=8)
    figure.tight_layout()
    return figure


def analyse_photos(predictor, paths, out_dir):
    """For uploaded files: (annotated images with captions, one Markdown line per file, a bar-chart figure or
    None, the path of predictions.jsonl, a figure of each face's occlusion map (explain.py) or None). A file that
    is not an image, or shows no face, gets its line."""
    gallery, lines, faces, records, crops = [], [], [], [], []
    for path in paths:
        name = os.path.basename(path)
        try:
            image = detect.read_image(path)
        except OSError as error:
            lines.append(f"**{name}**: {error}; give a photo (JPEG, PNG, ...)")
            continue
        gray, boxes = predictor.find(image)
        probabilities = predictor.score(gray, boxes)
        crops.extend(predictor.crops(gray, boxes) if boxes else [])
        records.extend(predictor.records(name, boxes, probabilities))
        summary = predict.describe(boxes, probabilities)
        gallery.append((rgb(predictor.annotate(image, boxes, probabilities)), f"{name}: {summary}"))
        lines.append(f"**{name}**: {summary}" if boxes else f"**{name}**: no face found")
        faces.extend((f"{name}, face {number}" if len(boxes) > 1 else name, row)
                     for number, row in enumerate(probabilities, start=1))
    jsonl = os.path.join(out_dir, "predictions.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return (gallery, "\n\n".join(lines), bar_charts(faces) if faces else None, jsonl,
            why_figure(predictor, crops, [title for title, _ in faces]) if crops else None)


def why_figure(predictor, crops, titles):
    """Each face's occlusion map over it (explain.py): red where it spoke for the emotion named, blue against."""
    maps, classes, scores = explain.occlusion_maps(predictor.probabilities, np.stack(crops))
    figure = explain.faces_figure(np.stack(crops), maps, classes, scores, titles, columns=3)
    figure.set_figheight(figure.get_figheight() + 0.4)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / figure.get_figheight()))  # room for the Plot's label
    return figure


class Live:
    """One browser's webcam stream: its faces followed from frame to frame (detect.LiveFinder), and the frames
    answered per second over the last RATE_WINDOW frames."""

    def __init__(self, predictor):
        self.find = predictor.live()
        self.times = deque(maxlen=RATE_WINDOW)
        self.frames = 0

    def rate(self, started):
        """"17.5 frames/s · 31 ms a frame · frame 45": the rate, this frame's time in the app, the frames so far."""
        self.times.append(time.perf_counter())
        self.frames += 1
        milliseconds = (self.times[-1] - started) * 1000
        rate = f"{(len(self.times) - 1) / (self.times[-1] - self.times[0]):.1f} frames/s · " if self.frames > 1 else ""
        return f"{rate}{milliseconds:.0f} ms a frame · frame {self.frames}"


def webcam_frame(predictor, frame, live):
    """One RGB camera frame -> (the annotated frame, a line: the emotions seen and the frame rate, the stream)."""
    live = live or Live(predictor)
    if frame is None:
        return None, "", live
    started = time.perf_counter()
    image = rgb(frame)  # Gradio sends it mirrored, as the camera's preview shows it
    gray, boxes = live.find(image)
    probabilities = predictor.score(gray, boxes)
    annotated = rgb(predictor.annotate(image, boxes, probabilities))
    seen = ", ".join(f"{data.EMOTIONS[int(row.argmax())]} {row.max():.2f}" for row in probabilities) or "no face"
    return annotated, f"{seen} · {live.rate(started)}", live


def build_app(predictor, checkpoint):
    """The Gradio Blocks: a Photo tab and a Webcam tab over one predictor."""
    gr = import_gradio()
    work = tempfile.mkdtemp(prefix="fer2013-app-")

    def on_photos(files):
        if not files:
            return [], "", None, None, None
        out_dir = tempfile.mkdtemp(dir=work)
        shown = analyse_photos(predictor, [getattr(f, "name", f) for f in files], out_dir)
        for figure in (shown[2], shown[4]):
            if figure is not None:
                pyplot().close(figure)
        return shown

    with gr.Blocks(title="fer2013-keras: emotions in faces") as app:
        gr.Markdown(f"## fer2013-keras: emotions in faces\nModel: `{os.path.basename(checkpoint)}`. Faces are found "
                    "with OpenCV's Haar cascade and named with one of FER2013's seven emotions.")
        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column():
                    files = gr.File(label="Photos", file_count="multiple", elem_id="photos")
                    summary = gr.Markdown(elem_id="photo-summary")
                    download = gr.File(label="predictions.jsonl", elem_id="photo-jsonl")
                with gr.Column():
                    gallery = gr.Gallery(label="Faces", elem_id="photo-gallery", columns=2, height="auto",
                                         format="jpeg")
                    chart = gr.Plot(label="Probabilities per face", elem_id="photo-chart")
                    why = gr.Plot(label="What decided it: red for, blue against (explain.py)",
                                  elem_id="photo-why")
            files.change(on_photos, files, [gallery, summary, chart, download, why])
        with gr.Tab("Webcam"):
            stream = gr.State()
            with gr.Row():
                camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy",
                                  elem_id="webcam-in")
                shown = gr.Image(label="Emotions", format="jpeg", elem_id="webcam-out")
            line = gr.Markdown(elem_id="webcam-rate")
            camera.stream(lambda frame, live: webcam_frame(predictor, frame, live), [camera, stream],
                          [shown, line, stream], stream_every=0.04, concurrency_limit=1, show_progress="hidden")
    return app


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a .keras file or an .onnx export (default: the model shipped in "
                                             "models/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860,
                        help="port to serve on (0: the first free one from 7860 on, which Gradio prints)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="predict settings, e.g. --set predict.min_neighbors=3")
    args = parser.parse_args(argv)
    import_gradio()
    predictor, checkpoint = load_predictor(args.checkpoint, args.set)
    print(f"model: {checkpoint}")
    app = build_app(predictor, checkpoint)
    app.launch(server_name=args.host, server_port=args.port or None, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
