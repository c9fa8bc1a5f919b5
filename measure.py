"""What one measurement of bench.py does, in a process of its own (bench.py starts one per figure, so that its
peak memory is that job's alone and nothing carries over from the figure before):

    python measure.py load HOW PATH CACHE_DIR          # HOW: notebook, cold, warm, load_data
    python measure.py train HOW PATH PRECISION STEPS BATCH_SIZE      # HOW: notebook, ours
    python measure.py predict HOW PATH PRECISION IMAGES
    python measure.py gemm PRECISION
    python measure.py precision SEED PRECISION
    python measure.py video HOW PRECISION FRAMES       # HOW: keras-full, keras-320, onnx-320

Each prints one line, RESULT and the figure as JSON.
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

from common import start_backend

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
    """This process's peak resident memory (NaN on Windows). Linux's VmHWM starts afresh at exec, unlike ru_maxrss,
    which a child inherits from the process that started it."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        try:
            import resource  # Unix only
        except ImportError:
            return float("nan")
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


# NVIDIA's datasheet peaks, dense tensor cores, in TFLOP/s: (a fragment of the device's name, 16-bit, float32 as XLA
# runs convolutions and matrix products by default: TF32 where the chip has it, plain float32 on the T4).
GPU_PEAKS = (("H200", 989.4, 494.7), ("H100 PCIe", 756.5, 378.0), ("H100", 989.4, 494.7), ("A100", 312.0, 156.0),
             ("L40S", 362.1, 183.0), ("L40", 181.0, 90.5), ("L4", 121.0, 60.0), ("T4", 65.0, 8.1))


def gpu_peak_flops(precision, name):
    """(The GPU's peak FLOP/s for the precision, from GPU_PEAKS by its name; how), or (None, why) for a GPU not in
    the table."""
    sixteen = precision in ("mixed_float16", "mixed_bfloat16")
    for fragment, half, single in GPU_PEAKS:
        if fragment in name:
            return ((half if sixteen else single) * 1e12,
                    f"{name}: NVIDIA's datasheet, dense {'16-bit' if sixteen else 'float32 (TF32 where it has it)'}")
    return None, f"{name}: not in measure.GPU_PEAKS"


def gpu_names(devices):
    """The GPUs' names in environment.json's `devices` ("gpu:0; NVIDIA H200 (compute capability 9.0)"); [] on a
    CPU."""
    return [device.split(" (")[0] for device in (devices or "").split("; ")[1:]]


def run_pace(environment, seconds):
    """A run's pace, from its environment.json and its epochs' seconds (history.csv): the fastest epoch after the
    first (which compiles), the training faces a second over it (its validation pass included), their TFLOP/s and,
    on GPUs of GPU_PEAKS, the share of their peak; None for a run recorded before train.py kept its faces and FLOPs."""
    faces, flops = environment.get("train_faces"), environment.get("training_flops_per_face")
    seconds = np.asarray(seconds, dtype=float)
    seconds = seconds[~np.isnan(seconds)]
    if not faces or not flops or not len(seconds):
        return None
    fastest = float(seconds[1:].min() if len(seconds) > 1 else seconds[0])
    rate = faces / fastest
    pace = {"epoch_seconds": round(fastest, 2), "train_faces_per_second": round(rate, 1),
            "tflops": round(rate * flops / 1e12, 3)}
    gpus = gpu_names(environment.get("devices"))
    peak, how = gpu_peak_flops(environment.get("precision") or "", gpus[0]) if gpus else (None, "")
    if peak:
        pace.update(share_of_peak=round(rate * flops / (peak * len(gpus)), 4),
                    peak=f"{len(gpus)} x {how}" if len(gpus) > 1 else how)
    return pace


SEGMENTS = 3  # timed segments per figure: the best one counts, so that a burst of CPU steal does not


def measure_train(how, path, precision, steps, batch_size):
    """Training images per second after a warm-up: ours (uint8 faces, batches formed on the fly) or the
    notebook's model.fit on float arrays. `steps` are timed in SEGMENTS fits; the fastest counts."""
    import data
    import feed
    from model import forward_flops

    warm_up, per_segment = 3, max(1, steps // SEGMENTS)
    faces = _training_arrays(path, (warm_up + per_segment * SEGMENTS) * batch_size)
    model = _model(precision, how)
    x, y = data.to_float(faces.images).astype(np.float64), data.one_hot(faces.labels)

    def fit(start, batches):
        rows = slice(start * batch_size, (start + batches) * batch_size)
        if how == "notebook":
            model.fit(x[rows], y[rows], batch_size=batch_size, shuffle=True, verbose=0)
        else:
            model.fit(feed.Batches(faces.select(rows), batch_size, shuffle=True, seed=start), verbose=0, shuffle=False)

    fit(0, warm_up)
    timed_since_ms = time.time() * 1000
    segments = [timed(lambda segment=segment: fit(warm_up + segment * per_segment, per_segment),
                      per_segment * batch_size) for segment in range(SEGMENTS)]
    return {**best_of(segments), "timed_steps": per_segment * SEGMENTS, "timed_since_ms": timed_since_ms,
            "flops_per_image": 3 * forward_flops(model)}


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
    from model import forward_flops

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
            "flops_per_image": forward_flops(model)}


def measure_precision(seed, precision, folder):
    """PrivateTest accuracy of the demo's network trained with this seed and precision on the synthetic check."""
    import checkpoints
    import data
    import feed
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
        train_faces, _, test = feed.prepare_data(config)
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

    import detect
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
    predictor = predict.Predictor(predict.load_probabilities(checkpoint), detect.FaceFinder(settings),
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
