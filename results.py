"""Keep a run's evidence in the repository: the files behind a published figure, and its curve over the notebook's.

    python results.py ~/fer2013-runs/seed                   # -> results/seed/ and results/seed_vs_notebook.png
    python results.py RUN --out results/NAME [--notebook-log ../shared/notebook/training_log.csv]
    python results.py results/seed --check fer2013.csv      # every metric, recomputed from the predictions
    python results.py table                                 # the README's Results table, from results/*/

Copies what train.py wrote (config.yaml, environment.json, history.csv, metrics*.json) and the predictions
(predictions.py: without the true-label column, gzipped, the faces' fingerprints kept once, so that the
repository stays small enough to travel to a lent GPU; FER2013's labels stay out of the repository, and anyone
with fer2013.csv recomputes every metric from the rest), writes checkpoints.sha256 for best.keras and last.keras and
summary.json (scores, plateau, validation accuracy at epochs 20/40/60/100, hours and CPU of each part of the
run, the epoch at which the notebook's EarlyStopping as written would have stopped it, the pace of its fastest
epoch after the first: faces/s, TFLOP/s, on a GPU the share of its peak), and draws the run's
validation curve over the published one. An unfinished run gets its curve and history only, so that the
epochs done so far outlast the machine they ran on.
"""
import argparse
import glob
import json
import os
import shlex
import sys

import numpy as np

import predictions
from common import (UserError, exit_on_user_error, pyplot, save_figure, sha256, start_backend,
                    without_home, write_text)
from measure import gpu_names, run_pace

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK_LOG = os.path.join(HERE, "..", "shared", "notebook", "training_log.csv")
NOTEBOOK_SCORE = 0.63165  # the published PrivateTest accuracy of the final weights
MILESTONES = (20, 40, 60, 100)
COPIED = ("config.yaml", "environment.json", "history.csv")


def _read_json(folder, name):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        return json.load(f)


def read_history(path):
    """A run's history.csv, or the notebook's training_log.csv, as one table: epoch (1-based), loss, accuracy,
    val_loss, val_accuracy."""
    import pandas as pd

    table = pd.read_csv(path)
    if "val_acc" in table.columns:  # the notebook's log: Keras 2 names, epochs counted from 1
        return table.rename(columns={"acc": "accuracy", "val_acc": "val_accuracy"})
    return table.assign(epoch=table["epoch"] + 1)


def plateau_epochs(history):
    """How many epochs validation accuracy sat at its first value (every face called the majority class):
    the first epoch whose value differs from epoch 1's by more than 0.01, less one."""
    values = history["val_accuracy"].to_numpy()
    moved = np.flatnonzero(np.abs(values - values[0]) > 0.01)
    return int(moved[0]) if len(moved) else len(values)


def early_stopping_epoch(history, config_path=os.path.join(HERE, "configs", "notebook-as-written.yaml")):
    """The epoch after which the config's EarlyStopping would have ended this very run (None: it never acts), by
    replaying Keras's own callback over the logged epochs. Stopping changes nothing before it acts, so a run
    without it tells exactly when a run with it would stop."""
    from config import load_config, monitor_mode, monitor_name

    import keras

    options = load_config(config_path)["callbacks"]["early_stopping"]
    stopping = keras.callbacks.EarlyStopping(monitor=monitor_name(options["monitor"]), min_delta=options["min_delta"],
                                             patience=options["patience"], mode=monitor_mode(options["monitor"]))
    stopping.set_model(type("Run", (), {"stop_training": False})())
    stopping.on_train_begin()
    for _, row in history.iterrows():
        stopping.on_epoch_end(int(row["epoch"]) - 1, {column: float(row[column]) for column in history.columns})
        if stopping.model.stop_training:
            return int(row["epoch"])
    return None


def parts(run_dir, history):
    """Each start of the run (the first and every resume): when, on which CPU and precision, which epochs, and
    the hours its complete epochs took (time lost in an epoch cut short by an interruption is not counted)."""
    record = _read_json(run_dir, "environment.json")
    starts = [record] + record.get("resumes", [])
    firsts = [start.get("epochs_done_at_start") for start in starts]
    seconds = history["seconds"].to_numpy() if "seconds" in history.columns else None
    found = []
    for index, start in enumerate(starts):
        first, end = firsts[index], (firsts[index + 1] if index + 1 < len(firsts) else len(history))
        part = {key: start.get(key) for key in ("started", "commit", "cpu", "cpu_family_model", "cpu_bfloat16",
                                                "precision", "onednn", "devices", "environment_variables")}
        if first is not None and end is not None and end >= first:
            part["epochs"] = [first + 1, end] if end > first else []
            if seconds is not None and end > first:
                part["hours"] = round(float(np.nansum(seconds[first:end])) / 3600, 3)
        found.append(part)
    return found


def started_from(run_dir):
    """The checkpoint a run's weights started from (train.py --init-weights), or None: a random initialisation.
    Runs recorded before environment.json kept it say so in their command line only."""
    record = _read_json(run_dir, "environment.json")
    if "init_weights" in record:
        return record["init_weights"]
    words = shlex.split(record.get("command") or "")
    for flag, value in zip(words, words[1:]):
        if flag == "--init-weights":
            return {"path": value}
    return None


def finished(run_dir):
    """Whether train.py marked the run finished (its state.json), so that a run fetched from another machine
    without its checkpoints still counts; runs without a state.json: whether last.keras exists."""
    import resume

    if os.path.isfile(os.path.join(run_dir, resume.STATE)):
        return bool(resume.read_state(run_dir).get("finished"))
    return os.path.exists(os.path.join(run_dir, "last.keras"))


def summarize(run_dir, history, notebook):
    from config import load_config

    start_backend()  # once, for the Keras that finished (resume.py) and early_stopping_epoch import
    epochs = load_config(os.path.join(run_dir, "config.yaml"))["train"]["epochs"]
    init_weights = started_from(run_dir)
    summary = {
        "run": os.path.basename(os.path.normpath(run_dir)),
        "finished": finished(run_dir),
        "epochs_done": len(history), "epochs": epochs,
        # data.protocol retrain holds no faces out: its history has no validation columns, and these stay null.
        "best_val_accuracy": None, "best_val_accuracy_epoch": None, "lowest_val_loss_epoch": None,
        "plateau_epochs": None, "val_accuracy_at": {}, "notebook_as_written_stops_after_epoch": None,
        "parts": parts(run_dir, history),
    }
    if "val_accuracy" in history:
        best = int(history["val_accuracy"].idxmax())
        summary.update({
            "best_val_accuracy": round(float(history["val_accuracy"][best]), 4), "best_val_accuracy_epoch": best + 1,
            "lowest_val_loss_epoch": int(history["val_loss"].idxmin()) + 1,
            # A run that starts from trained weights (--init-weights) never calls every face the majority class.
            "plateau_epochs": 0 if init_weights else plateau_epochs(history),
            "val_accuracy_at": {str(e): round(float(history["val_accuracy"][e - 1]), 4) for e in MILESTONES
                                if e <= len(history)},
            "notebook_as_written_stops_after_epoch": early_stopping_epoch(history)})
    if init_weights:
        summary["init_weights"] = init_weights
    if "seconds" in history.columns:
        seconds = float(np.nansum(history["seconds"]))  # the epochs' own, compile included
        summary["hours"], summary["seconds"] = round(seconds / 3600, 3), round(seconds, 1)
        pace = run_pace(_read_json(run_dir, "environment.json"), history["seconds"])
        summary.update({"pace": pace} if pace else {})
    for name, stem in (("final_weights", "metrics-last.json"), ("best_checkpoint", "metrics.json")):
        if os.path.exists(os.path.join(run_dir, stem)):
            metrics = _read_json(run_dir, stem)
            summary[f"{name}_{metrics['split']}_accuracy"] = round(metrics["accuracy"], 4)
    if notebook is not None:
        summary["notebook"] = {"PrivateTest_accuracy": NOTEBOOK_SCORE, "plateau_epochs": plateau_epochs(notebook),
                               "best_val_accuracy": round(float(notebook["val_accuracy"].max()), 4),
                               "val_accuracy_at": {str(e): float(notebook["val_accuracy"][e - 1]) for e in MILESTONES
                                                   if e <= len(notebook)}}
    return summary


def validation_phrase(summary):
    """The summary's best validation accuracy and its epoch, in words."""
    if summary["best_val_accuracy"] is None:
        return "no validation faces (data.protocol retrain)"
    return f"best validation accuracy {summary['best_val_accuracy']:.4f} (epoch {summary['best_val_accuracy_epoch']})"


def plot_against_notebook(history, notebook, summary, path):
    """Validation (and training) accuracy and loss per epoch, this run over the published one."""
    plt = pyplot()

    figure, (accuracy, loss) = plt.subplots(1, 2, figsize=(13, 5))
    runs = [("this run", history, "tab:blue")] + ([("notebook (published)", notebook, "tab:orange")]
                                                  if notebook is not None else [])
    for label, table, colour in runs:
        faint = dict(alpha=0.35, lw=1) if "val_accuracy" in table else {}  # the training curve, unless it is alone
        accuracy.plot(table["epoch"], table["accuracy"], color=colour, label=f"{label}: training", **faint)
        loss.plot(table["epoch"], table["loss"], color=colour, label=f"{label}: training", **faint)
        if "val_accuracy" not in table:  # data.protocol retrain: no validation curve
            continue
        accuracy.plot(table["epoch"], table["val_accuracy"], color=colour, label=f"{label}: validation")
        loss.plot(table["epoch"], table["val_loss"], color=colour, label=f"{label}: validation")
        plateau = summary["plateau_epochs"] if table is history else plateau_epochs(table)
        if plateau:
            accuracy.axvspan(0.5, plateau + 0.5, color=colour, alpha=0.08)
            accuracy.annotate(f"plateau: {plateau} epochs", (plateau + 0.5, table["val_accuracy"].iloc[0]),
                              xytext=(4, -14 if colour == "tab:blue" else 6), textcoords="offset points",
                              color=colour, fontsize=8)
        for epoch in MILESTONES:
            if epoch <= len(table):
                value = float(table["val_accuracy"].iloc[epoch - 1])
                others = [float(other["val_accuracy"].iloc[epoch - 1]) for _, other, _ in runs
                          if other is not table and epoch <= len(other) and "val_accuracy" in other]
                above = all(value >= other for other in others)  # the higher curve's label above, the other's below
                accuracy.plot([epoch], [value], "o", color=colour, ms=4)
                accuracy.annotate(f"{value:.3f}", (epoch, value), xytext=(-10, 8 if above else -14),
                                  textcoords="offset points", color=colour, fontsize=8)
    scores = [f"{summary['epochs_done']} of {summary['epochs']} epochs"]
    for key, label in (("final_weights_PrivateTest_accuracy", "final weights"),
                       ("best_checkpoint_PrivateTest_accuracy", "best checkpoint")):
        if key in summary:
            scores.append(f"PrivateTest {label} {summary[key]:.4f}")
    if notebook is not None:
        scores.append(f"notebook {NOTEBOOK_SCORE:.4f}")
    figure.suptitle(f"{summary['run']}: " + ", ".join(scores), fontsize=10)
    accuracy.set_title("accuracy (shaded: the majority-class plateau)", fontsize=9)
    loss.set_title("loss (with the L2 penalty)", fontsize=9)
    for ax in (accuracy, loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def copy_without_home(source, target):
    with open(source, encoding="utf-8") as f:
        write_text(target, without_home(f.read()))


def check_same_run(run_dir, out_dir):
    """out_dir may hold this run's earlier publication (published again as it goes on), never another run's: the
    files one run has and the other lacks (ten-crop scores, a teacher) would stay, and read as the new run's."""
    if not os.path.isfile(os.path.join(out_dir, "environment.json")):
        return
    theirs = _read_json(out_dir, "environment.json")
    ours = _read_json(run_dir, "environment.json") if os.path.isfile(os.path.join(run_dir, "environment.json")) else {}
    if any(without_home(str(ours.get(key))) != without_home(str(theirs.get(key))) for key in ("started", "command")):
        raise UserError(f"{out_dir} holds the results of another run (started {theirs.get('started')}): give "
                        "another --out, or remove that folder first")


def publish(run_dir, out_dir, notebook_log=NOTEBOOK_LOG):
    """Write out_dir/ and out_dir_vs_notebook.png from run_dir; returns the summary."""
    import pandas as pd

    if not os.path.isfile(os.path.join(run_dir, "history.csv")):
        raise UserError(f"{run_dir}: no history.csv (not a run directory, or no epoch finished yet)")
    history = read_history(os.path.join(run_dir, "history.csv"))
    notebook = read_history(notebook_log) if notebook_log and os.path.isfile(notebook_log) else None
    if notebook_log and notebook is None:
        print(f"{notebook_log} not found: the picture shows this run only")
    check_same_run(run_dir, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for name in COPIED:
        copy_without_home(os.path.join(run_dir, name), os.path.join(out_dir, name))
    for path in sorted(glob.glob(os.path.join(run_dir, "metrics*.json"))):
        copy_without_home(path, os.path.join(out_dir, os.path.basename(path)))
    predictions.write({os.path.basename(path): pd.read_csv(path).drop(columns=["true"])
                       for path in sorted(glob.glob(os.path.join(run_dir, "predictions*.csv")))}, out_dir)
    summary = summarize(run_dir, history, notebook)
    checksums = os.path.join(out_dir, "checkpoints.sha256")
    kept = [name for name in ("best.keras", "last.keras") if os.path.exists(os.path.join(run_dir, name))]
    if summary["finished"] and kept:
        write_text(checksums, "".join(f"{sha256(os.path.join(run_dir, name))}  {name}\n" for name in kept))
    elif os.path.exists(checksums):
        os.remove(checksums)  # a running run's best.keras is not the one its results will name
    write_text(os.path.join(out_dir, "summary.json"), without_home(json.dumps(summary, indent=2) + "\n"))
    picture = os.path.normpath(out_dir) + "_vs_notebook.png"
    plot_against_notebook(history, notebook, summary, picture)
    print(f"wrote {out_dir}/ and {picture}")
    return summary


PUBLISHED_ROW = ("the notebook (2018, Keras 2.1.6), published", "0.6317 / -", "-", "0.6263 (87)", "2.1",
                 "Colab K80, TensorFlow, float32", "-", "published")
TABLE_HEADER = ("run", "PrivateTest: final weights / best checkpoint", "ten crops: final / best",
                "best validation accuracy (epoch)", "hours", "machine, backend, precision", "commit", "status")


def _accuracy(folder, stem):
    return _read_json(folder, stem)["accuracy"] if os.path.isfile(os.path.join(folder, stem)) else None


def _figure(values):
    """One run's figure, or the mean ± sample standard deviation of several; '-' where a run lacks it."""
    if any(value is None for value in values):
        return "-"
    return f"{values[0]:.4f}" if len(values) == 1 else f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _command(environment):
    """(the config, its --set options but the data path and output ones, and the seed set there, if any)."""
    words = shlex.split(environment.get("command") or "")
    flags = {flag: value for flag, value in zip(words, words[1:]) if flag.startswith("--")}
    settings = [value for flag, value in zip(words, words[1:]) if flag == "--set"
                and not value.startswith(("data.path=", "output."))]
    if "--init-weights" in flags:
        settings.append("from " + "/".join(flags["--init-weights"].split("/")[-2:]))
    seeds = [value.split("=", 1)[1] for value in settings if value.startswith("train.seed=")]
    return flags.get("--config", "?"), settings, seeds[-1] if seeds else None


def _without_seed(settings):
    return [value for value in settings if not value.startswith("train.seed=")]


def _config_cell(config, settings):
    return f"`{config}`" + (f" ({', '.join(settings)})" if settings else "")


def table_row(*folders):
    """One row of the Results table from a results folder (its summary.json, environment.json and metrics*.json),
    or from several finished runs that differ in train.seed alone: then each figure is their mean ± sd."""
    summaries = [_read_json(folder, "summary.json") for folder in folders]
    environment, summary, part = _read_json(folders[0], "environment.json"), summaries[0], summaries[0]["parts"][0]
    config, settings, _ = _command(environment)
    named = ", ".join(f"`results/{summary['run']}/`" for summary in summaries)
    if len(folders) > 1:
        seeds = ", ".join(_command(_read_json(folder, "environment.json"))[2] for folder in folders)
        settings = _without_seed(settings)
        named = f"seeds {seeds}: {named}"
    scores = " / ".join(_figure([summary.get(key) for summary in summaries]) for key in
                        ("final_weights_PrivateTest_accuracy", "best_checkpoint_PrivateTest_accuracy"))
    tencrop = " / ".join(_figure([_accuracy(folder, stem) for folder in folders])
                         for stem in ("metrics-last-tencrop.json", "metrics-tencrop.json"))
    validation = _figure([summary["best_val_accuracy"] for summary in summaries])
    epochs = ", ".join(str(summary["best_val_accuracy_epoch"]) for summary in summaries)
    gpus = gpu_names(part.get("devices"))
    machine = gpus[-1] if gpus else \
        f"{environment.get('cpu_cores') or '?'}-core {part.get('cpu')} (family/model {part.get('cpu_family_model')})"
    precisions = ", ".join(sorted({p.get("precision") for s in summaries for p in s["parts"]}))
    commits = ", ".join(dict.fromkeys((p.get("commit") or "?")[:7] for s in summaries for p in s["parts"]))
    status = ("finished" if summary["finished"]
              else f"unfinished: {summary['epochs_done']} of {summary['epochs']} epochs")
    hours = f"{np.mean([summary['hours'] for summary in summaries]):.2f}"
    if len(folders) > 1:
        status, hours = f"finished; mean ± sd of {len(folders)} seeds", f"{hours} (mean)"
    return (f"{_config_cell(config, settings)}, {named}", scores, "-" if tencrop == "- / -" else tencrop,
            "-" if validation == "-" else f"{validation} ({epochs})", hours,
            f"{machine}, {environment.get('backend', '?')}, {precisions}", commits, status)


def results_table(folder=os.path.join(HERE, "results")):
    """The README's Results table, in Markdown: the published notebook, then every results/*/ folder; finished runs
    of one kind of machine that differ in train.seed alone share one row."""
    runs = sorted(os.path.dirname(path) for path in glob.glob(os.path.join(folder, "*", "summary.json")))
    alone, groups = {run: table_row(run) for run in runs}, {}
    for run, row in alone.items():
        config, settings, seed = _command(_read_json(run, "environment.json"))
        if seed is not None and row[-1] == "finished":
            groups.setdefault((config, *_without_seed(settings), row[5]), []).append(run)
        else:
            groups[run] = [run]
    rows = [TABLE_HEADER, ("---",) * len(TABLE_HEADER), PUBLISHED_ROW,
            *(alone[group[0]] if len(group) == 1 else table_row(*group) for group in groups.values())]
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the run directory train.py wrote (with --check: a results folder; 'table': "
                                    "print the README's Results table from results/*/)")
    parser.add_argument("--check", metavar="FER2013_CSV",
                        help="instead: recompute a results folder's metrics from its predictions and these labels")
    parser.add_argument("--out", help="default: results/<the run's name>")
    parser.add_argument("--notebook-log", default=NOTEBOOK_LOG,
                        help="the published training log (default: ../shared/notebook/training_log.csv)")
    args = parser.parse_args(argv)
    if args.run == "table":
        print(results_table(), end="")
        return 0
    if not os.path.isdir(args.run):
        raise UserError(f"{args.run}: no such folder")
    if args.check:
        for path in predictions.check(args.run, args.check):
            print(f"{path}: recomputes to its metrics")
        return 0
    out_dir = args.out or os.path.join(HERE, "results", os.path.basename(os.path.normpath(args.run)))
    summary = publish(args.run, out_dir, args.notebook_log)
    state = "finished" if summary["finished"] else "UNFINISHED"
    stop = summary["notebook_as_written_stops_after_epoch"]
    stop = f"would stop after epoch {stop}" if stop else f"would not stop within its {summary['epochs_done']} epochs"
    print(f"{summary['run']}: {state}, {summary['epochs_done']} of {summary['epochs']} epochs; "
          + validation_phrase(summary) + ("" if summary["best_val_accuracy"] is None else
                                          f"; plateau {summary['plateau_epochs']} epochs; notebook-as-written {stop}"))
    pace = summary.get("pace")
    if pace:
        peak = f", {pace['share_of_peak']:.1%} of {pace['peak']}" if pace.get("peak") else ""
        print(f"pace: {pace['epoch_seconds']} s an epoch, {pace['train_faces_per_second']:,.0f} training faces/s, "
              f"{pace['tflops']} TFLOP/s{peak}")
    for key in ("final_weights_PrivateTest_accuracy", "best_checkpoint_PrivateTest_accuracy"):
        if key in summary:
            print(f"{key}: {summary[key]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
