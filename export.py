"""Export a checkpoint to ONNX, LiteRT (TFLite) or a TensorFlow SavedModel, and check the file gives Keras's answers.

    python export.py runs/<run>/best.keras model.onnx      # ONNX Runtime, OpenCV's dnn module, C++/C#/JS
    python export.py runs/<run>/best.keras model.tflite    # LiteRT (TensorFlow Lite) on phones
    python export.py runs/<run>/best.keras saved_model/    # a TensorFlow SavedModel folder (no suffix)
    python export.py model.json out.onnx --weights model.h5   # the 2018 notebook's own files

The suffix of OUT picks the format. Whatever precision the checkpoint trained in, the file computes in float32.
Its input is a batch of any size of 48x48x1 faces scaled to [0, 1] (pixels / 255), its output the 7 emotion
probabilities (data.EMOTIONS order). After writing, the file is loaded back with its own runtime (onnxruntime,
LiteRT's interpreter, tf.saved_model.load) and run on a batch of synthetic faces beside Keras: the largest
probability gap is printed, and a file whose answers differ (another argmax on more than 0.1% of the faces, or a
gap over 1e-4) is removed and refused with exit status 2.

This module imports neither TensorFlow nor Keras until it exports, so that predict.py can run an .onnx file
(OnnxModel) with OpenCV and onnxruntime alone.
"""
import argparse
import os
import shutil
import sys

import numpy as np

import fer2013
from common import UserError, exit_on_user_error, start_backend

FORMATS = {".onnx": "onnx", ".tflite": "litert", "": "tf_saved_model"}
MAX_GAP, MIN_AGREEMENT = 1e-4, 0.999
CHECK_FACES = 256
CROP_KEY = "fer2013_keras.crop"  # an .onnx file's metadata: the side of its network's centre crop


def export_format(out):
    """Keras's export format for an output path: by suffix, a folder (no suffix) for a SavedModel."""
    suffix = os.path.splitext(out.rstrip("/\\"))[1].lower()
    if suffix not in FORMATS:
        raise UserError(f"{out}: unknown output format {suffix!r} (.onnx, .tflite, or a folder name without a "
                        "suffix for a TensorFlow SavedModel)")
    return FORMATS[suffix]


def check_writable(out):
    folder = os.path.dirname(os.path.abspath(out.rstrip("/\\")))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {folder} is not a writable folder")
    if os.path.isdir(out) and FORMATS.get(os.path.splitext(out.rstrip("/\\"))[1].lower()) != "tf_saved_model":
        raise UserError(f"cannot write {out}: it is a folder")
    check_replaceable(out)


def check_replaceable(out):
    """A SavedModel replaces a folder only where that folder is empty or an earlier SavedModel (saved_model.pb):
    `python export.py best.keras ~/Documents` must not remove the folder's files."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "saved_model.pb")):
        raise UserError(f"cannot write {out}: it is a folder of other files, not an earlier SavedModel (name a "
                        "new folder for the SavedModel)")


def float32_copy(model):
    """The network as inference runs it, computing in float32: a mixed-precision checkpoint's layers compute in
    bfloat16 or float16, which export runtimes handle poorly or not at all, and the augmentation layers, which
    pass faces through untouched at inference, would still bring their random ops into the exported graph."""
    import keras

    from model import AUGMENTATION_LAYERS

    def for_inference(layer):
        if isinstance(layer, AUGMENTATION_LAYERS):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=for_inference)
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    copy.trainable = False  # BatchNormalization then uses its moving statistics, however the exporter calls it
    return copy


class OnnxModel:
    """An exported .onnx file run by onnxruntime: 48x48x1 float faces in, the 7 probabilities out. evaluate.py
    scores it as a Keras model (predict_on_batch); `crop` is the side of the network's own centre crop, which
    export.py records in the file's metadata (CROP_KEY) for ten crops, or None."""

    def __init__(self, path):
        try:
            import onnxruntime
        except ImportError:
            raise UserError("running an .onnx file needs onnxruntime: pip install -r requirements-dev.txt (or "
                            "pip install onnxruntime)") from None
        if not os.path.isfile(path):
            raise UserError(f"checkpoint {path} not found")
        try:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for a foreign or damaged file
            raise UserError(f"{path}: not a loadable ONNX model: {str(error).strip().splitlines()[0]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [48, 48, 1] or list(outputs[0].shape[1:]) != [7]:
            raise UserError(f"{path}: the model must take 48x48x1 faces and give 7 probabilities, it takes "
                            f"{inputs[0].shape} and gives {outputs[0].shape}")
        self.input_name, self.path = inputs[0].name, path
        crop = self.session.get_modelmeta().custom_metadata_map.get(CROP_KEY, "")
        self.crop = int(crop) if crop.isdigit() else None

    def crop_shifts(self, what):
        """fer2013.crop_shifts for the network's own crop; `what` (--tta tencrop) is refused where none is recorded."""
        if self.crop is None:
            raise UserError(f"{what} needs a model that crops its input (trained with train.augment.crop); {self.path} "
                            "records no crop (if its model crops, it was exported before export.py recorded that: "
                            "export it again)")
        return fer2013.crop_shifts(self.crop)

    def predict(self, faces):
        """Probabilities (N, 7) for float32 faces (N, 48, 48, 1) in [0, 1]."""
        return self.session.run(None, {self.input_name: np.asarray(faces, np.float32)})[0]

    predict_on_batch = predict


def record_crop(path, model):
    """Write the side of the network's centre crop (train.augment.crop) into an .onnx file's metadata, where
    OnnxModel finds it for ten crops; the graph holds the crop, but no runtime says where."""
    import onnx

    from model import crop_size

    crop = crop_size(model)
    if crop is not None:
        written = onnx.load(path)
        onnx.helper.set_model_props(written, {CROP_KEY: str(crop)})
        onnx.save(written, path)


def run_litert(path, faces):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    [entry], [exit_] = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(entry["index"], list(faces.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], faces)
    interpreter.invoke()
    return interpreter.get_tensor(exit_["index"])


def run_saved_model(path, faces):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # held: its functions refer to its variables
    return loaded.serve(tf.constant(faces)).numpy()


def run_exported(path, kind, faces):
    """What the exported file answers for `faces`, run by its own runtime."""
    if kind == "onnx":
        return OnnxModel(path).predict(faces)
    return (run_litert if kind == "litert" else run_saved_model)(path, faces)


def compare(expected, got):
    """(largest probability gap, share of faces with the same top emotion)."""
    return float(np.abs(expected - got).max()), float(np.mean(expected.argmax(axis=1) == got.argmax(axis=1)))


def start_exporting_backend(kind, out):
    """Keras on TensorFlow for every format but PyTorch's ONNX: LiteRT and SavedModel files are TensorFlow's (on
    PyTorch Keras wants litert-torch for one, and its SavedModel export fails in torch.export), and on JAX its ONNX
    exporter is jax2onnx, a package of its own. A checkpoint is the same on every backend."""
    chosen = os.environ.get("KERAS_BACKEND") or "tensorflow"
    through_tensorflow = not (kind == "onnx" and chosen == "torch")
    if through_tensorflow:
        if chosen != "tensorflow":
            print(f"{kind} is written with Keras on TensorFlow (a checkpoint is the same on every backend)")
        os.environ["KERAS_BACKEND"] = "tensorflow"
    try:
        start_backend()
    except (UserError, ImportError) as error:  # TensorFlow not installed, or failing to import
        if not through_tensorflow:
            raise
        why = "it is not installed" if isinstance(error, UserError) else error
        raise UserError(f"writing {out} needs TensorFlow, which Keras writes it with ({why}): pip install -r "
                        "requirements-dev.txt") from None


def export(checkpoint, out, weights=None):
    """Write `out` from `checkpoint` and check it against Keras; returns (gap, agreement)."""
    kind = export_format(out)
    check_writable(out)
    start_exporting_backend(kind, out)
    import checkpoints
    import data
    import synthetic

    model = float32_copy(checkpoints.load_checkpoint(checkpoint, weights))
    faces = data.to_float(synthetic.make_synthetic(CHECK_FACES, seed=0).images)
    expected = model.predict(faces, verbose=0)
    out = out.rstrip("/\\")
    stem, suffix = os.path.splitext(out)
    temporary = f"{stem}.writing-{os.getpid()}{suffix}"  # renamed to `out` once checked
    try:
        try:
            model.export(temporary, format=kind, verbose=False)
            if kind == "onnx":
                record_crop(temporary, model)
            got = run_exported(temporary, kind, faces)
        except ImportError as error:
            raise UserError(f"writing {out} needs {error.name}: pip install -r requirements-dev.txt" if error.name
                            else f"writing {out}: {error}") from None
        gap, agreement = compare(expected, got)
        if gap > MAX_GAP or agreement < MIN_AGREEMENT:
            raise UserError(f"{out}: the exported model answers differently from Keras (largest probability gap "
                            f"{gap:.2g}, the same emotion for {agreement:.1%} of {CHECK_FACES} faces); nothing kept")
        if os.path.isdir(out):
            check_replaceable(out)  # again: something may have been put there while the export ran
            shutil.rmtree(out)  # a folder is not renamed over another
        os.replace(temporary, out)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary)
        elif os.path.exists(temporary):
            os.remove(temporary)
    return gap, agreement


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .keras file, a Keras 2 .h5/.hdf5/.hd5 model, or a model.json")
    parser.add_argument("out", help="model.onnx, model.tflite, or a folder name for a SavedModel")
    parser.add_argument("--weights", help="weights for a model.json (default: the .h5 beside it)")
    args = parser.parse_args(argv)
    gap, agreement = export(args.checkpoint, args.out, args.weights)
    print(f"wrote {args.out} ({FORMATS[os.path.splitext(args.out.rstrip('/'))[1].lower()]}, float32, input "
          f"(batch, 48, 48, 1) in [0, 1]); against Keras on {CHECK_FACES} faces: largest probability gap {gap:.2g}, "
          f"the same emotion for {agreement:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
