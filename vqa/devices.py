"""Where and how a run trains: determinism, mixed precision, data parallelism."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import keras

from vqa import distributed
from vqa.errors import VQAError

XLA_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def set_determinism(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend (Keras' global seed) and, when ``deterministic``, make the
    backend's ops deterministic, so that two runs with the same seed and data give the same bits.

    TensorFlow: ``enable_op_determinism`` (it stays on for the rest of the process). JAX: XLA's
    deterministic GPU ops, read when JAX starts its GPU backend, so effective only when nothing
    has used JAX yet in this process (JAX on CPU is deterministic anyway). ``deterministic=False``
    skips both, for speed on GPU; the seed still fixes the initial weights, shuffles and dropout.
    """
    if deterministic and keras.backend.backend() == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_DETERMINISM_FLAG}".strip()
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def precision(enabled: bool, log: Callable[[str], None]) -> Iterator[None]:
    """Set the global mixed-precision policy for the run; restore the previous one after."""
    previous = keras.mixed_precision.global_policy()
    if enabled:
        policy = "mixed_bfloat16"
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
            if capability and capability < (8, 0):
                policy = "mixed_float16"  # bfloat16 needs Ampere or newer; float16 gets loss scaling
        keras.mixed_precision.set_global_policy(policy)
        log(f"mixed precision: {policy} (answer scores in float32)")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _device_count(devices: str, available: int, kind: str) -> int:
    if devices == "all":
        return available
    try:
        count = int(devices)
    except ValueError:
        raise VQAError(f"train.devices must be auto, all, cpu or a number of devices, got {devices!r}.") from None
    if not 1 <= count <= available:
        raise VQAError(f"train.devices={count} but this machine has {available} {kind} device(s).")
    return count


@dataclass(frozen=True)
class Placement:
    """How a run's batches meet its devices.

    Attributes:
        scope: the context to build and train the model in.
        batch_multiple: every (global) batch is padded to a multiple of this (JAX shards evenly).
        shard: (this process, processes): each process feeds its share of every global batch.
        replicas: how many devices train in parallel, over all processes.
    """

    scope: Any
    batch_multiple: int = 1
    shard: tuple[int, int] = (0, 1)
    replicas: int = 1


@contextlib.contextmanager
def distribution(devices: str, log: Callable[[str], None]) -> Iterator[Placement]:
    """Yield where to build and train the model for ``train.devices``.

    "auto": the backend's default device; "cpu": the CPU; "all" or a number: data
    parallel over that many accelerators (or logical CPU devices when there are none),
    with ``tf.distribute.MirroredStrategy`` on TensorFlow and
    ``keras.distribution.DataParallel`` on JAX. The batch size stays the global one.
    In a cluster of processes (``vqa.distributed``; JAX only), "auto" and "all" mean every
    device of every process.

    Raises:
        VQAError: a device count this machine lacks, another count or "cpu" in a cluster, or a
            TF_CONFIG naming several TensorFlow workers.
    """
    backend = keras.backend.backend()
    processes = distributed.process_count()
    if backend == "tensorflow":
        distributed.check_tensorflow_workers()
    if processes > 1:
        distributed.check_devices(devices, processes)
        all_devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=all_devices, auto_shard_dataset=False))  # QuestionBatches feeds each process its share
        log(f"data parallel: keras.distribution.DataParallel over {len(all_devices)} device(s) of {processes} "
            "processes")
        try:
            yield Placement(contextlib.nullcontext(), len(all_devices), (distributed.process_index(), processes),
                            len(all_devices))
        finally:
            keras.distribution.set_distribution(None)
        return
    if devices == "auto":
        yield Placement(contextlib.nullcontext())
        return
    if backend == "tensorflow":
        import tensorflow as tf

        if devices == "cpu":
            strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        else:
            gpus = tf.config.list_logical_devices("GPU")
            pool, kind = (gpus, "GPU") if gpus else (tf.config.list_logical_devices("CPU"), "CPU")
            count = _device_count(devices, len(pool), kind)
            strategy = tf.distribute.MirroredStrategy([d.name for d in pool[:count]])
            log(f"data parallel: MirroredStrategy over {strategy.num_replicas_in_sync} {kind} replicas")
        # tf.distribute splits uneven batches itself
        yield Placement(strategy.scope(), replicas=strategy.num_replicas_in_sync)
    elif backend == "jax":
        all_devices = keras.distribution.list_devices("cpu" if devices == "cpu" else None)
        count = 1 if devices == "cpu" else _device_count(devices, len(all_devices), "JAX")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=all_devices[:count]))
        log(f"data parallel: keras.distribution.DataParallel over {count} device(s)")
        try:
            yield Placement(contextlib.nullcontext(), count, replicas=count)  # JAX shards each batch evenly
        finally:
            keras.distribution.set_distribution(None)
    else:
        log(f"train.devices={devices} is not supported on the {backend} backend: using its default device")
        yield Placement(contextlib.nullcontext())
