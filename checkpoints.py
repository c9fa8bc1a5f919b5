"""Every way of loading a model: our .keras files, our model.json + model.weights.h5, and the 2018 notebook's
Keras 2 files (through keras2.py); and copying one network's weights into another.
"""
import json
import os
import zipfile

import data
import keras2
from common import UserError, native_stderr_held
from model import let_jax_compile

with native_stderr_held():
    import keras


def load_checkpoint(path, weights=None):
    """A model from our .keras file, our model.json + model.weights.h5, or the notebook's own Keras 2 files:
    its model.json with a save_weights .h5, or a whole-model HDF5 file whatever its extension (.h5, .hdf5, .hd5)."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} not found")
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a folder, not a model file")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty")
    if path.endswith(".json"):
        model = _load_json(path, weights)
    elif path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path}: truncated or not a Keras file (a .keras file is a whole zip archive)")
        model = _keras_load(path)
    elif path.endswith((".h5", ".hdf5", ".hd5")):
        text = keras2.keras2_model_config(path)
        if text is not None:
            model = keras2.keras2_model(text, path, path)
            print(f"{path}: a Keras 2 model file; {keras2.compare_with_model_py(model)}")
        elif keras2.is_keras2_weights_only(path):
            raise UserError(f"{path} holds weights only: give the model.json as --checkpoint and this file as --weights")
        else:
            model = _keras_load(path)
    else:
        raise UserError(f"{path}: not a model file (expected .keras, a Keras .h5/.hdf5/.hd5, or a model.json)")
    check_shapes(model, path)
    return let_jax_compile(model)


def _keras_load(path):
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a foreign file
        raise UserError(f"{path}: not a loadable Keras model: {_first_line(error)}") from None


def _load_json(path, weights):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        spec = json.loads(text)
    except ValueError:
        raise UserError(f"{path}: not JSON") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: not a Keras model description")
    notebook_format = keras2.is_keras2_json(spec)
    if weights is None:
        folder, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
        candidates = ([f"{stem}.h5", "model.h5", "weights.h5", f"{stem}.weights.h5"] if notebook_format
                      else [f"{stem}.weights.h5", "model.weights.h5"])
        weights = next((os.path.join(folder, name) for name in candidates
                        if os.path.isfile(os.path.join(folder, name))), None)
        if weights is None:
            raise UserError(f"{path}: no weights file beside it ({', '.join(candidates)}): give one with --weights")
    if not os.path.isfile(weights):
        raise UserError(f"weights file {weights} not found")
    if notebook_format:
        model = keras2.keras2_model(text, path, weights)
        print(f"{path}: the notebook's Keras 2 format; {keras2.compare_with_model_py(model)}")
        return model
    try:
        model = keras.models.model_from_json(text)
        model.load_weights(weights)
    except Exception as error:
        raise UserError(f"{path} + {weights}: cannot be loaded as a Keras model: {_first_line(error)}") from None
    return model


def check_shapes(model, path):
    """The model must take 48x48x1 faces and give 7 class probabilities."""
    input_shape, output_shape = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if input_shape != data.IMAGE_SHAPE:
        raise UserError(f"{path}: the model takes inputs of shape {input_shape}, expected {data.IMAGE_SHAPE} (48x48 grayscale)")
    if output_shape != (len(data.EMOTIONS),):
        raise UserError(f"{path}: the model outputs shape {output_shape}, expected ({len(data.EMOTIONS)},) (7 emotions)")


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else error.__class__.__name__


def copy_weights(source, model, name):
    """Start from another checkpoint's weights (fine-tuning): the networks must match layer for layer."""
    ours = [layer for layer in model.layers if layer.weights]
    theirs = [layer for layer in source.layers if layer.weights]
    triples = [(mine, other.get_weights(), other.name) for mine, other in zip(ours, theirs)]
    keras2.check_weight_shapes(triples, f"--init-weights {name}: its")
    if len(ours) != len(theirs):
        raise UserError(f"--init-weights {name}: {len(theirs)} layers with weights, the config's network has {len(ours)}")
    for layer, arrays, _ in triples:
        layer.set_weights(arrays)
    print(f"initial weights from {name}")
