"""The 2018 notebook's own Keras 2 files (its model.json with a save_weights .h5, or a whole-model .h5/.hdf5/.hd5),
which Keras 3 cannot read as they are: its model_from_json wants a dict where Keras 2 wrote the Sequential's layers
as a list, and Keras 2 spelled layers, initializers and regularizers in its own way. checkpoints.py loads them
through this module; the command writes them as a .keras file.

    python keras2.py model.json model.h5 out.keras
"""
if __name__ == "__main__":  # first, before the imports below bring in Keras
    from common import start_backend

    start_backend()

import argparse
import contextlib
import json
import os
import sys

import numpy as np

from common import UserError, exit_on_user_error, native_stderr_held, replaced_atomically
from config import DEFAULTS
from model import AUGMENTATION_LAYERS, build_model

with native_stderr_held():
    import keras


KERAS2_INITIALIZERS = {"VarianceScaling", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform",
                       "TruncatedNormal", "Orthogonal", "Identity", "GlorotUniform", "GlorotNormal", "HeUniform",
                       "HeNormal", "LecunUniform", "LecunNormal"}


def _keras2_initializer(spec):
    if spec is None:
        return None
    kind, options = spec["class_name"], dict(spec.get("config", {}))
    if kind not in KERAS2_INITIALIZERS:
        raise UserError(f"model.json: initializer {kind} is not one this loader knows")
    if kind == "VarianceScaling" and options.get("distribution") == "normal":
        options["distribution"] = "truncated_normal"  # what Keras 2's "normal" drew
    return getattr(keras.initializers, kind)(**options)


def _keras2_regularizer(spec):
    if spec is None:
        return None
    kind, options = spec["class_name"], spec.get("config", {})
    if kind not in ("L1L2", "L1", "L2"):
        raise UserError(f"model.json: regularizer {kind} is not one this loader knows")
    return keras.regularizers.L1L2(l1=float(options.get("l1", 0.0)), l2=float(options.get("l2", 0.0)))


def _keras2_layer(kind, options):
    """Today's layer for one Keras 2 layer config (those the notebook's networks use)."""
    name = options["name"]
    weights = {key: _keras2_initializer(options.get(key)) for key in ("kernel_initializer", "bias_initializer")
               if options.get(key)}
    penalties = {key: _keras2_regularizer(options.get(key))
                 for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer")}
    if kind == "Conv2D":
        if options.get("data_format", "channels_last") != "channels_last":
            raise UserError(f"model.json: layer {name} is channels_first; only channels_last is supported")
        return keras.layers.Conv2D(options["filters"], tuple(options["kernel_size"]), strides=tuple(options["strides"]),
                                   padding=options["padding"], dilation_rate=tuple(options["dilation_rate"]),
                                   activation=options["activation"], use_bias=options["use_bias"], name=name,
                                   **weights, **penalties)
    if kind == "Dense":
        return keras.layers.Dense(options["units"], activation=options["activation"], use_bias=options["use_bias"],
                                  name=name, **weights, **penalties)
    if kind == "BatchNormalization":
        return keras.layers.BatchNormalization(axis=options["axis"], momentum=options["momentum"],
                                               epsilon=options["epsilon"], center=options["center"],
                                               scale=options["scale"], name=name)
    if kind == "MaxPooling2D":
        return keras.layers.MaxPooling2D(tuple(options["pool_size"]), strides=tuple(options["strides"]),
                                         padding=options["padding"], name=name)
    if kind == "Dropout":
        return keras.layers.Dropout(options["rate"], name=name)
    if kind == "Flatten":
        return keras.layers.Flatten(name=name)
    if kind == "Activation":
        return keras.layers.Activation(options["activation"], name=name)
    raise UserError(f"model.json: layer {name} is a {kind}, which this loader does not know")


def is_keras2_json(spec):
    return isinstance(spec.get("config"), list) or str(spec.get("keras_version", "")).startswith("2.")


def from_keras2_json(text, source="model.json"):
    """The network a Keras 2 model.to_json() describes, built with today's layers under the file's names."""
    try:
        spec = json.loads(text)
        if spec.get("class_name") != "Sequential":
            raise UserError(f"{source}: a Keras 2 {spec.get('class_name')}; this loader reads Sequential models")
        specs = spec["config"]["layers"] if isinstance(spec["config"], dict) else spec["config"]
        first = specs[0]["config"]
        shape = first.get("batch_input_shape") or [None, *first["input_shape"]]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise UserError(f"{source}: not a Keras model description") from None
    try:
        layers = [keras.Input(tuple(shape[1:]))] + [_keras2_layer(s["class_name"], s["config"]) for s in specs]
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{source}: a layer the loader cannot build: {error}") from None
    return keras.Sequential(layers, name="keras2_notebook_model")


def keras2_model(text, source, weights_path):
    """The network a Keras 2 JSON describes, with the Keras 2 HDF5 weights in `weights_path`. The weights file
    is read before the model is built, so an unreadable one is reported before TensorFlow starts up."""
    stored = read_keras2_weights(weights_path)
    return set_keras2_weights(from_keras2_json(text, source), stored, weights_path)


@contextlib.contextmanager
def _hdf5(path):
    """The HDF5 file at `path`, read-only; one UserError if it is truncated or not HDF5 at all."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as error:
        raise UserError(f"{path}: truncated or not an HDF5 file ({str(error).split(';')[0]})") from None


def _text(value):
    """An HDF5 attribute as str: Keras 2 wrote bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def read_keras2_weights(path):
    """{layer name: [arrays]} from Keras 2 HDF5 weights (save_weights, or a whole-model file's model_weights)."""
    with _hdf5(path) as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise UserError(f"{path}: not a Keras 2 weights file (no layer_names)")
        stored = {}
        for name in map(_text, root.attrs["layer_names"]):
            weight_names = [_text(w) for w in root[name].attrs.get("weight_names", [])]
            if weight_names:
                stored[name] = [np.asarray(root[name][w]) for w in weight_names]
    return stored


def is_keras2_weights_only(path):
    """Whether `path` holds save_weights output (layers' weights, no model description)."""
    with _hdf5(path) as f:
        return "layer_names" in f.attrs and "model_config" not in f.attrs


def set_keras2_weights(model, stored, path):
    """Keras 2 weights into `model`, layer by layer, by name and order, every shape checked; any mismatch
    names the layer."""
    weighted = [layer for layer in model.layers if layer.weights]
    missing = [layer.name for layer in weighted if layer.name not in stored]
    if missing:
        raise UserError(f"{path}: no weights for layer {missing[0]} (the file has {', '.join(stored) or 'none'})")
    extra = [name for name in stored if name not in {layer.name for layer in weighted}]
    if extra:
        raise UserError(f"{path}: weights for layer {extra[0]}, which the model does not have")
    if [layer.name for layer in weighted] != list(stored):
        raise UserError(f"{path}: the layers come in another order than in the model ({', '.join(stored)})")
    check_weight_shapes([(layer, stored[layer.name], layer.name) for layer in weighted], f"{path}:")
    for layer in weighted:
        layer.set_weights(stored[layer.name])
    return model


def keras2_model_config(path):
    """The model_config JSON of a Keras 2 whole-model HDF5 file (model.save / ModelCheckpoint), else None."""
    with _hdf5(path) as f:
        text = f.attrs.get("model_config")
        version = f.attrs.get("keras_version", b"")
    if text is None:
        return None
    text, version = _text(text), _text(version)
    return text if version.startswith("2.") or is_keras2_json(json.loads(text)) else None


def check_weight_shapes(triples, where):
    """Each (layer, arrays, name in the source) must match in shape; a mismatch names the layer."""
    for layer, arrays, name in triples:
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(a.shape) for a in arrays] != expected:
            raise UserError(f"{where} layer {name} has weights of shapes {[tuple(a.shape) for a in arrays]}, "
                            f"the model's are {expected}")


def family_config(model):
    """model.py's settings (filters, dense, l2, dropout, batch_norm_momentum) that build exactly this network,
    or None."""
    layers = model.layers
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    denses = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    dropouts = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    if len(convs) < 2 or not denses or not dropouts:
        return None
    regularizer = convs[0].kernel_regularizer
    guess = {"filters": [convs[0].filters] + [conv.filters for conv in convs[2::3]],
             "dense": [layer.units for layer in denses[:-1]],
             "l2": round(float(getattr(regularizer, "l2", 0.0)), 6) if regularizer is not None else 0.0,
             "dropout": float(dropouts[0].rate),
             "batch_norm_momentum": next((float(layer.momentum) for layer in layers
                                          if isinstance(layer, keras.layers.BatchNormalization)),
                                         DEFAULTS["model"]["batch_norm_momentum"]),
             "residual": False}
    config = {**DEFAULTS, "model": guess, "train": {**DEFAULTS["train"], "jit_compile": False}}
    rebuilt = build_model(config)
    if _describe(rebuilt) != _describe(model) or rebuilt.count_params() != model.count_params():
        return None
    return guess


def _describe(model):
    """The layer stack, without the augmentation layers (which change nothing at inference)."""
    return [(type(layer).__name__, getattr(layer, "filters", None), getattr(layer, "units", None),
             getattr(layer, "padding", None), getattr(layer, "rate", None)) for layer in model.layers
            if not isinstance(layer, AUGMENTATION_LAYERS)]


def compare_with_model_py(model):
    """One line: whether `model` is model.py's network with the default settings."""
    family = family_config(model)
    if family is None:
        return f"a network of its own ({model.count_params():,} parameters), not model.py's layer stack"
    defaults = {key: DEFAULTS["model"][key] for key in family}
    if family == defaults:
        return f"model.py's network exactly ({model.count_params():,} parameters)"
    differences = ", ".join(f"model.{key}={family[key]} (model.py: {defaults[key]})"
                            for key in family if family[key] != defaults[key])
    return f"model.py's layer stack with {differences}: {model.count_params():,} parameters"


def convert(json_path, weights_path, out_path):
    """The notebook's model.json + weights as a modern .keras file."""
    with open(json_path, encoding="utf-8") as f:
        model = keras2_model(f.read(), json_path, weights_path)
    with replaced_atomically(out_path) as temporary:
        model.save(temporary)
    return model


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the notebook's Keras 2 model.json + weights as a .keras file.")
    parser.add_argument("model_json", help="the notebook's model.json")
    parser.add_argument("weights", help="its Keras 2 weights (save_weights .h5)")
    parser.add_argument("out", help="the .keras file to write")
    args = parser.parse_args(argv)
    for path in (args.model_json, args.weights):
        if not os.path.isfile(path):
            raise UserError(f"{path} not found")
    if not args.out.endswith(".keras"):
        raise UserError(f"{args.out}: the output must be a .keras file")
    model = convert(args.model_json, args.weights, args.out)
    print(f"{args.model_json}: {compare_with_model_py(model)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
