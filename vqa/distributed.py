"""Multi-process data-parallel training: one ``vqa train`` process per host (or GPU group), on JAX.

The processes form one cluster through ``jax.distributed.initialize`` (what
``keras.distribution.initialize`` calls, here with a timeout; on CPU the collectives go through
gloo). A process that cannot join within ``--connect-timeout`` seconds stops in one sentence. ``vqa.devices`` then trains
``keras.distribution.DataParallel`` over every device of every process: each process feeds its own
share of each global batch (``vqa.dataset.QuestionBatches`` ``shard``), the gradients are summed
across processes inside the compiled step, and every process holds the same weights.

Process 0 alone writes RUN and reports progress. At each epoch's end it validates on its own
first device, shares what it found (``share``: a broadcast through the backend's collectives) so
that every process takes the same decisions (best epoch, early stopping), and the others wait at
a barrier (``barrier``) until its checkpoint is written. Every process reads OUT (its data) and, to
resume, RUN's checkpoint, so both must be at the same path on every host (a shared file system).

The cluster comes from ``vqa train --coordinator HOST:PORT --num-processes N --process-id I`` or
from Keras' environment variables ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator, process
0's address, first), ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from vqa.errors import VQAError
from vqa.storage import json_text

ADDRESSES_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "KERAS_DISTRIBUTION_PROCESS_ID"
TF_MULTI_WORKER = ("multi-process training runs on the JAX backend only (TensorFlow's MultiWorkerMirroredStrategy "
                   "does not train Keras 3 models: keras-team/keras#20585, #20329): run every process with "
                   "KERAS_BACKEND=jax")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
# JAX's own default wait for every process to join; a cluster of big hosts may start slowly.
DEFAULT_CONNECT_TIMEOUT = 300
MAX_CONNECT_TIMEOUT = 24 * 3600
# JAX aborts the process (a C++ stack trace, no Python exception) when its own timeout passes, so it
# gets this much longer than ours, which ends the process with a sentence first.
_JAX_TIMEOUT_MARGIN = 60


@dataclass(frozen=True)
class Cluster:
    """The processes of one training run.

    Attributes:
        coordinator: HOST:PORT of process 0, where the others connect ("" for one process).
        num_processes: how many processes train together.
        process_id: this process, 0 to num_processes - 1; process 0 writes RUN.
        connect_timeout: seconds to wait for every process to join before giving up.
    """

    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes RUN and reports progress (process 0)."""
        return self.process_id == 0


SINGLE = Cluster()
_joined: Cluster | None = None  # the cluster this Python process has initialised (once per process)


def _number(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise VQAError(f"{where} must be a whole number, not {value!r}.") from None


def address_problem(address: str) -> str | None:
    """What is wrong with a HOST:PORT (a port outside 1-65535, a malformed host name or IP), or None."""
    match = _ADDRESS.match(address)
    if not match:
        return "is not HOST:PORT"
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= 65535:
        return f"has port {port}, outside 1-65535"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"has {host}, which is not an IPv6 address"
        return None
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"has {host}, which is not an IPv4 address"
    elif len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return f"has {host}, which is not a host name"
    return None


def cluster_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                 environ: Mapping[str, str] | None = None,
                 connect_timeout: int | None = None) -> Cluster:
    """The cluster from ``vqa train`` options, else Keras' environment variables, else one process.

    Raises:
        VQAError: a count, id or timeout out of range, or several processes without a well-formed
            coordinator HOST:PORT (checked here, before any network call).
    """
    environ = os.environ if environ is None else environ
    if coordinator is None and environ.get(ADDRESSES_VARIABLE):
        coordinator = environ[ADDRESSES_VARIABLE].split(",")[0].strip()
    if num_processes is None and environ.get(PROCESSES_VARIABLE):
        num_processes = _number(environ[PROCESSES_VARIABLE], PROCESSES_VARIABLE)
    if process_id is None and environ.get(PROCESS_ID_VARIABLE):
        process_id = _number(environ[PROCESS_ID_VARIABLE], PROCESS_ID_VARIABLE)
    num_processes = 1 if num_processes is None else num_processes
    process_id = 0 if process_id is None else process_id
    coordinator = (coordinator or "").strip()
    if num_processes < 1:
        raise VQAError(f"--num-processes must be at least 1, not {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise VQAError(f"--process-id must be from 0 to {num_processes - 1} (--num-processes {num_processes}), "
                       f"not {process_id}.")
    if num_processes > 1 and (problem := address_problem(coordinator)):
        raise VQAError(f"--coordinator must be process 0's HOST:PORT (e.g. 10.0.0.1:1234) when "
                       f"--num-processes is {num_processes}; {coordinator!r} {problem}.")
    connect_timeout = DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
    if not 1 <= connect_timeout <= MAX_CONNECT_TIMEOUT:
        raise VQAError(f"--connect-timeout must be from 1 to {MAX_CONNECT_TIMEOUT} seconds, not {connect_timeout}.")
    return Cluster(coordinator, num_processes, process_id, connect_timeout) if num_processes > 1 else SINGLE


def check_devices(devices: str, num_processes: int) -> None:
    """Refuse a ``train.devices`` other than auto or all for a cluster, in one sentence.

    Raises:
        VQAError: a device count or "cpu" with several processes.
    """
    if num_processes > 1 and devices not in ("auto", "all"):
        raise VQAError(f"train.devices={devices} cannot be combined with --num-processes: every process trains on "
                       "all its devices (choose them with CUDA_VISIBLE_DEVICES), so use auto or all.")


def initialize(cluster: Cluster, log: Callable[[str], None] = print) -> None:
    """Join ``cluster`` (a no-op for one process); call before the backend computes anything.

    Raises:
        VQAError: the backend is not JAX, or this Python process already joined another cluster.
    """
    global _joined
    if not cluster.multi_process or cluster == _joined:
        return
    import keras

    if keras.backend.backend() != "jax":
        raise VQAError(f"{TF_MULTI_WORKER}.")
    if _joined is not None:
        raise VQAError(f"this Python process already trains in the cluster of {_joined.coordinator} "
                       f"({_joined.num_processes} processes); start a new process for another cluster.")
    import jax

    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        with contextlib.suppress(AttributeError, ValueError):  # gloo is the default of recent JAX versions
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Keras' initialize would also agree on a random seed, but vqa.train has set one already.
    with _native_stdout_to_stderr(), _give_up_after(cluster):  # gloo announces its connections on stdout
        jax.distributed.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id,
                                   initialization_timeout=cluster.connect_timeout + _JAX_TIMEOUT_MARGIN)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("joined")  # starts the backend and connects its collectives now
    _joined = cluster
    log(f"process {cluster.process_id} of {cluster.num_processes} (coordinator {cluster.coordinator}): "
        f"{jax.local_device_count()} of the cluster's {jax.device_count()} devices"
        + ("; process 0 writes the run and reports progress" if not cluster.writes else ""))


@contextlib.contextmanager
def _give_up_after(cluster: Cluster) -> Iterator[None]:
    """End the process with one sentence (exit status 1) if the block outlasts ``cluster.connect_timeout``.

    The wait happens inside JAX's C++ client, which no Python exception can interrupt, so a timer
    thread prints the CLI's "error: " line itself and exits.
    """
    sentence = (f"error: process {cluster.process_id} of {cluster.num_processes} could not join the cluster at "
                f"{cluster.coordinator} within --connect-timeout {cluster.connect_timeout} s; start every process "
                "with the same --coordinator (process 0 listens there), or check the address and the firewall.")

    def give_up() -> None:
        print(sentence, file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(cluster.connect_timeout, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 pointed at 2 while the block runs (C++ libraries write there directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def process_count() -> int:
    """How many processes this training runs in (1 unless ``initialize`` joined a cluster)."""
    if _joined is None:
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    if _joined is None:
        return 0
    import jax

    return jax.process_index()


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (a collective of the backend)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def share(value: Any) -> Any:
    """Process 0's ``value`` (JSON-able) on every process; ``value`` itself with one process.

    Two broadcasts through the backend's collectives: the length of the JSON text, then its bytes.
    """
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    data = np.frombuffer(json_text(value).encode(), np.uint8) if process_index() == 0 else np.zeros(0, np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.array([len(data)], np.int32))[0])
    buffer = data if process_index() == 0 else np.zeros(length, np.uint8)
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)))


def gather(number: int) -> list[int]:
    """Every process's ``number``, by process id (a collective: all processes call it)."""
    if process_count() == 1:
        return [number]
    from jax.experimental import multihost_utils

    return [int(n) for n in np.asarray(multihost_utils.process_allgather(np.array([number], np.int32))).ravel()]


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Keras' distribution off while the block runs: work one process does alone (building a local
    copy of the model, saving, validating) must not create variables spread over the others' devices."""
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def check_tensorflow_workers(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a TF_CONFIG naming several workers on the TensorFlow backend, in one sentence.

    Raises:
        VQAError: TF_CONFIG's cluster has more than one worker or chief.
    """
    environ = os.environ if environ is None else environ
    try:
        spec = json.loads(environ.get("TF_CONFIG") or "{}").get("cluster", {})
        workers = sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))
    except (ValueError, AttributeError, TypeError):
        workers = 0
    if workers > 1:
        raise VQAError(f"TF_CONFIG names {workers} workers, but {TF_MULTI_WORKER} and --coordinator, "
                       "--num-processes and --process-id (or unset TF_CONFIG to train on this host).")
