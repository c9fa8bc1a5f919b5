"""Data parallelism for train.py: one process over several devices (MirroredStrategy, JAX's DataParallel), or
several processes on several machines (MultiWorkerMirroredStrategy from TF_CONFIG; JAX from KERAS_DISTRIBUTION_*),
with their settings checked first and every process meeting the chief before the backend connects them.
"""
import contextlib
import os

import numpy as np

from backends import backend, gpus, list_devices
from common import UserError, native_stderr_held

with native_stderr_held():
    import keras


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


def check_cluster_settings(kind=None):
    """The multi-machine settings the backend (`kind`, default the one running) will read, checked first: a
    malformed TF_CONFIG or KERAS_DISTRIBUTION_* is one UserError, not a traceback or a hang."""
    if (kind or backend()) == "tensorflow":
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
