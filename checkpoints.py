"""Every way of loading a model: our .keras files, our model.json + model.weights.h5, and the 2018 notebook's
Keras 2 files (model.json with save_weights HDF5, or a whole-model .h5/.hdf5/.hd5), which Keras 3 cannot read
as they are; and copying one network's weights into another.

    python checkpoints.py --convert model.json model.h5 out.keras    # the notebook's own files as a .keras file
    python checkpoints.py --ship runs/<run>/best.keras models/fer2013-<name>.keras [--data fer2013.csv]

--ship also writes models/README.md beside the model: how it was made (from its run directory) and what it scored.
"""
import argparse
import contextlib
import glob
import json
import os
import sys
import zipfile

import numpy as np

import backends  # noqa: F401  (starts the backend quietly: see backends.py)
import data
from common import UserError, exit_on_user_error, native_stderr_held, replaced_atomically, without_home, write_text
from config import DEFAULTS
from model import build_model

with native_stderr_held():
    import keras


MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


def shipped_model(folder=MODELS):
    """The model shipped with the code (models/fer2013-<name>.keras), which evaluate.py and predict.py use when no
    --checkpoint is given; a UserError while none is shipped."""
    found = sorted(name for name in os.listdir(folder) if name.startswith("fer2013-") and name.endswith(".keras")) \
        if os.path.isdir(folder) else []
    if not found:
        raise UserError(f"no --checkpoint given, and no model is shipped in {folder} yet: train one (python train.py "
                        "--config config.yaml) and give --checkpoint runs/<run>/best.keras")
    return os.path.join(folder, found[-1])


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
        text = keras2_model_config(path)
        if text is not None:
            model = keras2_model(text, path, path)
            print(f"{path}: a Keras 2 model file; {compare_with_model_py(model)}")
        elif is_keras2_weights_only(path):
            raise UserError(f"{path} holds weights only: give the model.json as --checkpoint and this file as --weights")
        else:
            model = _keras_load(path)
    else:
        raise UserError(f"{path}: not a model file (expected .keras, a Keras .h5/.hdf5/.hd5, or a model.json)")
    check_shapes(model, path)
    return model


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
    keras2 = is_keras2_json(spec)
    if weights is None:
        folder, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
        candidates = ([f"{stem}.h5", "model.h5", "weights.h5", f"{stem}.weights.h5"] if keras2
                      else [f"{stem}.weights.h5", "model.weights.h5"])
        weights = next((os.path.join(folder, name) for name in candidates
                        if os.path.isfile(os.path.join(folder, name))), None)
        if weights is None:
            raise UserError(f"{path}: no weights file beside it ({', '.join(candidates)}): give one with --weights")
    if not os.path.isfile(weights):
        raise UserError(f"weights file {weights} not found")
    if keras2:
        model = keras2_model(text, path, weights)
        print(f"{path}: the notebook's Keras 2 format; {compare_with_model_py(model)}")
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
    check_weight_shapes(triples, f"--init-weights {name}: its")
    if len(ours) != len(theirs):
        raise UserError(f"--init-weights {name}: {len(theirs)} layers with weights, the config's network has {len(ours)}")
    for layer, arrays, _ in triples:
        layer.set_weights(arrays)
    print(f"initial weights from {name}")


def check_weight_shapes(triples, where):
    """Each (layer, arrays, name in the source) must match in shape; a mismatch names the layer."""
    for layer, arrays, name in triples:
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(a.shape) for a in arrays] != expected:
            raise UserError(f"{where} layer {name} has weights of shapes {[tuple(a.shape) for a in arrays]}, "
                            f"the model's are {expected}")


# --- the notebook's own files: Keras 2 model.json, save_weights .h5, whole-model .h5/.hd5 ---------------------
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


def _float32_config(value):
    """A model config with every layer's dtype policy made float32 (a mixed_bfloat16 run computes in bfloat16)."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def _float16_weights(source_h5, out_h5):
    """Copy a Keras weights file, storing float32 arrays as float16. Keras casts them back to its float32
    variables on loading, on every backend."""
    import h5py

    def copy(source, target):
        target.attrs.update(source.attrs)
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
                continue
            array = item[()]
            target.create_dataset(name, data=array.astype(np.float16) if array.dtype == np.float32 else array)
            target[name].attrs.update(item.attrs)

    with h5py.File(source_h5, "r") as source, h5py.File(out_h5, "w") as target:
        copy(source, target)


def ship(checkpoint, out_path, images):
    """`checkpoint` as a model to ship: float32 computation whatever precision it trained in (bfloat16 is slow or
    missing on many CPUs), no optimizer state, and weights stored as float16, which halves the file (18 MB for the
    notebook's network). Returns (the shipped model's argmax agreement with the checkpoint on `images`, uint8
    faces; the largest probability gap)."""
    import tempfile

    model = load_checkpoint(checkpoint)
    plain = type(model).from_config(_float32_config(model.get_config()))
    plain.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as folder:
        full = os.path.join(folder, "float32.keras")
        plain.save(full)
        with zipfile.ZipFile(full) as archive:
            archive.extractall(os.path.join(folder, "parts"))
        weights = os.path.join(folder, "parts", "model.weights.h5")
        _float16_weights(weights, weights + ".half")
        os.replace(weights + ".half", weights)
        with replaced_atomically(out_path) as temporary:
            with zipfile.ZipFile(temporary, "w") as archive:  # stored, as Keras writes them
                for name in sorted(os.listdir(os.path.join(folder, "parts"))):
                    archive.write(os.path.join(folder, "parts", name), name)
    from evaluate import predict_probabilities  # evaluate.py imports this module: imported here, not at the top

    before, after = (predict_probabilities(net, images) for net in (model, load_checkpoint(out_path)))
    return float(np.mean(before.argmax(1) == after.argmax(1))), float(np.abs(before - after).max())


CARD_MARK = "<!-- written by checkpoints.py --ship; written again by the next --ship -->"
FER2013_TERMS = ("The model learned from FER2013 (Goodfellow et al., 2013, \"Challenges in Representation Learning\", "
                 "ICML 2013 workshop; the Kaggle competition of the same name), so FER2013's own terms apply to it as "
                 "they apply to the data: read them before any use beyond research. FER2013 itself is not in this "
                 "repository.")


def _started_from(init_weights):
    """The card's sentence on where the run's weights started: nothing for a random initialisation; for a
    checkpoint of another run directory that is still there, that run's name, epochs and hours too."""
    if not init_weights:
        return ""
    import results

    path = init_weights["path"]
    earlier, run_dir = "an earlier training", os.path.dirname(os.path.abspath(path))
    if all(os.path.isfile(os.path.join(run_dir, part)) for part in ("config.yaml", "environment.json", "history.csv")):
        summary = results.summarize(run_dir, results.read_history(os.path.join(run_dir, "history.csv")), None)
        earlier = (f"run `{summary['run']}` ({summary['epochs_done']} epochs, {summary.get('hours', '?')} hours, "
                   f"best validation accuracy {summary['best_val_accuracy']})")
    return (f" Its weights started from {path} (`train.py --init-weights`), the end of {earlier}, not from a random "
            "initialisation: the hours below are this run's only.")


def write_model_card(checkpoint, out_path, agreement, own_scores=()):
    """README.md beside the shipped model: how it was made (config, commits, hours, CPUs, from the run directory
    the checkpoint came from), what the run's checkpoints scored and `own_scores`, (split, accuracy) pairs of the
    shipped file itself. Returns its path, or None where that folder has a README.md of its own, which is never
    overwritten."""
    import results
    from config import flatten, load_config

    card_path = os.path.join(os.path.dirname(os.path.abspath(out_path)), "README.md")
    if os.path.exists(card_path):
        with open(card_path, encoding="utf-8") as f:
            if f.readline().strip() != CARD_MARK:
                return None
    run_dir = os.path.dirname(os.path.abspath(checkpoint))
    name = os.path.basename(out_path)
    lines = [CARD_MARK, f"# {name}", "",
             f"`python checkpoints.py --ship {checkpoint} {out_path}`: {agreement}. It computes in float32 and stores "
             "its weights as float16; it takes 48x48x1 faces scaled to [0, 1] and answers the probabilities of "
             f"{', '.join(data.EMOTIONS)}. evaluate.py and predict.py use it when no --checkpoint is given; "
             f"plain Keras loads it too (`keras.models.load_model(\"{out_path}\")`).", ""]
    if all(os.path.isfile(os.path.join(run_dir, part)) for part in ("config.yaml", "environment.json", "history.csv")):
        summary = results.summarize(run_dir, results.read_history(os.path.join(run_dir, "history.csv")), None)
        config, defaults = flatten(load_config(os.path.join(run_dir, "config.yaml"))), flatten(DEFAULTS)
        changed = [f"`{key}={value}`" for key, value in config.items() if value != defaults.get(key)
                   and not key.startswith(("data.path", "data.cache_dir", "output."))]
        lines += ["## How it was made", "",
                  f"Run `{summary['run']}`: {summary['epochs_done']} of {summary['epochs']} epochs, "
                  f"{summary.get('hours', '?')} hours of training; best validation accuracy "
                  f"{summary['best_val_accuracy']} (epoch {summary['best_val_accuracy_epoch']}). Its config is "
                  f"config.yaml's defaults with {', '.join(changed) or 'nothing changed'}."
                  + _started_from(summary.get("init_weights")), "",
                  "| part | started | commit | CPU | precision | epochs | hours |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for number, part in enumerate(summary["parts"], 1):
            epochs = "-".join(map(str, part.get("epochs") or [])) or "-"
            lines.append(f"| {number} | {part['started']} | {(part['commit'] or '-')[:12]} | {part['cpu']} "
                         f"({', '.join(part['cpu_bfloat16'] or []) or 'no bfloat16'}) | {part['precision']} | {epochs} "
                         f"| {part.get('hours', '-')} |")
        scores = []
        for path in sorted(glob.glob(os.path.join(run_dir, "metrics*.json"))):
            with open(path, encoding="utf-8") as f:
                metrics = json.load(f)
            tta = metrics.get("tta_kind") or ("flip" if metrics.get("tta") else "none")
            scores.append(f"| {os.path.basename(metrics.get('checkpoint') or path)} | {metrics['split']} | {tta} "
                          f"| {metrics['accuracy']:.4f} |")
        scores += [f"| {name} (this file) | {split} | none | {accuracy:.4f} |" for split, accuracy in own_scores]
        if scores:
            lines += ["", "## What it scored", "", "The run's checkpoints as evaluate.py scored them, and this file "
                      "itself with a plain argmax:", "",
                      "| checkpoint | split | test-time augmentation | accuracy |", "| --- | --- | --- | --- |",
                      *scores]
    else:
        lines += [f"{checkpoint} is not in a run directory of train.py: no record of how it was trained."]
    lines += ["", "## Terms", "", FER2013_TERMS, ""]
    write_text(card_path, without_home("\n".join(lines)))
    return card_path


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert the notebook's Keras 2 files to a .keras file, or make a "
                                                 "checkpoint fit to ship in models/.")
    jobs = parser.add_mutually_exclusive_group(required=True)
    jobs.add_argument("--convert", nargs=3, metavar=("MODEL_JSON", "WEIGHTS_H5", "OUT_KERAS"),
                      help="write the notebook's model.json + Keras 2 weights as a .keras file")
    jobs.add_argument("--ship", nargs=2, metavar=("CHECKPOINT", "OUT_KERAS"),
                      help="write CHECKPOINT computing in float32 with float16-stored weights and no optimizer, and "
                           "print how often it agrees with CHECKPOINT")
    parser.add_argument("--data", help="--ship: compare on this fer2013.csv's PublicTest faces (default: 2,000 "
                                       "synthetic faces), and score the shipped file on PublicTest and PrivateTest")
    args = parser.parse_args(argv)
    if args.ship:
        checkpoint, out_path = args.ship
        if not out_path.endswith(".keras"):
            raise UserError(f"{out_path}: the output must be a .keras file")
        folder = os.path.dirname(os.path.abspath(out_path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write {out_path}: cannot make the folder {folder} ({error.strerror})") from None
        own_scores = []
        if args.data:
            from evaluate import load_split, predict_probabilities

            images, where = load_split(args.data, "PublicTest").images, f"{args.data} PublicTest"
        else:
            from synthetic import make_synthetic

            images, where = make_synthetic(2000, seed=3).images, "2,000 synthetic faces"
        agreement, gap = ship(checkpoint, out_path, images)
        said = f"the same top emotion as {checkpoint} on {agreement:.2%} of {where}, probabilities within {gap:.4f}"
        print(f"wrote {out_path} ({os.path.getsize(out_path) / 1e6:.1f} MB): {said}")
        if args.data:
            shipped = load_checkpoint(out_path)
            for split in ("PublicTest", "PrivateTest"):
                faces = load_split(args.data, split)
                accuracy = float(np.mean(predict_probabilities(shipped, faces.images).argmax(1) == faces.labels))
                own_scores.append((split, accuracy))
                print(f"{out_path} on {split}: accuracy {accuracy:.4f} (plain argmax)")
        card = write_model_card(checkpoint, out_path, said, own_scores)
        print(f"wrote {card}" if card else "left the README.md beside it as it is (not one --ship wrote)")
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
