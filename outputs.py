"""What train.py writes beside its checkpoints: the run directory itself, environment.json, the notebook's own
export (model.json + model.weights.h5) and last.keras, curves.png, and the test split's scores.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata

import backends
import checkpoints
import evaluate
import resume as resume_lib
from common import UserError, pyplot, replaced_atomically, save_figure, write_text
from model import forward_flops

HERE = os.path.dirname(os.path.abspath(__file__))


def plan_run_dir(config, config_path):
    """output.dir/<name>: output.name, else <config name>-<date>-<time>; checked before anything is written."""
    output = config["output"]
    if output["name"]:
        run_dir = os.path.join(output["dir"], output["name"])
        if os.path.exists(run_dir):
            state_file = os.path.join(run_dir, resume_lib.STATE)
            if os.path.isfile(state_file) and not resume_lib.read_state(run_dir).get("finished"):
                raise UserError(f"{run_dir} holds an unfinished run: continue it with python train.py --resume "
                                f"{run_dir}, or choose another output.name")
            raise UserError(f"{run_dir} already exists: choose another output.name")
    else:
        stem = os.path.splitext(os.path.basename(config_path))[0] if config_path else "run"
        base = os.path.join(output["dir"], f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir, n = base, 1
        while os.path.exists(run_dir):
            n += 1
            run_dir = f"{base}-{n}"
    existing = os.path.abspath(run_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the run directory {run_dir}: {existing} is not a writable folder")
    return run_dir


def create_run_dir(run_dir, config, config_path):
    """Makes the planned run directory and returns it. Another run may have made it since plan_run_dir (two runs
    started in the same second): a named run then stops, an unnamed one takes the next free name. A folder this
    call did not make is never removed."""
    try:
        os.makedirs(os.path.dirname(run_dir) or ".", exist_ok=True)
        while True:
            try:
                os.mkdir(run_dir)
                break
            except FileExistsError:
                run_dir = plan_run_dir(config, config_path)
    except OSError as error:
        raise UserError(f"cannot write the run directory {run_dir}: {error.strerror}") from None
    try:
        probe = os.path.join(run_dir, ".writable")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as error:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(f"cannot write the run directory {run_dir}: {error.strerror}") from None
    return run_dir


def plot_curves(history_csv, path):
    """Loss and accuracy per epoch, train vs. validation (where the run had any)."""
    plt = pyplot()
    import pandas as pd

    history = pd.read_csv(history_csv)
    epochs = history["epoch"] + 1
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    save_figure(figure, path)


def save_exports(model, run_dir):
    """last.keras, and the notebook's own export: model.to_json() + the weights in HDF5. Keras 3's save_weights
    also stores a compiled model's optimizer state (Adam's two moments: 3x the weights, 5x under mixed_float16),
    so the export saves an uncompiled copy: the layers' weights alone, as the notebook's Keras 2 file held."""
    with replaced_atomically(os.path.join(run_dir, "last.keras")) as temporary:
        model.save(temporary)
    write_text(os.path.join(run_dir, "model.json"), model.to_json())
    weights_only = type(model).from_config(model.get_config())
    weights_only.set_weights(model.get_weights())
    weights = os.path.join(run_dir, "model.weights.h5")
    resume_lib.check_room(weights, weights_only.variables)
    with replaced_atomically(weights) as temporary:
        weights_only.save_weights(temporary)


def score(run_dir, model, test, kind="none"):
    """The notebook's last cell (the final weights on the test split), and the best checkpoint beside them."""
    if kind == "multi_worker":
        print(f"scoring skipped in a multi-machine run: python evaluate.py --checkpoint {run_dir}/best.keras on one "
              "machine scores it")
        return {}
    results = {}
    best_path = os.path.join(run_dir, "best.keras")
    for name, candidate in (("last.keras", model), ("best.keras", best_path)):
        if isinstance(candidate, str):
            if not os.path.exists(candidate):
                print(f"{name}: not written (the monitored value never improved)")
                continue
            candidate = checkpoints.load_checkpoint(candidate)
        metrics, probabilities = evaluate.evaluate_model(candidate, test)
        metrics = {"checkpoint": os.path.join(run_dir, name), **metrics}
        evaluate.write_report(metrics, probabilities, test, run_dir, name)
        results[name] = metrics["accuracy"]
    for name, accuracy in results.items():
        label = "final weights" if name == "last.keras" else "best checkpoint"
        print(f"{label} ({name}): PrivateTest accuracy {accuracy:.4f} ({len(test)} images)")
    return results


# Settings that change which kernels run or how many threads they get, kept with the run when set.
RECORDED_VARIABLES = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "TF_NUM_INTRAOP_THREADS",
                      "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")


def environment(setup, model):
    """What the run ran on: versions, devices and the choices made for them."""
    versions = {}
    for package in ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "commit": commit,
            "python": platform.python_version(), "platform": platform.platform(), "cpu": backends.cpu_model(),
            "cpu_family_model": "/".join(filter(None, (backends.cpuinfo_field(key) for key in ("cpu family", "model"))))
            or None, "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_bfloat16": sorted({"avx512_bf16", "amx_bf16"} & backends.cpu_flags()), "versions": versions,
            "backend": backends.backend(), "devices": backends.describe_devices(), "onednn": backends.onednn_enabled(),
            "precision": setup.precision, "precision_reason": setup.why, "jit_compile": bool(model.jit_compile),
            "batch_norm": "fused kernel" if backends.uses_fused_batch_norm(model) else "Keras's own layer",
            "distribution": setup.distribution.describe(), "feed": setup.feed,
            "steps_per_execution": setup.steps_per_execution, "batches_scanned_a_call": setup.group,
            "train_faces": setup.faces, "training_flops_per_face": 3 * forward_flops(model),
            "environment_variables": {name: os.environ[name] for name in RECORDED_VARIABLES if name in os.environ}}


def record_environment(run_dir, current, resumed):
    """environment.json: what the run started on, and each resume after it."""
    path = os.path.join(run_dir, "environment.json")
    if resumed and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        record.setdefault("resumes", []).append(current)
    else:
        record = current
    write_text(path, json.dumps(record, indent=2))
