"""Hyper-parameter search with KerasTuner over any config key; every trial is a normal train.py run.

    python tune.py --config config.yaml --search configs/search.yaml [--set KEY=VALUE ...]

The search file names the space (config keys and their ranges or choices), the tuner (random, bayesian,
hyperband), the objective and the budget. Trials live in output.dir/<search name>/trial_<id>/run/, beside
KerasTuner's own state; running the same command again resumes an interrupted search (an interrupted trial
goes on from its last complete epoch). A finished search writes best.yaml (a complete config: python
train.py --config best.yaml reruns the winner), trials.csv and search.png. Trials are scored on the
validation rows only; the test split is never looked at while searching.

Many machines, with KerasTuner's distributed mode: the same command everywhere, with
KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT set to the chief's address, KERASTUNER_TUNER_ID=chief on the
one that hands out trials and records them, tuner0, tuner1, ... on the workers that train them.
"""
if __name__ == "__main__":  # first, before the imports below bring in Keras
    from common import start_backend

    start_backend()

import argparse
import copy
import gc
import json
import os
import shlex
import shutil
import signal
import sys
import time

import numpy as np

import train
from common import (UserError, exit_on_user_error, native_stderr_held, pyplot, replaced_atomically, save_figure,
                    signal_at, write_text)
from config import DEFAULTS, dump, flatten, load_config, read_yaml, set_key, validate
from resume import STATE, Interrupted, SignalGuard, SignalInterrupt, read_state
from search_space import SEARCH_DEFAULTS, config_value, load_search

try:
    with native_stderr_held():
        import keras_tuner
except ImportError:
    if __name__ != "__main__":
        raise
    print("error: tune.py needs KerasTuner: pip install -r requirements-dev.txt (or pip install keras-tuner)",
          file=sys.stderr)
    sys.exit(2)

RUN = "run"  # each trial's run directory, inside KerasTuner's trial_<id> folder


def make_oracle(search):
    hp = keras_tuner.HyperParameters.from_config(search["hyperparameters"].get_config())
    objective = keras_tuner.Objective(search["objective"], search["direction"])
    common = dict(objective=objective, hyperparameters=hp, allow_new_entries=False, tune_new_entries=False,
                  seed=search["seed"])
    if search["tuner"] == "hyperband":
        return keras_tuner.oracles.HyperbandOracle(max_epochs=search["epochs"], factor=search["factor"],
                                                   hyperband_iterations=1, **common)
    oracle = (keras_tuner.oracles.BayesianOptimizationOracle if search["tuner"] == "bayesian"
              else keras_tuner.oracles.RandomSearchOracle)
    return oracle(max_trials=search["max_trials"], **common)


class SearchStopped(keras_tuner.errors.FatalError):
    """Ends the search loop (KerasTuner would count any other exception as a failed trial and go on)."""

    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


def trial_config(base_config, search, values, trial_dir):
    """The base config with this trial's values, its epochs, and its run directory."""
    config = copy.deepcopy(base_config)
    for key in search["keys"]:
        set_key(config, key, copy.deepcopy(config_value(search, key, values[key])), source="search")
    config["train"]["epochs"] = values.get("tuner/epochs", search["epochs"]) - values.get("tuner/initial_epoch", 0)
    config["output"]["dir"], config["output"]["name"] = trial_dir, RUN
    return validate(config)


class TrainingTuner(keras_tuner.Tuner):
    """KerasTuner's loop, with each trial run by train.train: the same data, callbacks, precision and devices
    as python train.py."""

    def __init__(self, base_config, search, **kwargs):
        self.base_config, self.search_spec = base_config, search
        super().__init__(oracle=make_oracle(search), directory=base_config["output"]["dir"],
                         project_name=search["name"], **kwargs)

    def on_search_begin(self):
        self.save()  # so that a search stopped inside its first trial reloads, and retries that trial

    def on_trial_begin(self, trial):
        StopBetweenTrials.check()  # the trial stays "ongoing": a resumed search runs it
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        StopBetweenTrials.check()

    def run_trial(self, trial, *args, **kwargs):
        import keras

        signal_at(f"trial {trial.trial_id}")
        keras.backend.clear_session()
        values = trial.hyperparameters.values
        trial_dir = self.get_trial_dir(trial.trial_id)
        run_dir = os.path.join(trial_dir, RUN)
        config = trial_config(self.base_config, self.search_spec, values, trial_dir)
        seconds_file = os.path.join(trial_dir, "seconds")
        seconds = float(_read(seconds_file) or 0)
        started = time.monotonic()
        try:
            state = self._earlier_run(run_dir, config)
            if state is None:
                parent = values.get("tuner/trial_id")  # Hyperband: go on from the trial this one continues
                parent_weights = os.path.join(self.get_trial_dir(parent), RUN, "last.keras") if parent else None
                init = (parent_weights, None) if parent_weights and os.path.isfile(parent_weights) else None
                if parent and init is None:
                    config["train"]["epochs"] = values["tuner/epochs"]  # its parent ran elsewhere: start over
                train.train(config, evaluate_after=False, init_weights=init)
            elif not state.get("finished"):
                train.resume(run_dir, evaluate_after=False)
        except (Interrupted, UserError) as stop:
            raise SearchStopped(stop) from None
        finally:
            seconds += time.monotonic() - started
            write_text(seconds_file, str(seconds))
        parent_epochs = values.get("tuner/epochs", config["train"]["epochs"]) - config["train"]["epochs"]
        return trial_metrics(run_dir, self.search_spec, seconds, parent_epochs)

    @staticmethod
    def _earlier_run(run_dir, config):
        """The state of this trial's run from before an interruption, if it can go on; else None (and no run)."""
        if not os.path.isdir(run_dir):
            return None
        state_file = os.path.join(run_dir, STATE)
        if os.path.isfile(state_file):
            if not differing(read_yaml(os.path.join(run_dir, "config.yaml")), config, DEFAULTS):
                print(f"trial run {run_dir}: going on from its last complete epoch")
                return read_state(run_dir)
        shutil.rmtree(run_dir)  # killed before its first epoch, or a different trial's: start afresh
        return None

    def save_model(self, trial_id, model, step=0):
        pass  # train.train saved the trial's models in its run directory


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def trial_metrics(run_dir, search, seconds, parent_epochs=0):
    """What the trial reports to the oracle: the metrics of its best epoch by the objective, the epochs its
    weights have trained (Hyperband: its parent's too) and its time. (KerasTuner's own Keras tuners score a
    trial by its best epoch too.)"""
    import pandas as pd

    history = pd.read_csv(os.path.join(run_dir, "history.csv"))
    objective = history[search["objective"]]
    best = history.loc[objective.idxmax() if search["direction"] == "max" else objective.idxmin()]
    metrics = {name: float(best[name]) for name in ("loss", "accuracy", "val_loss", "val_accuracy") if name in best}
    return {**metrics, "epochs": float(parent_epochs + len(history)), "seconds": round(seconds, 1)}


def differing(earlier, now, defaults):
    """The dotted keys whose values differ between a record an earlier run wrote and now. A key missing from the
    record is one that the code which wrote it did not have yet: that code ran as the key's default does."""
    earlier, now, defaults = (flatten(json.loads(json.dumps(part))) for part in (earlier, now, defaults))
    before = {**{key: defaults[key] for key in now if key in defaults}, **earlier}
    return sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))


def check_same_search(search_dir, base_config, search):
    """A rerun resumes the search in search_dir only if it is the same search (max_trials may grow)."""
    settings = {"config": base_config, "search": {key: search[key] for key in SEARCH_DEFAULTS if key != "max_trials"}}
    settings = json.loads(json.dumps(settings))
    path = os.path.join(search_dir, "search.json")
    earlier = _read(path)
    if earlier is not None:
        earlier = json.loads(earlier)
        for part, defaults in (("search", SEARCH_DEFAULTS), ("config", DEFAULTS)):
            keys = differing(earlier[part], settings[part], defaults)
            if keys:
                raise UserError(f"{search_dir} holds a search with another {part} ({keys[0]} differs): "
                                "give this one another name (the search file's 'name')")
        return True
    os.makedirs(search_dir, exist_ok=True)
    write_text(path, json.dumps(settings, indent=1))
    return False


def write_results(tuner, search, base_config, search_dir):
    """trials.csv, best.yaml and search.png from the oracle's record of every trial."""
    import pandas as pd

    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        row = {"trial": trial.trial_id, "status": trial.status}
        for key in search["keys"]:
            drawn = trial.hyperparameters.values.get(key)
            row[key] = None if drawn is None else config_value(search, key, drawn)
        for name in (search["objective"], "epochs", "seconds"):
            value = trial.metrics.get_best_value(name) if trial.metrics.exists(name) else None
            row[name] = value
        row["run"] = os.path.join(f"trial_{trial.trial_id}", RUN)
        rows.append(row)
    table = pd.DataFrame(rows)
    with replaced_atomically(os.path.join(search_dir, "trials.csv")) as temporary:
        table.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v).to_csv(temporary, index=False)
    done = [row for row in rows if row["status"] == "COMPLETED" and row[search["objective"]] is not None]
    if not done:
        raise UserError(f"{search_dir}: no trial completed, so there is no best config (see trials.csv)")
    best = (max if search["direction"] == "max" else min)(done, key=lambda row: row[search["objective"]])
    config = copy.deepcopy(base_config)
    for key in search["keys"]:
        set_key(config, key, copy.deepcopy(best[key]), source="search")
    config["train"]["epochs"] = search["epochs"]
    config["output"]["name"] = None
    header = (f"# tune.py search '{search['name']}' ({search['tuner']}): the best of {len(done)} completed trials is "
              f"trial {best['trial']}, {search['objective']} {best[search['objective']]:.4f}\n"
              f"# its run: {os.path.join(search_dir, best['run'])}\n"
              f"# rerun it in full: python train.py --config {os.path.join(search_dir, 'best.yaml')}\n")
    write_text(os.path.join(search_dir, "best.yaml"), header + dump(validate(config)))
    plot_search(pd.DataFrame(done), search, os.path.join(search_dir, "search.png"))
    return best


def importance(values, objective):
    """How much of the objective's spread a hyper-parameter accounts for, in [0, 1]: the squared rank
    correlation for a range, the share of variance between the groups for a choice."""
    import pandas as pd

    objective = pd.Series(objective).reset_index(drop=True)
    values = pd.Series(values).reset_index(drop=True)
    if objective.nunique() < 2 or values.nunique() < 2:
        return 0.0
    if pd.api.types.is_numeric_dtype(values):
        return float(np.corrcoef(values.rank(), objective.rank())[0, 1] ** 2)
    groups = objective.groupby(values)
    between = (groups.count() * (groups.mean() - objective.mean()) ** 2).sum()
    return float(between / ((objective - objective.mean()) ** 2).sum())


def _label(value):
    return value if isinstance(value, str) else json.dumps(value)


def plot_search(done, search, path, most=4):
    """The objective against each of the (up to `most`) hyper-parameters that matter most."""
    plt = pyplot()
    objective = done[search["objective"]].astype(float)
    decoded = {}
    for key in search["keys"]:
        choices = search["choices"].get(key)
        numeric = choices is None or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in choices)
        decoded[key] = done[key].astype(float) if numeric else done[key].map(_label)
    ranked = sorted(search["keys"], key=lambda key: importance(decoded[key], objective), reverse=True)[:most]
    sampling = {p.name: p.get_config().get("sampling") for p in search["hyperparameters"].space}
    figure, axes = plt.subplots(1, len(ranked), figsize=(4.2 * len(ranked), 3.8), squeeze=False)
    for ax, key in zip(axes[0], ranked):
        values = decoded[key]
        if values.dtype == object:
            labels = [_label(v) for v in search["choices"][key]]
            ax.scatter([labels.index(v) for v in values], objective)
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        else:
            ax.scatter(values, objective)
            if sampling[key] == "log":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel(key)
        ax.set_title(f"importance {importance(values, objective):.2f}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{search['objective']} (best epoch)")
    figure.suptitle(f"search '{search['name']}': {len(done)} trials", fontsize=11)
    figure.tight_layout()
    save_figure(figure, path)


def tune(base_config, search):
    """Run (or resume) the search; returns the search directory, or None on a worker."""
    search_dir = os.path.join(base_config["output"]["dir"], search["name"])
    # KerasTuner's distributed mode, as its documented variables set it: every tuner but the chief is a worker.
    worker = "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")
    if not worker:
        if check_same_search(search_dir, base_config, search):
            print(f"resuming the search in {search_dir}")
    budget = ("hyperband brackets" if search["tuner"] == "hyperband" else f"{search['max_trials']} trials")
    print(f"search '{search['name']}': {search['tuner']}, {budget} of up to {search['epochs']} epochs, "
          f"{search['direction']} {search['objective']} over {', '.join(search['keys'])}")
    tuner = TrainingTuner(base_config, search)
    if not worker:
        finished = sum(trial.status == "COMPLETED" for trial in tuner.oracle.trials.values())
        if finished:
            print(f"{finished} trial(s) already done")
    tuner.search()
    if worker:
        print(f"worker {os.environ['KERASTUNER_TUNER_ID']}: no trials left")
        return None
    best = write_results(tuner, search, base_config, search_dir)
    print(f"best: trial {best['trial']}, {search['objective']} {best[search['objective']]:.4f}; wrote "
          f"{search_dir}/best.yaml, trials.csv, search.png")
    return search_dir


class StopBetweenTrials(SignalGuard):
    """Ctrl-C and SIGTERM outside training stop the search at the next trial boundary (inside a trial,
    train.py's own handler stops at the end of a batch). An exception raised straight from a signal handler
    can land in a finalizer, which swallows it; a second signal is raised at once all the same."""

    keep_ignored = True  # a shell's background job ignores Ctrl-C
    received = None

    def __enter__(self):
        StopBetweenTrials.received = None
        return super().__enter__()

    def note(self, number):
        if StopBetweenTrials.received is not None:
            raise SignalInterrupt(number)
        StopBetweenTrials.received = number

    @classmethod
    def check(cls):
        if cls.received is not None:
            raise SearchStopped(SignalInterrupt(cls.received))


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yaml", help="the base config (default: config.yaml)")
    parser.add_argument("--search", required=True, help="the search file: space, tuner, objective, budget")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base config, e.g. --set data.limit=5000 (repeatable)")
    parser.add_argument("--max-trials", type=int, help="override the search file's max_trials")
    parser.add_argument("--epochs", type=int, help="override the search file's epochs per trial")
    args = parser.parse_args(argv)
    base_config = load_config(args.config, args.set)
    search = load_search(args.search, base_config, max_trials=args.max_trials, epochs=args.epochs)
    try:
        with StopBetweenTrials():
            tune(base_config, search)
        return 0
    except (SearchStopped, SignalInterrupt, KeyboardInterrupt) as stop:
        cause = getattr(stop, "cause", stop)
        if isinstance(cause, UserError):
            raise cause from None
        status = getattr(cause, "exit_status", None) or 128 + getattr(cause, "signal_number", signal.SIGINT)
    gc.collect()  # finalize the stopped trial's data pipeline while Python can still run its clean-up
    command = " ".join(shlex.quote(arg) for arg in (sys.argv[1:] if argv is None else argv))
    print(f"\nsearch interrupted; the same command resumes it: python tune.py {command}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
