"""tune.py's search file: the space (config keys and their ranges or choices), the tuner, the objective and the
budget, every entry checked before a trial starts, and declared as KerasTuner hyper-parameters.
"""
import copy
import json
import math
import os

from common import UserError
from config import (DEFAULTS, MONITORS, TYPES, coerce, flatten, monitor_mode, monitor_name, read_yaml, set_key,
                    validate)


SEARCH_DEFAULTS = {"name": None, "tuner": "random", "objective": "val_accuracy", "direction": None,
                   "max_trials": 10, "epochs": None, "factor": 3, "seed": None, "space": None}


TUNERS = ("random", "bayesian", "hyperband")


def _choice_labels(values):
    """KerasTuner's Choice takes numbers, strings or booleans of one type; other values go by a JSON label."""
    plain = len({type(v) for v in values}) == 1 and isinstance(values[0], (int, float, str))
    return values if plain else [json.dumps(v) for v in values]


def config_value(search, key, drawn):
    """The config value that a value KerasTuner drew for `key` stands for."""
    values = search["choices"].get(key)
    if values is not None:
        return values[_choice_labels(values).index(drawn)]
    if isinstance(drawn, float):
        return float(f"{drawn:.6g}")  # 0.3, not 0.30000000000000004 from a step
    return drawn


def load_search(path, base_config, **overrides):
    """The search file, checked: every key known, every range non-empty, every value one the config takes.
    `overrides` (max_trials, epochs) replace the file's values unless None."""
    spec = read_yaml(path, what="search file")
    unknown = [key for key in spec if key not in SEARCH_DEFAULTS]
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (a search file has {', '.join(SEARCH_DEFAULTS)})")
    search = {**SEARCH_DEFAULTS, **spec, **{key: value for key, value in overrides.items() if value is not None}}
    if search["name"] is None:
        search["name"] = os.path.splitext(os.path.basename(path))[0]
    name = search["name"]
    if not isinstance(name, str) or name.strip() in ("", ".", "..") or "/" in name or "\\" in name:
        raise UserError(f"{path}: 'name' must be a plain folder name, got {name!r}")
    if search["tuner"] not in TUNERS:
        raise UserError(f"{path}: unknown tuner {search['tuner']!r} (random, bayesian or hyperband)")
    if search["objective"] not in MONITORS:
        raise UserError(f"{path}: 'objective' must be one of {', '.join(MONITORS)}, got {search['objective']!r}")
    search["objective"] = monitor_name(search["objective"])
    if base_config["data"]["protocol"] == "retrain" and search["objective"].startswith("val_"):
        raise UserError(f"{path}: objective {search['objective']} needs validation faces, which data.protocol "
                        "retrain has none of")
    if search["direction"] is None:
        search["direction"] = monitor_mode(search["objective"])
    if search["direction"] not in ("min", "max"):
        raise UserError(f"{path}: 'direction' must be min or max, got {search['direction']!r}")
    for key, least in (("max_trials", 1), ("epochs", 1), ("factor", 2)):
        value = search[key]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise UserError(f"{path}: '{key}' must be an integer >= {least}, got {value!r}")
    if search["seed"] is not None and (not isinstance(search["seed"], int) or isinstance(search["seed"], bool)):
        raise UserError(f"{path}: 'seed' must be an integer or null, got {search['seed']!r}")
    if search["epochs"] is None:
        search["epochs"] = base_config["train"]["epochs"]
    if not isinstance(search["space"], dict) or not search["space"]:
        raise UserError(f"{path}: 'space' must map config keys to ranges or choices, e.g. "
                        "train.learning_rate: {min: 1.0e-4, max: 1.0e-2, sampling: log}")
    from keras_tuner import HyperParameters

    search["hyperparameters"], search["choices"] = HyperParameters(), {}
    for key, entry in search["space"].items():
        parse_parameter(path, key, entry, base_config, search)
    search["keys"] = list(search["space"])
    return search


def parse_parameter(path, key, entry, base_config, search):
    """Check one entry of the search space and declare it in search["hyperparameters"]."""
    where = f"{path}: space '{key}'"
    defaults = flatten(DEFAULTS)
    if key not in defaults:
        raise UserError(f"{where}: unknown config key (keys look like train.learning_rate or model.dropout)")
    if key == "train.epochs" or key.startswith("output."):
        raise UserError(f"{where}: set by the search itself (its 'epochs' and 'name'), not searchable")
    kinds = TYPES.get(key, (type(defaults[key]),))
    if isinstance(entry, list):
        entry = {"values": entry}
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a list of values or {{min: .., max: .., step: .., sampling: linear|log}}, "
                        f"got {entry!r}")
    allowed = {"values"} if "values" in entry else {"min", "max", "step", "sampling"}
    extra = [name for name in entry if name not in allowed]
    if extra:
        raise UserError(f"{where}: unknown field '{extra[0]}' (a choice has values; a range has min, max, step, "
                        "sampling)")
    declare = parse_choice if "values" in entry else parse_range
    for value in declare(where, key, entry, kinds, search):
        trial = copy.deepcopy(base_config)
        set_key(trial, key, copy.deepcopy(value), source=where)
        try:
            validate(trial)
        except UserError as error:
            raise UserError(f"{where}: {error}".replace(f"config: '{key}' ", "")) from None


def parse_choice(where, key, entry, kinds, search):
    """Declare a choice among entry["values"]; returns the values, which the config must each take."""
    values = entry["values"]
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: empty choice: give at least one value")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise UserError(f"{where}: a value is listed twice")
    search["hyperparameters"].Choice(key, _choice_labels(values))
    search["choices"][key] = values
    return values


def parse_range(where, key, entry, kinds, search):
    """Declare a numeric range (min, max, step, sampling); returns its ends, which the config must each take."""
    if not (int in kinds or float in kinds) or bool in kinds:
        raise UserError(f"{where}: a range needs a numeric key; list the values to choose from instead")
    kind = int if int in kinds and float not in kinds else float
    if "min" not in entry or "max" not in entry:
        raise UserError(f"{where}: a range needs min and max")
    low, high = (_number(where, name, entry[name], kind) for name in ("min", "max"))
    if not low < high:
        raise UserError(f"{where}: empty range: min {low!r} must be below max {high!r}")
    sampling = entry.get("sampling", "linear")
    if sampling not in ("linear", "log"):
        raise UserError(f"{where}: sampling must be linear or log, got {sampling!r}")
    if sampling == "log" and low <= 0:
        raise UserError(f"{where}: a log range needs min > 0, got {low!r}")
    step = entry.get("step")
    if step is not None:
        step = _number(where, "step", step, kind)
        if step <= 0:
            raise UserError(f"{where}: step must be > 0, got {step!r}")
    elif kind is int:
        step = 1
    declare = search["hyperparameters"].Int if kind is int else search["hyperparameters"].Float
    declare(key, low, high, step=step, sampling=sampling)
    return [low, high]


def _number(where, name, value, kind):
    value = coerce(value, (float,))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a number, got {value!r}")
    if kind is int:
        if value != int(value):
            raise UserError(f"{where}: {name} must be an integer for this key, got {value!r}")
        return int(value)
    return float(value)
