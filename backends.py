"""What each Keras backend needs to train fast and repeatably: devices, the CPU's features, mixed precision, op
determinism and TensorFlow's fused BatchNormalization (data parallelism: distribute.py).

The one module that uses TensorFlow, JAX or PyTorch directly (common.start_backend only probes TensorFlow's
devices), so that model.py, train.py and evaluate.py stay plain Keras 3 and run on any backend
(KERAS_BACKEND=tensorflow, the default, jax or torch).
"""
import os
import types

from common import UserError, native_stderr_held

with native_stderr_held():
    import keras


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels (False on other backends)."""
    if backend() != "tensorflow":
        return False
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def backend():
    return keras.backend.backend()


def gpus():
    """[(name, (major, minor) compute capability)] of the GPUs the backend can use."""
    if backend() == "tensorflow":
        import tensorflow as tf

        found = []
        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device)
            found.append((details.get("device_name", device.name), tuple(details.get("compute_capability", (0, 0)))))
        return found
    if backend() == "jax":
        import jax

        return [(device.device_kind, _capability(getattr(device, "compute_capability", "0.0")))
                for device in jax.devices() if device.platform == "gpu"]
    if backend() == "torch":
        import torch

        return [(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
                for i in range(torch.cuda.device_count())]
    return []


def _capability(text):
    try:
        return tuple(int(part) for part in str(text).split(".")[:2])
    except ValueError:
        return (0, 0)


CPUINFO = "/proc/cpuinfo"


def cpuinfo_field(name):
    """The first value of a field of Linux's /proc/cpuinfo ("flags", "model name", "cpu MHz"...); None elsewhere."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    return set((cpuinfo_field("flags") or "").split())


def cpu_model():
    """The CPU's model name (the platform's processor string where /proc/cpuinfo is missing)."""
    import platform

    return cpuinfo_field("model name") or platform.processor() or None


def choose_precision(setting):
    """(Keras dtype policy, why) for train.precision.

    auto: mixed_float16 on NVIDIA GPUs with tensor cores (compute capability 7.0+), float32 on older GPUs and on
    every CPU: mixed_bfloat16, faster on CPUs with AVX512_BF16 or AMX, fails `bench.py precision` there
    (docs/performance.md, Precision), so it is there to ask for, not the default.
    """
    if setting != "auto":
        if setting == "mixed_bfloat16" and not gpus() and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            return setting, ("as configured, on a CPU without bfloat16 instructions: emulated, many times slower "
                             "than float32")
        return setting, "as configured"
    found = gpus()
    if found:
        lowest = min(capability for _, capability in found)
        if lowest >= (7, 0):
            return "mixed_float16", f"auto: GPU compute capability {lowest[0]}.{lowest[1]}"
        return "float32", f"auto: GPU compute capability {lowest[0]}.{lowest[1]} has no tensor cores"
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        return "float32", ("auto: CPU (mixed_bfloat16 is faster on this one, but fails the synthetic check: "
                           "docs/performance.md, Precision)")
    return "float32", "auto: CPU without bfloat16 instructions"


def choose_feed(setting):
    """host | device for train.feed. auto: device on JAX with a GPU (each batch gathered there, nothing copied
    from the host but its row numbers), host elsewhere: TensorFlow feeds Keras's PyDataset through tf.data,
    which goes through the host whatever the batches hold."""
    if setting == "auto":
        return "device" if backend() == "jax" and gpus() else "host"
    if setting == "device" and backend() == "tensorflow":
        raise UserError("train.feed=device needs the jax or torch backend (KERAS_BACKEND=jax): TensorFlow's "
                        "tf.data feeds every batch through the host")
    return setting


def batch_multiple():
    """How many devices split every batch evenly (JAX data parallelism), so that batch sizes must be a
    multiple of it; 1 without a global Keras distribution (TensorFlow's strategies split unevenly)."""
    distribution = keras.distribution.distribution()
    return int(distribution.device_mesh.devices.size) if distribution is not None else 1


def process_share():
    """(this process's index, the process count): every batch is split between the processes of a multi-process
    JAX run, each feeding its own rows; (0, 1) elsewhere."""
    if backend() == "jax" and keras.distribution.distribution() is not None:
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


def make_deterministic(seed):
    """Seed Python, NumPy and the backend, and ask for deterministic kernels where the backend offers them."""
    with native_stderr_held():  # on other backends it imports TensorFlow too, if installed, to seed it
        keras.utils.set_random_seed(seed)
    if backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def list_devices():
    """The devices Keras trains on, e.g. ['cpu:0'] or ['gpu:0', 'gpu:1'] (Keras lists none for torch)."""
    if backend() == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu:0"]
    return keras.distribution.list_devices()


def unused_gpu(found, driver="/proc/driver/nvidia/version"):
    """A line for a machine whose NVIDIA driver is loaded while the backend found no GPU (`found`: gpus()), as with
    TensorFlow installed without its CUDA libraries; else None."""
    if found or not os.path.exists(driver):
        return None
    build = {"tensorflow": "pip install 'tensorflow[and-cuda]'", "jax": "pip install 'jax[cuda12]'"}.get(
        backend(), "PyTorch's CUDA build (pytorch.org)")
    return (f"note: an NVIDIA driver is loaded but {backend()} finds no GPU, so this runs on the CPU; {build} "
            "gives it the GPU")


def describe_devices():
    text = ", ".join(list_devices())
    for name, (major, minor) in gpus():
        text += f"; {name} (compute capability {major}.{minor})"
    return text


def fuse_batch_normalization(model):
    """On TensorFlow, the model's BatchNormalization layers run TensorFlow's fused kernel: one oneDNN (CPU) or
    cuDNN (GPU) op each way, where Keras 3 runs about a dozen elementwise ops, with casts to float32 around them
    under mixed precision. Same function and moving statistics, somewhat faster (docs/performance.md). Only the
    layers' call changes: checkpoints hold Keras's own BatchNormalization and load anywhere, on any backend."""
    if keras.backend.backend() != "tensorflow":
        return model
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.call = types.MethodType(_synchronized_batch_normalization, layer)
        return model
    for layer in model.layers:
        if (type(layer) is keras.layers.BatchNormalization and len(layer.input.shape) == 4 and layer.axis in (-1, 3)
                and layer.center and layer.scale and not getattr(layer, "renorm", False)  # Keras 3.11+ has renorm
                and not layer.synchronized):
            layer.call = types.MethodType(_fused_batch_normalization, layer)
    return model


def uses_fused_batch_norm(model):
    """Whether fuse_batch_normalization gave any of the model's layers the fused kernel."""
    return any(getattr(layer.call, "__func__", None) is _fused_batch_normalization for layer in model.layers)


def _synchronized_batch_normalization(layer, inputs, training=None, mask=None):
    """Keras's own call with synchronized=True: under a TensorFlow strategy of several replicas, the batch
    statistics (and so the moving ones) are those of the global batch, the same on every replica and worker, as
    on one device. Set for the call only, so that checkpoints keep synchronized=False and load on any backend."""
    layer.synchronized = True
    try:
        return type(layer).call(layer, inputs, training=training, mask=mask)
    finally:
        layer.synchronized = False


def _fused_batch_normalization(layer, inputs, training=None, mask=None):
    import tensorflow as tf

    if mask is not None or (training and not layer.trainable):
        # Keras's own call: masks, and a frozen layer that gradients flow through (TensorFlow has no deterministic
        # GPU gradient for the fused kernel in inference mode)
        return type(layer).call(layer, inputs, training=training, mask=mask)
    if training:
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, layer.gamma, layer.beta, epsilon=layer.epsilon, is_training=True)
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        variance *= (count - 1) / count  # TensorFlow gives the unbiased variance; Keras averages the biased one
        for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            moving.assign(moving * layer.momentum + batch * (1 - layer.momentum))
        return outputs
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(inputs, layer.gamma, layer.beta, layer.moving_mean,
                                                     layer.moving_variance, epsilon=layer.epsilon, is_training=False)
    return outputs
