"""The notebook's CNN, in Keras 3 (any backend).

    python model.py                 # the layer stack and parameter count (9,014,727 with the defaults)
    python model.py --convert model.json model.h5 out.keras    # the notebook's own files, as a .keras file

Conv2D(64, valid, L2) - Conv2D(64, same) - BN - MaxPool - Dropout, then for f in 128, 256, 512:
3 x [Conv2D(f, same) - BN] - MaxPool - Dropout; Flatten; Dense 512, 256, 128, 64 each with Dropout;
Dense(7, softmax). `model.filters` and `model.dense` change the widths (the demo uses a small one).
"""
import argparse
import contextlib
import json
import os
import sys
import types

import numpy as np

from common import UserError, exit_on_user_error, native_stderr_held, replaced_atomically
from config import DEFAULTS
import backends  # noqa: F401  (starts the backend quietly: see backends.py)
import data

with native_stderr_held():
    import keras

INPUT_SHAPE = data.IMAGE_SHAPE
CLASSES = len(data.EMOTIONS)


def make_optimizer(name, learning_rate):
    """The notebook's Adam, or another for a hyper-parameter search (SGD with Nesterov momentum 0.9)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    return {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
            "rmsprop": keras.optimizers.RMSprop}[name](learning_rate=learning_rate)


def build_model(config=None, fused_batch_norm=True):
    """The compiled notebook model; `config` is a full config dict (None: config.yaml's defaults).
    `fused_batch_norm=False` keeps Keras's own BatchNormalization computation (see fuse_batch_normalization)."""
    config = config or DEFAULTS
    options, train = config["model"], config["train"]
    l2, rate, momentum = options["l2"], options["dropout"], options["batch_norm_momentum"]
    stem, *blocks = options["filters"]
    layers = [keras.Input(INPUT_SHAPE), *augmentation(train["augment"]),
        keras.layers.Conv2D(stem, 3, activation="relu", padding="valid",
                            kernel_regularizer=keras.regularizers.L2(l2)),
        keras.layers.Conv2D(stem, 3, activation="relu", padding="same"),
        keras.layers.BatchNormalization(momentum=momentum),
        keras.layers.MaxPooling2D(2, strides=2),
        keras.layers.Dropout(rate),
    ]
    for filters in blocks:
        for _ in range(3):
            layers += [keras.layers.Conv2D(filters, 3, activation="relu", padding="same"),
                       keras.layers.BatchNormalization(momentum=momentum)]
        layers += [keras.layers.MaxPooling2D(2, strides=2), keras.layers.Dropout(rate)]
    layers.append(keras.layers.Flatten())
    for units in options["dense"]:
        layers += [keras.layers.Dense(units, activation="relu"), keras.layers.Dropout(rate)]
    layers.append(keras.layers.Dense(CLASSES, activation="softmax", dtype="float32"))  # float32 under mixed precision
    model = keras.Sequential(layers, name="fer2013_cnn")
    model.compile(optimizer=make_optimizer(train["optimizer"], train["learning_rate"]),
                  loss=(keras.losses.CategoricalCrossentropy(label_smoothing=train["label_smoothing"])
                        if train["label_smoothing"] else "categorical_crossentropy"),
                  metrics=["accuracy"], jit_compile=train["jit_compile"])
    return fuse_batch_normalization(model) if fused_batch_norm else model


def fuse_batch_normalization(model):
    """On TensorFlow, the model's BatchNormalization layers run TensorFlow's fused kernel: one oneDNN (CPU) or
    cuDNN (GPU) op each way, where Keras 3 runs about a dozen elementwise ops, with casts to float32 around them
    under mixed precision. Same function and moving statistics; about 1.1x (float32) and 1.1-1.5x (bfloat16)
    the training speed on a 2-core CPU. Only the layers' call changes: checkpoints hold Keras's own
    BatchNormalization and load anywhere, on any backend."""
    if keras.backend.backend() != "tensorflow":
        return model
    for layer in model.layers:
        if (type(layer) is keras.layers.BatchNormalization and len(layer.input.shape) == 4 and layer.axis in (-1, 3)
                and layer.center and layer.scale and not layer.renorm and not layer.synchronized):
            layer.call = types.MethodType(_fused_batch_normalization, layer)
    return model


def _fused_batch_normalization(layer, inputs, training=None, mask=None):
    import tensorflow as tf

    if mask is not None or (training and not layer.trainable):
        # Keras's own call: masks, and a frozen layer that gradients flow through (TensorFlow has no deterministic
        # GPU gradient for the fused kernel in inference mode)
        return type(layer).call(layer, inputs, training=training, mask=mask)
    if training:
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, layer.gamma, layer.beta, epsilon=layer.epsilon, is_training=True)
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        variance *= (count - 1) / count  # TensorFlow gives the unbiased variance; Keras averages the biased one
        for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            moving.assign(moving * layer.momentum + batch * (1 - layer.momentum))
        return outputs
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(inputs, layer.gamma, layer.beta, layer.moving_mean,
                                                     layer.moving_variance, epsilon=layer.epsilon, is_training=False)
    return outputs


def augmentation(options):
    """Keras's random preprocessing layers, first in the network: they change faces while training and pass
    them through untouched at inference, so a checkpoint needs nothing extra to be evaluated or used."""
    layers = []
    if options["flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", dtype="float32"))
    if options["shift"]:
        layers.append(keras.layers.RandomTranslation(options["shift"], options["shift"], fill_mode="nearest",
                                                     dtype="float32"))
    if options["rotation"]:
        layers.append(keras.layers.RandomRotation(options["rotation"] / 360, fill_mode="nearest", dtype="float32"))
    if options["zoom"]:
        layers.append(keras.layers.RandomZoom(options["zoom"], fill_mode="nearest", dtype="float32"))
    return layers


# --- the notebook's own files: Keras 2 model.json, save_weights .h5, whole-model .h5/.hd5 ----------------------
# Keras 3 reads none of them as they are: its model_from_json wants a dict where Keras 2 wrote the Sequential's
# layers as a list, and Keras 2 spelled layers, initializers and regularizers in its own way.

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
    for layer in weighted:
        arrays, expected = stored[layer.name], [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise UserError(f"{path}: layer {layer.name} has weights of shapes {[a.shape for a in arrays]}, "
                            f"the model's are {expected}")
        layer.set_weights(arrays)
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
                                         DEFAULTS["model"]["batch_norm_momentum"])}
    config = {**DEFAULTS, "model": guess, "train": {**DEFAULTS["train"], "jit_compile": False}}
    rebuilt = build_model(config)
    if _describe(rebuilt) != _describe(model) or rebuilt.count_params() != model.count_params():
        return None
    return guess


AUGMENTATION_LAYERS = (keras.layers.RandomFlip, keras.layers.RandomTranslation, keras.layers.RandomRotation,
                       keras.layers.RandomZoom)


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
    parser = argparse.ArgumentParser(description="The notebook's CNN: print it, or convert the notebook's files.")
    parser.add_argument("--convert", nargs=3, metavar=("MODEL_JSON", "WEIGHTS_H5", "OUT_KERAS"),
                        help="write the notebook's model.json + Keras 2 weights as a .keras file")
    args = parser.parse_args(argv)
    if args.convert:
        json_path, weights_path, out_path = args.convert
        for path in (json_path, weights_path):
            if not os.path.isfile(path):
                raise UserError(f"{path} not found")
        if not out_path.endswith(".keras"):
            raise UserError(f"{out_path}: the output must be a .keras file")
        model = convert(json_path, weights_path, out_path)
        print(f"{json_path}: {compare_with_model_py(model)}")
        print(f"wrote {out_path}")
        return 0
    model = build_model()
    model.summary()
    print(f"parameters: {model.count_params():,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
