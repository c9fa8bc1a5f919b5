"""Measure this project against the notebook's own way, side by side in one run.

    python bench.py load    [--data PATH] [--repeat 3]
    python bench.py train   [--data PATH] [--steps 30] [--batch-size 64] [--rounds 2]
    python bench.py predict [--data PATH] [--images 2048] [--rounds 2]
    python bench.py video   [--frames 300]     # predict.py on a 640x480 clip, face detection included: frames/s
    python bench.py all     [--data PATH]
    python bench.py kernels [--data PATH] [--steps 30] [--batch-size 64]   # TensorFlow: where training time goes
    python bench.py precision [--seeds 10]      # does each precision train as well as float32? (no FER2013 needed)

train, predict, video and kernels take --precisions (default float32,mixed_bfloat16, and mixed_float16 with a GPU).

Every figure comes from a fresh Python process, so that its peak memory is that job's alone and nothing (a
dtype policy, a warm cache, compiled functions) carries over from one figure to the next. Loading figures are
the median of --repeat processes. Speeds are the best of 3 timed segments after a warm-up, each with the CPU
cores it kept busy (CPU time / wall time): a figure far below the core count was held back by the machine, not
by the code, and is worth measuring again. Speed figures take turns over --rounds rounds, so that a slow spell of
the machine does not fall on one figure only. Prints a table, then one JSON line per figure, with ratios against
the notebook's way. Training and inference figures also give their TFLOP/s, the share of the peak estimated from
the CPU's flags, cores and stated clock (on a GPU: NVIDIA's datasheet figure for its name, measure.GPU_PEAKS), and
the share of a measured reference: the backend's own 2048x2048 matrix multiply in the same precision.

`precision` is the accuracy check behind train.precision's auto choice: the demo's network (configs/demo.yaml) trained
on the tests' 2,000 synthetic faces, once per seed and precision, each in a fresh process, scored on their
PrivateTest rows with the final weights, the best checkpoint, and the final weights after BatchNormalization's
moving statistics are recomputed exactly from the training faces. The last one shows what the network learned
apart from how far the moving statistics (which inference uses) lag behind the weights after a few epochs.

`kernels` explains the training figures: it trains as `train` does with oneDNN's verbose log on (TensorFlow's
CPU kernels) and sums oneDNN's own time per primitive and direction over the timed steps, per precision.
"""
import argparse
import collections
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import UserError, exit_on_user_error, start_backend, without_home, write_text
from measure import gpu_peak_flops, peak_flops

HERE = os.path.dirname(os.path.abspath(__file__))


# --- the parent: run children, print the table -------------------------------------------------------

def in_child(*args, env=None):
    """(the child's RESULT, its whole stdout)."""
    result = subprocess.run([sys.executable, os.path.join(HERE, "measure.py"), *map(str, args)],
                            capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):]), result.stdout


def machine():
    start_backend()
    import backends
    import keras

    flags = backends.cpu_flags()
    return {"cpu": backends.cpu_model() or platform.machine(), "cores": os.cpu_count(),
            "cpu_family": backends.cpuinfo_field("cpu family"),
            "cpu_features": [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags],
            "gpus": [f"{name} (compute capability {major}.{minor})" for name, (major, minor) in backends.gpus()],
            "python": platform.python_version(), "numpy": np.__version__,
            "keras": keras.__version__, "backend": keras.backend.backend(), "onednn": backends.onednn_enabled()}


def bench_load(path, repeat):
    figures = []
    with tempfile.TemporaryDirectory() as cache_dir:
        in_child("load", "cold", path, cache_dir)  # the parse that writes nothing: discarded, warms the page cache
        import data

        data.read_faces(path, cache_dir)  # write the cache that "warm" reads
        for how, label in (("notebook", "notebook load_data"), ("cold", "ours cold"), ("warm", "ours warm"),
                           ("load_data", "ours load_data (float32, no cache)")):
            runs = [in_child("load", how, path, cache_dir)[0] for _ in range(repeat)]
            figures.append({"bench": "load", "what": label, "seconds": statistics.median(r["seconds"] for r in runs),
                            "peak_mib": max(r["peak_mib"] for r in runs), "repeats": repeat})
    notebook = figures[0]["seconds"]
    for figure in figures[1:]:
        figure["speedup_vs_notebook"] = notebook / figure["seconds"]
    return figures


def bench_images_per_second(job, path, precisions, rounds, *sizes):
    """The notebook's float32 and ours per precision, in `rounds` rounds that take turns, so that a slow spell
    of the machine touches every figure alike; each figure keeps its best round."""
    label = "model.fit" if job == "train" else "model.predict"
    runs = [("notebook", "float32", f"notebook {label}")] + [("ours", p, f"ours {p}") for p in precisions]
    best, rates = {}, collections.defaultdict(list)
    for _ in range(rounds):
        for how, precision, what in runs:
            figure = in_child(job, how, path, precision, *sizes)[0]
            figure.pop("timed_since_ms", None)
            rates[what].append(round(figure["images_per_second"], 2))
            if what not in best or figure["images_per_second"] > best[what]["images_per_second"]:
                best[what] = {"bench": job, "what": what, "precision": precision, **figure}
    figures = [{**best[what], "rounds": rates[what]} for _, _, what in runs]
    import backends

    vendor, flags = backends.cpuinfo_field("vendor_id") or "", backends.cpu_flags()
    family = int(backends.cpuinfo_field("cpu family") or 0)
    ghz = float(backends.cpuinfo_field("cpu MHz") or 0) / 1000  # the stated clock: nominal on virtual machines
    found = backends.gpus()
    for figure in figures:
        figure["tflops"] = figure["images_per_second"] * figure["flops_per_image"] / 1e12
        peak, how = gpu_peak_flops(figure["precision"], found[0][0]) if found else peak_flops(
            figure["precision"], flags, len(os.sched_getaffinity(0)), ghz, vendor, family)
        if peak:
            figure.update(peak_tflops=peak / 1e12, share_of_peak=figure["tflops"] * 1e12 / peak, peak_reckoned=how)
    gemm = {precision: in_child("gemm", precision)[0]["flops"] for precision in {f["precision"] for f in figures}}
    for figure in figures:
        figure.update(gemm_tflops=gemm[figure["precision"]] / 1e12,
                      share_of_gemm=figure["tflops"] * 1e12 / gemm[figure["precision"]])
    notebook = figures[0]["images_per_second"]
    for figure in figures[1:]:
        figure["speedup_vs_notebook"] = figure["images_per_second"] / notebook
    return figures


def onednn_milliseconds(log, since_ms):
    """oneDNN's own milliseconds per (primitive, direction) in its verbose log, from lines stamped at or after
    since_ms (ONEDNN_VERBOSE_TIMESTAMP=1: onednn_verbose,v1,<ms>,primitive,exec,cpu,<primitive>,<impl>,<dir>...)."""
    totals = collections.Counter()
    for line in log.splitlines():
        fields = line.split(",")
        if fields[0] == "onednn_verbose" and fields[3:5] == ["primitive", "exec"] and float(fields[2]) >= since_ms:
            totals[(fields[6], fields[8])] += float(fields[-1])
    return totals


def bench_kernels(path, precisions, steps, batch_size):
    """Per precision, oneDNN's time per batch for each primitive and direction while `train` is measured."""
    import backends

    if backends.backend() != "tensorflow":
        raise UserError("bench.py kernels reads oneDNN's log, which only TensorFlow's CPU kernels write")
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "ONEDNN_VERBOSE_TIMESTAMP": "1"}
    per_batch, rates = {}, {}
    for precision in precisions:
        figure, log = in_child("train", "ours", path, precision, steps, batch_size, env=env)
        rates[precision] = figure["images_per_second"]
        times = onednn_milliseconds(log, figure["timed_since_ms"])
        if not times:
            raise UserError("oneDNN logged nothing: this TensorFlow runs without it (TF_ENABLE_ONEDNN_OPTS=0?)")
        per_batch[precision] = {key: ms / figure["timed_steps"] for key, ms in times.items()}
    baseline, *others = precisions
    keys = sorted(set().union(*per_batch.values()), key=lambda key: -per_batch[baseline].get(key, 0))
    figures = []
    for primitive, direction in keys + [("all", "")]:
        figure = {"bench": "kernels", "what": f"{primitive} {direction}".strip(), "batch_size": batch_size}
        for precision in precisions:
            times = per_batch[precision]
            figure[f"{precision}_ms_per_batch"] = (sum(times.values()) if primitive == "all"
                                                   else times.get((primitive, direction), 0.0))
        for precision in others:
            if figure[f"{precision}_ms_per_batch"] > 0 and figure[f"{baseline}_ms_per_batch"] > 0:
                figure[f"{precision}_speedup"] = figure[f"{baseline}_ms_per_batch"] / figure[f"{precision}_ms_per_batch"]
        figures.append(figure)
    figures.append({"bench": "kernels", "what": "training images/s (oneDNN log on)", "batch_size": batch_size,
                    **{f"{p}_images_per_second": rate for p, rate in rates.items()},
                    **{f"{p}_speedup": rates[p] / rates[baseline] for p in others}})
    return figures


def print_kernel_table(figures, precisions):
    others = precisions[1:]
    print(f"oneDNN milliseconds per batch of {figures[0]['batch_size']} while training "
          "(kernels may overlap on the cores, so the sum can pass the step's time)")
    print(f"{'primitive direction':<36}" + "".join(f"{p:>16}" for p in precisions)
          + "".join(f"{'x ' + p:>22}" for p in others))
    for f in figures[:-1]:
        print(f"{f['what']:<36}" + "".join(f"{f[p + '_ms_per_batch']:>16.1f}" for p in precisions)
              + "".join(f"{f[p + '_speedup']:>22.2f}" if p + "_speedup" in f else f"{'':>22}" for p in others))
    f = figures[-1]
    print(f"{f['what']:<36}" + "".join(f"{f[p + '_images_per_second']:>16.1f}" for p in precisions)
          + "".join(f"{f[p + '_speedup']:>22.2f}" for p in others))


def bench_precision(precisions, seeds):
    """Per precision, the synthetic check's accuracies over `seeds` seeds (taking turns, a fresh process each)."""
    scores = collections.defaultdict(list)
    for seed in range(seeds):
        for precision in precisions:
            scores[precision].append(in_child("precision", seed, precision)[0])
    figures = []
    for precision in precisions:
        figure = {"bench": "precision", "what": precision, "seeds": seeds}
        for key in ("final", "best", "final_bn_recomputed"):
            values = [score[key] for score in scores[precision]]
            figure[key] = values
            figure[f"{key}_mean"] = float(np.mean(values))
        figures.append(figure)
    return figures


def print_precision_table(figures):
    print("synthetic check: PrivateTest accuracy (200 faces) of the demo's network, mean over seeds [each seed]")
    for key, label in (("final", "final weights"), ("best", "best checkpoint"),
                       ("final_bn_recomputed", "final, BN statistics recomputed")):
        print(f"  {label}")
        for f in figures:
            print(f"    {f['what']:<16} {f[key + '_mean']:.3f}  [{' '.join(f'{v:.3f}' for v in f[key])}]")


def bench_video(precisions, frames):
    """predict.py on a 640x480 clip: Keras per precision and the ONNX export (float32), detection on the full
    frame and at predict.video_detect_width."""
    runs = [("keras-full", "float32")] + [("keras-320", p) for p in precisions] + [("onnx-320", "float32")]
    figures = []
    for how, precision in runs:
        result, _ = in_child("video", how, precision, frames)
        runtime, detection = how.split("-")
        figures.append({"bench": "video", "what": f"{runtime} {precision}, detect at {detection}",
                        "precision": precision, **result})
    return figures


def print_table(figures):
    print(f"{'bench':<8} {'what':<36} {'seconds':>9} {'peak MiB':>9} {'per s':>9} {'x notebook':>10} {'cores':>6}"
          f" {'TFLOP/s':>8} {'of peak':>8} {'of GEMM':>8}")
    for f in figures:
        bench, what, *numbers = figure_cells(f)
        print(f"{bench:<8} {what:<36} " + " ".join(f"{cell:>{width}}" for cell, width in
                                                    zip(numbers, (9, 9, 9, 10, 6, 8, 8, 8))))
    reckoned = {f["precision"]: (f["peak_tflops"], f["peak_reckoned"]) for f in figures if "peak_reckoned" in f}
    for precision, (peak, how) in reckoned.items():
        print(f"peak estimate, {precision}: {peak:.3f} TFLOP/s = {how}")
    gemms = {f["precision"]: f["gemm_tflops"] for f in figures if "gemm_tflops" in f}
    for precision, tflops in gemms.items():
        print(f"measured reference, {precision}: {tflops:.3f} TFLOP/s, the backend's 2048x2048 matrix multiply")


BENCH_FOLDER = os.path.join(HERE, "docs", "bench")


def figure_cells(f):
    """A figure's cells in print_table's columns (empty where the figure has no such value)."""
    return [f["bench"], f["what"],
            f"{f['seconds']:.3f}" if "seconds" in f and "images_per_second" not in f else "",
            f"{f['peak_mib']:.0f}" if "peak_mib" in f else "",
            f"{f.get('images_per_second', f.get('frames_per_second', 0)):.1f}"
            if "images_per_second" in f or "frames_per_second" in f else "",
            f"{f['speedup_vs_notebook']:.2f}" if "speedup_vs_notebook" in f else "",
            f"{f['cpu_cores']:.2f}" if "cpu_cores" in f else "",
            f"{f['tflops']:.3f}" if "tflops" in f else "",
            f"{f['share_of_peak']:.0%}" if "share_of_peak" in f else "",
            f"{f['share_of_gemm']:.0%}" if "share_of_gemm" in f else ""]


COLUMNS = ("bench", "what", "seconds", "peak MiB", "per s", "x notebook", "cores", "TFLOP/s", "of peak", "of GEMM")


def performance_tables(folder=BENCH_FOLDER):
    """docs/performance.md's tables, one per committed `bench.py --json` file: the machine, then its figures."""
    lines = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        about = record["machine"]
        kind = ", ".join(about.get("gpus") or []) or (f"{about['cpu']}, CPU family {about.get('cpu_family') or '?'} "
                                                      f"({', '.join(about.get('cpu_features') or [])})")
        lines += [f"### {kind}, {about['cores']} cores", "",
                  f"`{record['command']}` on {record['date']}: Python {about['python']}, NumPy {about['numpy']}, "
                  f"Keras {about['keras']} ({about['backend']}, oneDNN {'on' if about['onednn'] else 'off'}). "
                  f"From `docs/bench/{os.path.basename(path)}`.", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
        lines += ["| " + " | ".join(figure_cells(f)) + " |" for f in record["figures"] if f["bench"] in
                  ("load", "train", "predict", "video")]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", choices=("load", "train", "predict", "video", "all", "kernels", "precision", "tables"))
    parser.add_argument("--data", default="data/fer2013.csv", help="a FER2013 CSV (default data/fer2013.csv)")
    parser.add_argument("--repeat", type=int, default=3, help="load: fresh processes per figure (median)")
    parser.add_argument("--steps", type=int, default=30, help="train: timed steps per figure")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048, help="predict: images per figure")
    parser.add_argument("--frames", type=int, default=300, help="video: frames of the 640x480 clip (default 300)")
    parser.add_argument("--seeds", type=int, default=10,
                        help="precision: training seeds per precision (default 10: five hid bfloat16 collapsing)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="train, predict: rounds taking turns over the figures; each keeps its best (default 2)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated (default: float32, mixed_bfloat16, and mixed_float16 with a GPU)")
    parser.add_argument("--json", metavar="FILE", help="also write the machine and the figures to FILE "
                                                       "(docs/bench/<machine>.json feeds docs/performance.md)")
    args = parser.parse_args(argv)
    if min(args.repeat, args.steps, args.batch_size, args.images, args.rounds, args.seeds, args.frames) < 1:
        raise UserError("--repeat, --steps, --batch-size, --images, --rounds, --seeds and --frames must be 1 or more")
    if args.job not in ("precision", "video", "tables") and not os.path.isfile(args.data):
        raise UserError(f"{args.data}: no such file (bench.py needs a FER2013-format CSV; give it with --data)")
    return args


def run_job(args, precisions):
    """The figures of args.job."""
    figures = []
    if args.job in ("load", "all"):
        figures += bench_load(args.data, args.repeat)
    if args.job in ("train", "all"):
        figures += bench_images_per_second("train", args.data, precisions, args.rounds, args.steps, args.batch_size)
    if args.job in ("predict", "all"):
        figures += bench_images_per_second("predict", args.data, precisions, args.rounds, args.images)
    if args.job in ("video", "all"):
        figures += bench_video(precisions, args.frames)
    if args.job == "kernels":
        figures += bench_kernels(args.data, precisions, args.steps, args.batch_size)
    if args.job == "precision":
        figures += bench_precision(precisions, args.seeds)
    return figures


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.job == "tables":
        print(performance_tables(), end="")
        return 0
    about = machine()
    import backends

    precisions = (args.precisions.split(",") if args.precisions
                  else ["float32", "mixed_bfloat16"] + (["mixed_float16"] if backends.gpus() else []))
    figures = run_job(args, precisions)
    print(f"machine: {about['cpu']}, {about['cores']} cores; Python {about['python']}, NumPy {about['numpy']}, "
          f"Keras {about['keras']} ({about['backend']})")
    if args.job == "kernels":
        print_kernel_table(figures, precisions)
    elif args.job == "precision":
        print_precision_table(figures)
    else:
        print_table(figures)
    print(json.dumps({"bench": "machine", **about}))
    for figure in figures:
        print(json.dumps(figure))
    if args.json:
        record = {"command": "python bench.py " + " ".join(argv), "date": time.strftime("%Y-%m-%d"),
                  "machine": about, "figures": figures}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_text(args.json, without_home(json.dumps(record, indent=1)) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
