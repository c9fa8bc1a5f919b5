"""Configuration: the notebook's values as plain data, YAML files and --set overrides on top, checked at start.

A config file only needs the keys it changes; every other key keeps the default below, which is what
config.yaml spells out with comments. Anything the user got wrong (unknown key, wrong type, impossible value,
a YAML syntax error) is a UserError: the scripts print it as one line and exit with status 2.
"""
import copy
import math
import os

import yaml

from common import UserError

DEFAULTS = {
    "data": {
        "path": "data/fer2013.csv",
        "protocol": "notebook",
        "validation_split": 0.2,
        "limit": None,
        "synthetic": None,
        "cache_dir": "auto",
    },
    "model": {
        "filters": [64, 128, 256, 512],
        "dense": [512, 256, 128, 64],
        "l2": 0.01,
        "dropout": 0.5,
        "batch_norm_momentum": 0.99,
        "residual": False,
    },
    "train": {
        "epochs": 100,
        "batch_size": 64,
        "learning_rate": 0.001,
        "optimizer": "adam",
        "weight_decay": None,
        "schedule": "plateau",
        "warmup_epochs": 0,
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "ema": 0.0,
        "augment": {"flip": False, "shift": 0.0, "rotation": 0.0, "zoom": 0.0, "crop": 0, "erase": 0.0},
        "distill": {"teachers": [], "weight": 0.5},
        "shuffle": True,
        "seed": None,
        "precision": "auto",
        "jit_compile": "auto",
        "feed": "auto",
        "steps_per_execution": 1,
        "scan_steps": 1,
        "validation_batch_size": None,
        "distribute": "auto",
        "cluster_timeout": 300,
    },
    "callbacks": {
        "reduce_lr": {"monitor": "val_loss", "factor": 0.9, "patience": 3},
        "early_stopping": {"enabled": False, "monitor": "val_acc", "min_delta": 0.0, "patience": 6},
        "checkpoint": {"monitor": "val_loss", "save_best_only": True},
    },
    "output": {"dir": "runs", "name": None, "tensorboard": False, "state_seconds": 30},
    "predict": {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 30, "margin": 0.1, "photo_detect_width": 1280,
                "video_detect_width": 320, "tta": "none"},
}

# Keys whose values are not of their default's type: null and what else they take.
TYPES = {
    "data.limit": (int, type(None)),
    "data.synthetic": (int, type(None)),
    "data.cache_dir": (str, type(None)),
    "train.seed": (int, type(None)),
    "train.validation_batch_size": (int, type(None)),
    "train.jit_compile": (bool, str),
    "train.cluster_timeout": (int, float),
    "train.weight_decay": (int, float, type(None)),
    "output.name": (str, type(None)),
    "output.state_seconds": (int, float),
    "predict.photo_detect_width": (int, type(None)),
    "predict.video_detect_width": (int, type(None)),
}
CHOICES = {
    "data.protocol": ("notebook", "standard", "retrain"),
    "train.optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "train.schedule": ("plateau", "cosine"),
    "train.precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "train.distribute": ("auto", "none", "mirrored", "multi_worker"),
    "train.feed": ("auto", "host", "device"),
    "predict.tta": ("none", "flip", "tencrop"),
}
# The list keys that hold file paths (every other list holds positive integers).
PATH_LISTS = {"train.distill.teachers"}
# Values that older configs spell by another name (data.protocol "seed" was the notebook's split).
RENAMED = {"data.protocol": {"seed": "notebook"}}
# The notebook (Keras 2) spelled accuracy "acc"; Keras 3 calls it "accuracy".
MONITORS = {"loss": "loss", "val_loss": "val_loss", "accuracy": "accuracy", "val_accuracy": "val_accuracy",
            "acc": "accuracy", "val_acc": "val_accuracy"}


def monitor_name(monitor):
    """The Keras 3 log key for a configured monitor (val_acc -> val_accuracy)."""
    return MONITORS[monitor]


def monitor_mode(monitor):
    return "min" if monitor_name(monitor).endswith("loss") else "max"


def load_config(path=None, overrides=()):
    """DEFAULTS, then the YAML file at `path` (if any), then `key=value` overrides; validated."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        merge(config, read_yaml(path), source=str(path))
    for item in overrides:
        key, value = parse_override(item)
        set_key(config, key, value, source="--set")
    validate(config)
    return config


def config_beside(checkpoint, overrides=()):
    """The config of the run a checkpoint belongs to (its config.yaml beside it), else the defaults; then --set."""
    run_config = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.yaml")
    return load_config(run_config if os.path.isfile(run_config) else None, overrides)


def read_yaml(path, what="config file"):
    try:
        with open(path, encoding="utf-8") as f:
            # A config is a few kB; YAML's parser would take minutes over a dataset given in its place.
            size = os.fstat(f.fileno()).st_size
            if size > 2**20:
                hint = " (the data's path is data.path: --set data.path=...)" if ".csv" in str(path).lower() else ""
                raise UserError(f"{what} {path} is {size / 2**20:.0f} MiB: not a config, which is a few kB of "
                                f"YAML{hint}")
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise UserError(f"{what} {path} cannot be read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected sections such as 'data:' and 'train:', found a {type(data).__name__}")
    return data


def merge(config, updates, source, prefix=""):
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in config:
            raise UserError(f"{source}: unknown {'section' if not prefix else 'key'} '{dotted}'")
        if isinstance(config[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{dotted}' is a section and needs keys below it, got {value!r}")
            merge(config[key], value, source, prefix=f"{dotted}.")
        else:
            config[key] = value


def parse_override(item):
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    kinds = kinds_of(key)
    if type(value) in (bool, int, float) and str in kinds and not {bool, int, float} & set(kinds):
        value = text.strip()  # a text key: output.name=2024 or =no is that name, not YAML's number or boolean
    return key, value


def kinds_of(key):
    """The types a dotted key takes (TYPES, else its default's), or () for an unknown key."""
    defaults = flatten(DEFAULTS)
    return TYPES.get(key, (type(defaults[key]),)) if key in defaults else ()


def set_key(config, dotted, value, source):
    *sections, leaf = dotted.split(".")
    node = config
    for depth, section in enumerate(sections):
        if not isinstance(node.get(section), dict):
            raise UserError(f"{source}: unknown {'section' if depth == 0 else 'key'} '{'.'.join(sections[:depth + 1])}'")
        node = node[section]
    if leaf not in node:
        raise UserError(f"{source}: unknown key '{dotted}'")
    if isinstance(node[leaf], dict):
        raise UserError(f"{source}: '{dotted}' is a section; set one of its keys, e.g. {dotted}.{next(iter(node[leaf]))}=...")
    node[leaf] = value


def get_key(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def flatten(config, prefix=""):
    """{'train.epochs': 100, ...}: every leaf key with its dotted name."""
    items = {}
    for key, value in config.items():
        if isinstance(value, dict):
            items.update(flatten(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def _type_name(kind):
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            type(None): "null"}[kind]


def check_type(key, value, kinds):
    def fits(kind):
        if kind is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, kind)

    if not any(fits(kind) for kind in kinds):
        raise UserError(f"config: '{key}' must be {' or '.join(map(_type_name, kinds))}, got {value!r}")


def coerce(value, kinds):
    """PyYAML (YAML 1.1) reads 1e-4 as a string, and 1 as an integer: a number-typed key takes the number it
    spells, as a float (Keras's optimizers refuse an integer learning rate)."""
    if float in kinds and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if float in kinds and int not in kinds and type(value) is int:
        return float(value)
    return value


def validate(config):
    """Types from DEFAULTS (or TYPES), then the values that cannot work; returns the config, values coerced."""
    for key, value in flatten(config).items():
        kinds = kinds_of(key)
        value = coerce(value, kinds)
        value = RENAMED.get(key, {}).get(value, value) if isinstance(value, str) else value
        set_key(config, key, value, source="config")
        check_type(key, value, kinds)
        if key in PATH_LISTS:
            if not all(isinstance(item, str) and item.strip() for item in value):
                raise UserError(f"config: '{key}' must be a list of file paths, got {value!r}")
        elif list in kinds and not all(isinstance(item, int) and not isinstance(item, bool) and item > 0
                                       for item in value):
            raise UserError(f"config: '{key}' must be a list of positive integers, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"config: '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    require = _requirement(config)
    check_training_values(config, require)
    check_other_values(config, require)
    return config


def _requirement(config):
    """require(ok, key, what): one UserError naming the key, what it must be and what it is, unless ok."""
    def require(ok, key, what):
        if not ok:
            raise UserError(f"config: '{key}' {what}, got {get_key(config, key)!r}")

    return require


def check_training_values(config, require):
    """The data, model and train values that cannot work."""
    require(0 < config["data"]["validation_split"] < 1, "data.validation_split", "must be between 0 and 1 (exclusive)")
    for key in ("data.limit", "data.synthetic"):
        value = get_key(config, key)
        require(value is None or value > 0, key, "must be a positive integer or null")
    require(len(config["model"]["filters"]) >= 1, "model.filters", "needs at least one entry")
    require(config["model"]["l2"] >= 0, "model.l2", "must be >= 0")
    require(0 <= config["model"]["dropout"] < 1, "model.dropout", "must be in [0, 1)")
    require(0 <= config["model"]["batch_norm_momentum"] < 1, "model.batch_norm_momentum", "must be in [0, 1)")
    require(config["train"]["epochs"] > 0, "train.epochs", "must be > 0")
    require(config["train"]["batch_size"] > 0, "train.batch_size", "must be > 0")
    require(config["train"]["learning_rate"] > 0 and math.isfinite(config["train"]["learning_rate"]),
            "train.learning_rate", "must be > 0")
    require(0 <= config["train"]["warmup_epochs"] < config["train"]["epochs"], "train.warmup_epochs",
            "must be >= 0 and below train.epochs")
    require(config["train"]["cluster_timeout"] > 0, "train.cluster_timeout", "must be > 0 (seconds)")
    require(0 <= config["train"]["label_smoothing"] < 1, "train.label_smoothing", "must be in [0, 1)")
    require(config["train"]["mixup"] >= 0, "train.mixup", "must be >= 0 (0: off; else Beta(mixup, mixup))")
    require(config["train"]["cutmix"] >= 0, "train.cutmix", "must be >= 0 (0: off; else Beta(cutmix, cutmix))")
    require(not (config["train"]["mixup"] and config["train"]["cutmix"]), "train.cutmix",
            "must be 0 while train.mixup is on (one way to mix pairs of faces at a time)")
    require(0 <= config["train"]["ema"] < 1, "train.ema", "must be in [0, 1) (0: off; else the average's momentum)")
    require(config["train"]["steps_per_execution"] >= 1, "train.steps_per_execution", "must be >= 1")
    require(config["train"]["scan_steps"] >= 1, "train.scan_steps", "must be >= 1 (1: off)")
    decay = config["train"]["weight_decay"]
    require(decay is None or decay >= 0, "train.weight_decay", "must be >= 0, or null (the optimizer's default)")
    size = config["train"]["validation_batch_size"]
    require(size is None or size > 0, "train.validation_batch_size", "must be > 0, or null (train.batch_size)")
    require(0 <= config["train"]["distill"]["weight"] <= 1, "train.distill.weight", "must be in [0, 1]")
    for key, most in (("shift", 0.5), ("rotation", 180), ("zoom", 0.5), ("erase", 1)):
        require(0 <= config["train"]["augment"][key] <= most, f"train.augment.{key}", f"must be in [0, {most}]")
    crop = config["train"]["augment"]["crop"]
    require(crop == 0 or (24 <= crop < 48 and crop % 2 == 0), "train.augment.crop",
            "must be 0 (off) or an even size from 24 to 46")


def check_other_values(config, require):
    """The callbacks, predict and output values that cannot work."""
    for name in ("reduce_lr", "early_stopping", "checkpoint"):
        key = f"callbacks.{name}.monitor"
        require(get_key(config, key) in MONITORS, key, f"must be one of {', '.join(MONITORS)}")
    for name in ("reduce_lr", "early_stopping"):
        key = f"callbacks.{name}.patience"
        require(get_key(config, key) >= 0, key, "must be >= 0")
    require(0 < config["callbacks"]["reduce_lr"]["factor"] < 1, "callbacks.reduce_lr.factor", "must be between 0 and 1")
    if config["data"]["protocol"] == "retrain":  # no validation faces: no callback in use may watch them
        in_use = {"checkpoint": config["callbacks"]["checkpoint"]["save_best_only"],
                  "reduce_lr": config["train"]["schedule"] == "plateau",
                  "early_stopping": config["callbacks"]["early_stopping"]["enabled"]}
        watching = [f"callbacks.{name}.monitor" for name, used in in_use.items()
                    if used and monitor_name(config["callbacks"][name]["monitor"]).startswith("val_")]
        if watching:
            raise UserError(f"config: data.protocol retrain has no validation faces, so {' and '.join(watching)} "
                            "cannot watch them: set loss or accuracy (or callbacks.checkpoint.save_best_only false, "
                            "which keeps the last epoch)")
    require(config["callbacks"]["early_stopping"]["min_delta"] >= 0, "callbacks.early_stopping.min_delta", "must be >= 0")
    require(config["predict"]["scale_factor"] > 1, "predict.scale_factor", "must be > 1")
    require(config["predict"]["min_neighbors"] >= 0, "predict.min_neighbors", "must be >= 0")
    require(config["predict"]["min_size"] > 0, "predict.min_size", "must be > 0")
    require(0 <= config["predict"]["margin"] <= 1, "predict.margin", "must be in [0, 1]")
    for key in ("photo_detect_width", "video_detect_width"):
        width = config["predict"][key]
        require(width is None or width >= 24, f"predict.{key}", "must be 24 or more, or null (full size)")
    jit_compile = config["train"]["jit_compile"]
    require(jit_compile == "auto" or isinstance(jit_compile, bool), "train.jit_compile", "must be auto, true or false")
    require(config["data"]["cache_dir"] is None or config["data"]["cache_dir"].strip() != "", "data.cache_dir",
            "must be auto, a folder or null")
    require(config["output"]["dir"].strip() != "", "output.dir", "must not be empty")
    require(config["output"]["state_seconds"] >= 0, "output.state_seconds", "must be >= 0 (0: after every epoch)")
    name = config["output"]["name"]
    require(name is None or (name.strip() not in ("", ".", "..") and "/" not in name and "\\" not in name),
            "output.name", "must be a plain folder name")


def dump(config):
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
