"""What each Keras backend needs to train fast and repeatably: devices, mixed precision, data parallelism and
op determinism.

The one module that uses TensorFlow, JAX or PyTorch directly (common.start_backend only probes TensorFlow's
devices), so that model.py, train.py and evaluate.py stay plain Keras 3 and run on any backend
(KERAS_BACKEND=tensorflow, the default, jax or torch).
"""
import contextlib
import os
import types

import numpy as np

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
    every CPU. bfloat16 trains 1.5-2.7x faster on CPUs with AVX512_BF16 or AMX, but fails the synthetic check
    (`bench.py precision`, 10 seeds on an AMX Xeon: float32 never below 0.875; bfloat16 stays on the demo's early
    plateau, at 0.17-0.39, in 1 to 2 of 10 trainings, whether on oneDNN's AMX kernels or its AVX512_BF16 ones, with
    the fused BatchNormalization kernel or Keras's own layer), so it is there to ask for, not the default.
    """
    if setting != "auto":
        if setting == "mixed_bfloat16" and not gpus() and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            return setting, ("as configured, on a CPU without bfloat16 instructions: emulated, many times slower "
                             "than float32 (1.9 against 31 images/s on a 2-core AVX2 AMD EPYC)")
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


def choose_distribution(setting):
    """none | mirrored | multi_worker for train.distribute (auto: multi_worker with TF_CONFIG, mirrored on
    more than one accelerator, else none)."""
    if setting != "auto":
        return setting
    if backend() == "tensorflow" and os.environ.get("TF_CONFIG"):
        return "multi_worker"
    if backend() == "jax" and os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
        return "multi_worker"
    return "mirrored" if len(gpus()) > 1 else "none"


def check_cluster_settings():
    """The multi-machine settings the backend will read, checked first: a malformed TF_CONFIG or
    KERAS_DISTRIBUTION_* is one UserError, not a traceback or a hang."""
    if backend() == "tensorflow":
        _check_tf_config(os.environ.get("TF_CONFIG", ""))
        return
    addresses = [a for a in os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES", "").split(",") if a.strip()]
    where = "KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID"
    try:
        count = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", len(addresses)))
        index = int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", ""))
    except ValueError:
        raise UserError(f"{where}: the process count and this process's id must be integers") from None
    if not addresses or not all(_host_port(a) for a in addresses):
        raise UserError(f"{where}: the job addresses must be host:port, comma-separated, got {addresses}")
    if not 0 <= index < count:
        raise UserError(f"{where}: process id {index} is not one of the {count} processes")


def is_chief(kind):
    """Whether this process writes the run directory: always, except in a multi-machine run (kind
    multi_worker), where only the TF_CONFIG cluster's chief (or worker 0 without one), or JAX process 0, does."""
    if kind != "multi_worker":
        return True
    check_cluster_settings()
    return cluster_roles()[2] == 0


def cluster_roles():
    """(the chief's host:port, the process count, this process's rank, 0 for the chief) of a multi-machine run,
    from TF_CONFIG (chief, else worker 0; TensorFlow's chief and workers train) or KERAS_DISTRIBUTION_*."""
    if backend() == "tensorflow":
        import json

        spec = json.loads(os.environ["TF_CONFIG"])
        members = [(role, index, address) for role in ("chief", "worker")
                   for index, address in enumerate(_as_list(spec["cluster"].get(role, [])))]
        me = (spec["task"]["type"], int(spec["task"].get("index", 0)))
        ranks = [(role, index) for role, index, _ in members]
        return members[0][2], len(members), ranks.index(me) if me in ranks else -1
    addresses = [a.strip() for a in os.environ["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",") if a.strip()]
    return (addresses[0], int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", len(addresses))),
            int(os.environ["KERAS_DISTRIBUTION_PROCESS_ID"]))


def meet_the_cluster(timeout):
    """Every process checks in with the chief, at the chief's own address and port, before the backend connects
    them: TensorFlow and JAX wait for a missing process in native code, with no timeout and beyond the reach of
    Python's signals and timers, so a process that is not there would hang the others. The chief listens until
    all have come, tells them to go on and lets go of the port, which the backend then takes; within `timeout`
    seconds, or a UserError (one line, exit status 2)."""
    import socket
    import time

    address, count, rank = cluster_roles()
    if count < 2:
        return
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    missing = (f"train.distribute=multi_worker: not every process of the cluster came within {timeout:g} s "
               "(train.cluster_timeout); start all of them, at addresses they can reach")
    if rank == 0:
        with socket.create_server(("", int(port))) as server:
            peers = []
            while len(peers) < count - 1:
                server.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    peers.append(server.accept()[0])
                except socket.timeout:
                    raise UserError(f"{missing}: {len(peers) + 1} of {count} came, at the chief {address}") from None
            for peer in peers:
                peer.sendall(b"go")
            for peer in peers:  # the others close first, so that the chief's port is free at once
                peer.settimeout(max(deadline - time.monotonic(), 1))
                with contextlib.suppress(OSError):
                    peer.recv(1)
                peer.close()
        return
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1) as chief:
                chief.settimeout(max(deadline - time.monotonic(), 0.001))
                if chief.recv(2) == b"go":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise UserError(f"{missing}: the chief {address} did not let this process (rank {rank}) go on")
        time.sleep(0.2)


def _as_list(members):
    return members if isinstance(members, list) else [members]


def _host_port(address):
    host, _, port = address.strip().rpartition(":")
    return bool(host) and port.isdigit()


def _check_tf_config(text):
    import json

    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        members = _as_list(cluster[task["type"]])
        index = int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"TF_CONFIG is not a cluster description ({type(error).__name__}: {error}); expected "
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    addresses = [a for role in cluster.values() for a in _as_list(role)]
    if not all(isinstance(a, str) and _host_port(a) for a in addresses):
        raise UserError(f"TF_CONFIG: every cluster address must be host:port, got {addresses}")
    if not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG: task {task['type']} {index} is not in the cluster ({len(members)} of them)")


def reduce_leaf_by_leaf(strategy):
    """strategy.reduce for Keras's fit on MultiWorkerMirroredStrategy, which Keras 3.15 calls with a whole
    (x, y) batch and with axis=0 on scalar metrics (keras-team/keras#20585): TensorFlow's reduce takes neither
    a nest ("TODO: support value being a nest") nor axis=0 on a scalar. Each leaf is reduced alone, a scalar
    across workers only."""
    reduce_one = strategy.reduce

    def reduce(reduce_op, value, axis=None):
        def leaf(one):
            rank = strategy.experimental_local_results(one)[0].shape.rank
            return reduce_one(reduce_op, one, axis=None if rank == 0 else axis)

        return keras.tree.map_structure(leaf, value)

    return reduce


class Distribution:
    """Data parallelism for one run: a context to build and train the model in, and how many devices share
    each batch. The batch size stays the global batch size; the learning rate is not scaled.

    `fresh_seed` is a random seed drawn once for the run: in a multi-machine run the chief's, handed to every
    process by the backend, so that they shuffle alike. A multi-machine process that does not meet all the others
    within `timeout` seconds stops in one line with exit status 2 (meet_the_cluster)."""

    def __init__(self, kind, timeout=300):
        self.kind, self.devices, self.strategy = kind, [], None
        self.fresh_seed = int(np.random.SeedSequence().entropy % 2**32)
        if kind == "none":
            return
        if kind == "multi_worker":
            meet_the_cluster(timeout)
        if backend() == "tensorflow":
            import tensorflow as tf

            if kind == "multi_worker":
                self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
                self.strategy.reduce = reduce_leaf_by_leaf(self.strategy)
                per_replica = self.strategy.experimental_distribute_values_from_function(
                    lambda context: tf.constant(self.fresh_seed if context.replica_id_in_sync_group == 0 else 0,
                                                tf.int64))
                self.fresh_seed = int(self.strategy.reduce("SUM", per_replica, axis=None))
            else:
                devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
                self.strategy = tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
            self.devices = list(self.strategy.extended.worker_devices)
        elif backend() == "jax":
            if kind == "multi_worker":
                from jax.experimental import multihost_utils

                keras.distribution.initialize()  # from KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID
                self.fresh_seed = int(multihost_utils.broadcast_one_to_all(np.uint32(self.fresh_seed)))
            self.devices = list_devices()
            distribution = keras.distribution.DataParallel(devices=self.devices)
            if kind == "multi_worker":
                distribution.auto_shard_dataset = False  # each process feeds its own share of every batch
            keras.distribution.set_distribution(distribution)
        else:
            raise UserError(f"train.distribute={kind} needs the tensorflow or jax backend, not {backend()}")

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self):
        if self.kind == "none":
            return "none"
        return f"{self.kind} over {len(self.devices)} devices ({', '.join(map(str, self.devices))})"


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


def prefetch_workers():
    """Threads preparing batches ahead of training: on TensorFlow, Keras already prefetches a PyDataset
    through tf.data (AUTOTUNE), elsewhere two threads keep a queue of ready batches."""
    return 1 if backend() == "tensorflow" else 2


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


def describe_devices():
    text = ", ".join(list_devices())
    for name, (major, minor) in gpus():
        text += f"; {name} (compute capability {major}.{minor})"
    return text


def fuse_batch_normalization(model):
    """On TensorFlow, the model's BatchNormalization layers run TensorFlow's fused kernel: one oneDNN (CPU) or
    cuDNN (GPU) op each way, where Keras 3 runs about a dozen elementwise ops, with casts to float32 around them
    under mixed precision. Same function and moving statistics; about 1.1x (float32) and 1.1-1.5x (bfloat16)
    the training speed on a 2-core CPU. Only the layers' call changes: checkpoints hold Keras's own
    BatchNormalization and load anywhere, on any backend."""
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
                and layer.center and layer.scale and not layer.renorm and not layer.synchronized):
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
