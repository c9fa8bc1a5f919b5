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
the CPU's flags, cores and stated clock, and the share of a measured reference: the backend's own 2048x2048
matrix multiply in the same precision.

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
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import UserError, exit_on_user_error, start_backend

HERE = os.path.dirname(os.path.abspath(__file__))


def notebook_load_data(dataset_path, width=48, height=48, num_classes=7):
    """The notebook's load_data, as written there (to_categorical spelled out in NumPy, to leave Keras out)."""
    data, test_data, test_labels, labels = [], [], [], []
    with open(dataset_path, "r") as file:
        for line_no, line in enumerate(file.readlines()):
            if 0 < line_no <= 35887:
                curr_class, line, set_type = line.split(",")
                image_data = np.asarray([int(x) for x in line.split()]).reshape(width, height)
                image_data = image_data.astype(np.uint8) / 255.0
                if set_type.strip() == "PrivateTest":
                    test_data.append(image_data)
                    test_labels.append(curr_class)
                else:
                    data.append(image_data)
                    labels.append(curr_class)
        test_data = np.expand_dims(test_data, -1)
        test_labels = np.eye(num_classes)[np.array(test_labels, dtype=int)]
        data = np.expand_dims(data, -1)
        labels = np.eye(num_classes)[np.array(labels, dtype=int)]
        return np.array(data), np.array(labels), np.array(test_data), np.array(test_labels)


def peak_mib():
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, unlike ru_maxrss, which a
    child inherits from the process that started it."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


# --- what one child process measures ---------------------------------------------------------------------

def measure_load(how, path, cache_dir):
    import data

    started = time.perf_counter()
    if how == "notebook":
        notebook_load_data(path)
    elif how == "load_data":
        data.load_data(path, cache_dir=None)
    else:
        data.read_faces(path, cache_dir if how == "warm" else None)
    return {"seconds": time.perf_counter() - started, "peak_mib": peak_mib()}


def _training_arrays(path, images):
    import data

    faces = data.read_faces(path, None)
    faces = faces.select(faces.usage != data.PRIVATE_TEST)
    repeats = -(-images // len(faces))
    return faces.select(np.tile(np.arange(len(faces)), repeats)[:images])


def _model(precision, how):
    """Ours as train.py builds it, or the notebook's: Keras's own layers, BatchNormalization unfused."""
    import keras

    import train
    from config import load_config
    from model import build_model

    keras.mixed_precision.set_global_policy(precision)
    config = load_config(os.path.join(HERE, "config.yaml"))
    return train.compile_model(build_model(config), config, fused_batch_norm=how != "notebook")


def forward_flops_per_image(model):
    """Floating-point operations (2 per multiply-add) of one face's forward pass through the convolutions and
    dense layers, which are nearly all of the network's arithmetic."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kernel_height, kernel_width = layer.kernel_size
            total += 2 * height * width * kernel_height * kernel_width * layer.input.shape[-1] * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def training_flops_per_image(model):
    """A training step's FLOPs per face: the forward pass, the gradients of the inputs and of the weights (each
    as much arithmetic as the forward pass)."""
    return 3 * forward_flops_per_image(model)


def peak_flops(precision, flags, cores, ghz, vendor="", family=0):
    """(An estimate of the CPU's peak FLOP/s for the precision's convolution arithmetic, how it was reckoned).

    float32: two FMA units per core, 16 lanes with AVX-512 on Intel and on AMD's Zen 5 (CPU family 26) and later,
    8 with AVX2 and with AVX-512 on Zen 4 (family 25), which runs it on 256-bit units. bfloat16: AMX's tile
    multiply, 1,024 FLOP per cycle per core; else AVX512_BF16's dot products, twice float32's rate; without
    either, float32's. Anything else (float16 on a CPU): float32's.
    """
    if not cores or not ghz:
        return None, "clock or core count unknown"
    wide = "avx512f" in flags and (vendor != "AuthenticAMD" or family >= 26)
    lanes = 16 if wide else 8 if {"avx2", "fma"} <= flags else 4
    per_cycle, how = 2 * 2 * lanes, f"2 FMA units x {lanes} float32 lanes"
    if precision == "mixed_bfloat16":
        if "amx_bf16" in flags:
            per_cycle, how = 1024, "AMX tiles, 1,024 bfloat16 FLOP/cycle"
        elif "avx512_bf16" in flags:
            per_cycle, how = 2 * per_cycle, f"AVX512_BF16 dot products on {how}"
        else:
            how += " (no bfloat16 instructions)"
    return cores * ghz * 1e9 * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({how})"


SEGMENTS = 3  # timed segments per figure: the best one counts, so that a burst of CPU steal does not


def measure_train(how, path, precision, steps, batch_size):
    """Training images per second after a warm-up: ours (uint8 faces, batches formed on the fly) or the
    notebook's model.fit on float arrays. `steps` are timed in SEGMENTS fits; the fastest counts."""
    import data
    import train

    warm_up, per_segment = 3, max(1, steps // SEGMENTS)
    faces = _training_arrays(path, (warm_up + per_segment * SEGMENTS) * batch_size)
    model = _model(precision, how)
    x, y = data.to_float(faces.images).astype(np.float64), data.one_hot(faces.labels)

    def fit(start, batches):
        rows = slice(start * batch_size, (start + batches) * batch_size)
        if how == "notebook":
            model.fit(x[rows], y[rows], batch_size=batch_size, shuffle=True, verbose=0)
        else:
            model.fit(train.Batches(faces.select(rows), batch_size, shuffle=True, seed=start), verbose=0, shuffle=False)

    fit(0, warm_up)
    timed_since_ms = time.time() * 1000
    segments = [timed(lambda segment=segment: fit(warm_up + segment * per_segment, per_segment),
                      per_segment * batch_size) for segment in range(SEGMENTS)]
    return {**best_of(segments), "timed_steps": per_segment * SEGMENTS, "timed_since_ms": timed_since_ms,
            "flops_per_image": training_flops_per_image(model)}


def measure_gemm(precision, size=2048, repeats=8):
    """FLOP/s of the backend's own matrix multiply on square matrices in the precision's compute dtype: a measured
    reference beside the estimated peak, whose clock (the one the CPU states) can be below the one it runs at.
    Not a ceiling: tuned convolution kernels can beat the backend's matmul."""
    import keras

    dtype = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(precision, "float32")
    a = keras.random.normal((size, size), dtype=dtype)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
    best = 0.0
    for _ in range(SEGMENTS):
        started = time.perf_counter()
        for _ in range(repeats):
            product = keras.ops.matmul(a, a)
        keras.ops.convert_to_numpy(product)
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - started))
    return {"flops": best}


def timed(job, images):
    """(images per second, CPU cores busy) of one run of job: the cores show when the machine held us back."""
    cpu, started = os.times(), time.perf_counter()
    job()
    seconds, after = time.perf_counter() - started, os.times()
    busy = (after.user - cpu.user) + (after.system - cpu.system)
    return images / seconds, busy / seconds


def best_of(segments):
    rate, cores = max(segments)
    return {"images_per_second": rate, "cpu_cores": cores, "segments": [round(r, 2) for r, _ in segments],
            "segment_cpu_cores": [round(c, 2) for _, c in segments]}


def measure_predict(how, path, precision, images):
    import data
    import evaluate

    faces = _training_arrays(path, images)
    model = _model(precision, how)
    x = data.to_float(faces.images).astype(np.float64)

    def predict():
        if how == "notebook":
            model.predict(x, verbose=0)
        else:
            evaluate.predict_probabilities(model, faces.images)

    predict()  # the first pass compiles
    return {**best_of([timed(predict, images) for _ in range(SEGMENTS)]),
            "flops_per_image": forward_flops_per_image(model)}


def measure_precision(seed, precision, folder):
    """PrivateTest accuracy of the demo's network trained with this seed and precision on the synthetic check."""
    import contextlib
    import io

    import checkpoints
    import data
    import synthetic
    import train
    from config import load_config

    path = os.path.join(folder, "synthetic.csv")
    data.write_csv(path, synthetic.make_synthetic(2000, seed=1))
    config = load_config(os.path.join(HERE, "configs", "demo.yaml"), [
        f"data.path={path}", "data.cache_dir=null", f"train.seed={seed}", f"train.precision={precision}",
        f"output.dir={folder}", "output.name=run"])
    with contextlib.redirect_stdout(io.StringIO()):
        run_dir = train.train(config)
    scores = {}
    for name, stem in (("final", "metrics-last.json"), ("best", "metrics.json")):
        with open(os.path.join(run_dir, stem)) as f:
            scores[name] = json.load(f)["accuracy"]
    with contextlib.redirect_stdout(io.StringIO()):
        train_faces, _, test = train.prepare_data(config)
    model = checkpoints.load_checkpoint(os.path.join(run_dir, "last.keras"))
    recompute_batch_norm_statistics(model, data.to_float(train_faces.images))
    scores["final_bn_recomputed"] = float(np.mean(model.predict(data.to_float(test.images), verbose=0).argmax(axis=1)
                                                  == test.labels))
    return scores


def recompute_batch_norm_statistics(model, images):
    """Set every BatchNormalization layer's moving mean and variance to the exact statistics of its inputs over
    `images`, in inference mode (dropout off), layer after layer."""
    import keras

    for index, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(model.inputs, model.layers[index - 1].output).predict(images, verbose=0)
            inputs = inputs.astype(np.float64).reshape(-1, inputs.shape[-1])
            layer.moving_mean.assign(inputs.mean(axis=0).astype(np.float32))
            layer.moving_variance.assign(inputs.var(axis=0).astype(np.float32))


def write_test_video(path, frames, size=(640, 480)):
    """A camera-sized clip with one face (scikit-image's astronaut, 150 pixels wide) drifting across it."""
    import cv2
    import skimage.data

    face = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (300, 300))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for index in range(frames):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        left = 100 + index % 200
        frame[90:390, left:left + 300] = face
        writer.write(frame)
    writer.release()


def measure_video(how, precision, frames, folder):
    """predict.py's whole video loop (decode, face detection, the notebook's network, annotation, encoding) on a
    640x480 clip: frames per second after start-up. how: keras|onnx, then -full (detection on the full frame) or
    -320 (predict.video_detect_width's default)."""
    import keras

    import export
    import predict
    from config import load_config
    from model import build_model

    runtime, detection = how.split("-")
    keras.mixed_precision.set_global_policy(precision)
    config = load_config(os.path.join(HERE, "config.yaml"))
    checkpoint = os.path.join(folder, "model.keras")
    build_model(config).save(checkpoint)
    if runtime == "onnx":
        export.export(checkpoint, os.path.join(folder, "model.onnx"))
        checkpoint = os.path.join(folder, "model.onnx")
    video = os.path.join(folder, "clip.mp4")
    write_test_video(video, frames)
    settings = {**config["predict"], "video_detect_width": None if detection == "full" else int(detection)}
    predictor = predict.Predictor(predict.load_probabilities(checkpoint), predict.FaceFinder(settings),
                                  settings["margin"])
    predictor.frame(np.zeros((480, 640, 3), np.uint8))  # the first call builds the model's function
    records = []
    cpu, started = os.times(), time.perf_counter()
    annotated = os.path.join(folder, "annotated")
    os.makedirs(annotated)
    predict.predict_video(predictor, video, annotated, set(), records.append)
    seconds, after = time.perf_counter() - started, os.times()
    busy = (after.user - cpu.user) + (after.system - cpu.system)
    return {"frames_per_second": frames / seconds, "seconds": seconds, "cpu_cores": busy / seconds,
            "frames_with_a_face": len({record["frame"] for record in records})}


def child_main(argv):
    job, how, *rest = argv
    if job != "load":  # loading figures keep TensorFlow out of their time and memory
        start_backend()  # TensorFlow's settings, as the scripts make them
    if job == "precision":
        with tempfile.TemporaryDirectory() as folder:
            result = measure_precision(int(how), rest[0], folder)
    elif job == "video":
        with tempfile.TemporaryDirectory() as folder:
            result = measure_video(how, rest[0], int(rest[1]), folder)
    elif job == "load":
        path, cache_dir = rest
        result = measure_load(how, path, cache_dir)
    elif job == "gemm":
        result = measure_gemm(how)
    elif job == "train":
        path, precision, steps, batch_size = rest
        result = measure_train(how, path, precision, int(steps), int(batch_size))
    else:
        path, precision, images = rest
        result = measure_predict(how, path, precision, int(images))
    print("RESULT " + json.dumps(result))


# --- the parent: run children, print the table -------------------------------------------------------

def in_child(*args, env=None):
    """(the child's RESULT, its whole stdout)."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *map(str, args)],
                            capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):]), result.stdout


def machine():
    start_backend()
    import backends
    import keras

    return {"cpu": backends.cpu_model() or platform.machine(), "cores": os.cpu_count(),
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
    for figure in figures:
        figure["tflops"] = figure["images_per_second"] * figure["flops_per_image"] / 1e12
        peak, how = (None, "a GPU") if backends.gpus() else peak_flops(
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
        seconds = f"{f['seconds']:.3f}" if "seconds" in f and "images_per_second" not in f else ""  # video: its loop
        peak = f"{f['peak_mib']:.0f}" if "peak_mib" in f else ""
        rate = f"{f.get('images_per_second', f.get('frames_per_second', 0)):.1f}" if (
            "images_per_second" in f or "frames_per_second" in f) else ""
        ratio = f"{f['speedup_vs_notebook']:.2f}" if "speedup_vs_notebook" in f else ""
        cores = f"{f['cpu_cores']:.2f}" if "cpu_cores" in f else ""
        tflops = f"{f['tflops']:.3f}" if "tflops" in f else ""
        share = f"{f['share_of_peak']:.0%}" if "share_of_peak" in f else ""
        of_gemm = f"{f['share_of_gemm']:.0%}" if "share_of_gemm" in f else ""
        print(f"{f['bench']:<8} {f['what']:<36} {seconds:>9} {peak:>9} {rate:>9} {ratio:>10} {cores:>6} {tflops:>8} "
              f"{share:>8} {of_gemm:>8}")
    reckoned = {f["precision"]: (f["peak_tflops"], f["peak_reckoned"]) for f in figures if "peak_reckoned" in f}
    for precision, (peak, how) in reckoned.items():
        print(f"peak estimate, {precision}: {peak:.3f} TFLOP/s = {how}")
    gemms = {f["precision"]: f["gemm_tflops"] for f in figures if "gemm_tflops" in f}
    for precision, tflops in gemms.items():
        print(f"measured reference, {precision}: {tflops:.3f} TFLOP/s, the backend's 2048x2048 matrix multiply")


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", choices=("load", "train", "predict", "video", "all", "kernels", "precision"))
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
    args = parser.parse_args(argv)
    if min(args.repeat, args.steps, args.batch_size, args.images, args.rounds, args.seeds, args.frames) < 1:
        raise UserError("--repeat, --steps, --batch-size, --images, --rounds, --seeds and --frames must be 1 or more")
    if args.job not in ("precision", "video") and not os.path.isfile(args.data):
        raise UserError(f"{args.data}: no such file (bench.py needs a FER2013-format CSV; give it with --data)")
    figures = []
    if args.job in ("load", "all"):
        figures += bench_load(args.data, args.repeat)
    import backends

    precisions = (args.precisions.split(",") if args.precisions
                  else ["float32", "mixed_bfloat16"] + (["mixed_float16"] if backends.gpus() else []))
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
    about = machine()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
