"""Where and how a run trains: determinism, mixed precision, data parallelism."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import keras

from vqa.errors import VQAError


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and the backend, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
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


@contextlib.contextmanager
def distribution(devices: str, log: Callable[[str], None]) -> Iterator[tuple[Any, int]]:
    """Yield the scope to build and train the model in, for ``train.devices``, and the
    number every batch size must be a multiple of.

    "auto": the backend's default device; "cpu": the CPU; "all" or a number: data
    parallel over that many accelerators (or logical CPU devices when there are none),
    with ``tf.distribute.MirroredStrategy`` on TensorFlow and
    ``keras.distribution.DataParallel`` on JAX. The batch size stays the global one.
    """
    backend = keras.backend.backend()
    if devices == "auto":
        yield contextlib.nullcontext(), 1
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
        yield strategy.scope(), 1  # tf.distribute splits uneven batches itself
    elif backend == "jax":
        all_devices = keras.distribution.list_devices("cpu" if devices == "cpu" else None)
        count = 1 if devices == "cpu" else _device_count(devices, len(all_devices), "JAX")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=all_devices[:count]))
        log(f"data parallel: keras.distribution.DataParallel over {count} device(s)")
        try:
            yield contextlib.nullcontext(), count  # JAX shards each batch evenly
        finally:
            keras.distribution.set_distribution(None)
    else:
        log(f"train.devices={devices} is not supported on the {backend} backend: using its default device")
        yield contextlib.nullcontext(), 1
