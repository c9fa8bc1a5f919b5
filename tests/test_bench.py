"""bench.py: its figures count what they timed, oneDNN's log is read right, the FLOPs and peak it reckons, and
the precision check's BatchNormalization statistics. (Speed itself is measured by bench.py and reported in the
README, never asserted here.)"""
import json
import platform

import numpy as np
import pytest

from conftest import run_script

pytestmark = pytest.mark.slow  # trains, or runs the scripts end to end


def _figures(output):
    return [figure for figure in map(json.loads, (line for line in output.splitlines() if line.startswith("{")))
            if figure["bench"] != "machine"]


def test_bench_runs_on_a_small_file(synthetic_csv):
    result = run_script("bench.py", "load", "--data", synthetic_csv, "--repeat", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = {figure["what"]: figure for figure in _figures(result.stdout)}
    assert {"notebook load_data", "ours cold", "ours warm"} <= set(figures)
    assert all(figure["seconds"] > 0 and figure["peak_mib"] > 0 for figure in figures.values())
    assert figures["ours cold"]["speedup_vs_notebook"] == pytest.approx(
        figures["notebook load_data"]["seconds"] / figures["ours cold"]["seconds"])
    assert "notebook load_data" in result.stdout.split("{")[0]  # the table comes before the JSON lines


def test_bench_speed_figures_count_what_they_timed(synthetic_csv):
    import keras

    import measure

    try:
        for how in ("notebook", "ours"):
            figure = measure.measure_predict(how, str(synthetic_csv), "float32", 40)
            assert figure["images_per_second"] == pytest.approx(max(figure["segments"]), abs=0.01)
            assert len(figure["segments"]) == len(figure["segment_cpu_cores"]) == measure.SEGMENTS
        figure = measure.measure_train("ours", str(synthetic_csv), "float32", 3, 4)  # bfloat16 is emulated, slow, on some CPUs
        assert figure["images_per_second"] > 0 and len(figure["segments"]) == 3 and figure["timed_steps"] == 3
        gemm = measure.measure_gemm("float32", size=256, repeats=2)["flops"]
        assert 1e8 < gemm < 1e14  # a 256x256 float32 multiply on any CPU: between 0.1 GFLOP/s and 100 TFLOP/s
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_onednn_times_count_the_timed_steps_only():
    import bench

    def exec_line(stamp, direction, ms):
        return (f"onednn_verbose,v1,{stamp},primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,{direction},"
                "src:f32::blocked:acdb::f0 wei:f32::blocked:cdba::f0,attr-scratchpad:user,alg:convolution_direct,"
                f"mb4_ic1oc8_ih48oh46kh3sh1dh0ph0_iw48ow46kw3sw1dw0pw0,{ms}")

    log = "\n".join(["onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
                     "onednn_verbose,v1,primitive,info,template:timestamp,operation,engine,primitive,exec_time",
                     exec_line(999.5, "forward_training", 7.0),  # a warm-up step
                     "Epoch 1/1", exec_line(1000.0, "forward_training", 2.5), exec_line(1000.1, "forward_training", 1.5),
                     exec_line(1001.25, "backward_weights", 4.0),
                     "onednn_verbose,v1,1002.0,graph,exec,cpu,1,compiled_partition,Conv,,,f32,dnnl_backend,9.0"])
    assert bench.onednn_milliseconds(log, since_ms=1000.0) == {("convolution", "forward_training"): 4.0,
                                                               ("convolution", "backward_weights"): 4.0}


def test_bench_kernels_finds_the_convolutions_in_onednns_log(synthetic_csv):
    import backends

    if backends.backend() != "tensorflow":
        pytest.skip("oneDNN's log comes from TensorFlow's CPU kernels")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"TensorFlow runs oneDNN's kernels on x86-64 CPUs only, not on {platform.machine()}")
    result = run_script("bench.py", "kernels", "--data", synthetic_csv, "--steps", 3, "--batch-size", 4,
                        "--precisions", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = {figure["what"]: figure for figure in _figures(result.stdout)}
    directions = ("forward_training", "backward_data", "backward_weights")
    assert all(figures[f"convolution {d}"]["float32_ms_per_batch"] > 0 for d in directions)
    assert figures["all"]["float32_ms_per_batch"] == pytest.approx(
        sum(f["float32_ms_per_batch"] for what, f in figures.items() if what not in ("all", "training images/s (oneDNN log on)")))


def test_bench_precision_recomputes_batch_norm_statistics_exactly():
    import keras

    import measure

    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(3, 1), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.5), keras.layers.Conv2D(2, 1), keras.layers.BatchNormalization()])
    images = np.random.default_rng(0).random((10, 4, 4, 2)).astype(np.float32)
    measure.recompute_batch_norm_statistics(model, images)
    first, second = model.layers[1], model.layers[4]
    inputs = keras.ops.convert_to_numpy(model.layers[0](images)).astype(np.float64)
    np.testing.assert_allclose(first.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    # The second layer sees the first one normalized with its new statistics, dropout off (inference).
    inputs = keras.ops.convert_to_numpy(model.layers[3](first(model.layers[0](images), training=False))).astype(np.float64)
    np.testing.assert_allclose(second.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_bench_reckons_flops_from_the_network_and_the_peak_from_the_cpu():
    import measure
    from model import build_model, forward_flops

    # The notebook's network: 2 x (46*46*9*1*64 + 46*46*9*64*64 + 23*23*9*(64*128 + 2*128*128) + ...) per face.
    convolutions = [(46, 1, 64), (46, 64, 64), (23, 64, 128), (23, 128, 128), (23, 128, 128), (11, 128, 256),
                    (11, 256, 256), (11, 256, 256), (5, 256, 512), (5, 512, 512), (5, 512, 512)]
    dense = [(2048, 512), (512, 256), (256, 128), (128, 64), (64, 7)]
    expected = 2 * (sum(size * size * 9 * cin * cout for size, cin, cout in convolutions) + sum(a * b for a, b in dense))
    model = build_model()
    assert forward_flops(model) == expected

    avx2 = {"avx", "avx2", "fma"}
    assert measure.peak_flops("float32", avx2, 2, 2.5, "AuthenticAMD")[0] == 2 * 2.5e9 * 32
    assert measure.peak_flops("mixed_bfloat16", avx2, 2, 2.5, "AuthenticAMD")[0] == 2 * 2.5e9 * 32  # nothing faster
    zen4 = avx2 | {"avx512f", "avx512_bf16"}
    assert measure.peak_flops("float32", zen4, 2, 2.5, "AuthenticAMD", 25)[0] == 2 * 2.5e9 * 32
    assert measure.peak_flops("mixed_bfloat16", zen4, 2, 2.5, "AuthenticAMD", 25)[0] == 2 * 2.5e9 * 64
    # Zen 5 (family 26) has 512-bit FMA units: twice Zen 4's lanes with the same flags
    assert measure.peak_flops("float32", zen4, 2, 2.5, "AuthenticAMD", 26)[0] == 2 * 2.5e9 * 64
    assert measure.peak_flops("mixed_bfloat16", zen4, 2, 2.5, "AuthenticAMD", 26)[0] == 2 * 2.5e9 * 128
    sapphire_rapids = avx2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert measure.peak_flops("float32", sapphire_rapids, 2, 2.0, "GenuineIntel")[0] == 2 * 2.0e9 * 64
    peak, how = measure.peak_flops("mixed_bfloat16", sapphire_rapids, 2, 2.0, "GenuineIntel")
    assert peak == 2 * 2.0e9 * 1024 and "AMX" in how
    assert measure.peak_flops("float32", avx2, 2, 0.0)[0] is None
    # GPUs: the datasheet's dense tensor-core figure for the name JAX or TensorFlow gives.
    assert measure.gpu_peak_flops("mixed_float16", "NVIDIA H200")[0] == 989.4e12
    assert measure.gpu_peak_flops("float32", "NVIDIA H100 PCIe")[0] == 378.0e12
    assert measure.gpu_peak_flops("mixed_bfloat16", "NVIDIA A100-SXM4-40GB")[0] == 312.0e12
    assert measure.gpu_peak_flops("float32", "Tesla T4")[0] == 8.1e12
    assert measure.gpu_peak_flops("mixed_float16", "NVIDIA L40S")[0] == 362.1e12  # not the L4's
    assert measure.gpu_peak_flops("float32", "NVIDIA GeForce GTX 1080")[0] is None


def test_a_runs_pace_is_its_fastest_epoch_after_the_first_against_the_gpus_peak():
    import measure

    h200 = {"devices": "gpu:0; NVIDIA H200 (compute capability 9.0)", "precision": "mixed_float16",
            "train_faces": 28709, "training_flops_per_face": 3.61e9}
    pace = measure.run_pace(h200, [21.0, 4.1, 2.0, float("nan"), 2.5])  # the first epoch compiles
    assert pace["epoch_seconds"] == 2.0 and pace["train_faces_per_second"] == 14354.5
    assert pace["tflops"] == round(14354.5 * 3.61e9 / 1e12, 3)
    assert pace["share_of_peak"] == round(14354.5 * 3.61e9 / 989.4e12, 4) and "H200" in pace["peak"]
    two = measure.run_pace({**h200, "devices": "gpu:0, gpu:1; NVIDIA H200 (c 9.0); NVIDIA H200 (c 9.0)"}, [9, 2])
    assert two["share_of_peak"] == round(pace["share_of_peak"] / 2, 4) and two["peak"].startswith("2 x ")
    assert "share_of_peak" not in measure.run_pace({**h200, "devices": "cpu:0"}, [3.0])
    assert measure.run_pace({"devices": "cpu:0"}, [3.0]) is None  # recorded before train.py kept faces and FLOPs
