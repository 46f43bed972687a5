"""``RUN/environment.json``: the software and hardware a run was trained with.

One record per training session (a resumed run adds one), each saying which epoch it started
after, the package versions (tensorflow, keras, jax, jaxlib, numpy, h5py, spacy; null when not
installed), the Keras backend, the devices it saw, the processes it trained in, Python, the
platform and CPU, and the git commit of the code (``git rev-parse HEAD`` in the package's folder,
with whether the work tree had changes; null outside a git checkout). Two runs that should agree
bit for bit and do not can be told apart here first.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vqa.errors import VQAError
from vqa.records import record_from_dict, record_to_dict
from vqa.storage import read_json, write_json

ENVIRONMENT_FILE = "environment.json"
FORMAT_VERSION = 1
PACKAGES = ("tensorflow", "keras", "jax", "jaxlib", "numpy", "h5py", "spacy")
CODE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Session:
    """The environment of one ``vqa train`` session.

    Attributes:
        started_after_epoch: the epochs already done when it started (0 for a new run).
        packages: package name -> installed version, or None.
        backend: the Keras backend.
        devices: the devices the backend saw, e.g. "gpu:0 NVIDIA H200" (all processes' in a cluster).
        num_processes: the training processes (``vqa.distributed``).
        python: the Python version.
        platform: ``platform.platform()``.
        cpu: the CPU model, where the system says.
        git_commit: the code's commit, or None outside a git checkout.
        git_dirty: whether the checkout had uncommitted changes (None without git).
    """

    started_after_epoch: int
    packages: dict[str, str | None]
    backend: str
    devices: tuple[str, ...]
    num_processes: int = 1
    python: str = ""
    platform: str = ""
    cpu: str = ""
    git_commit: str | None = None
    git_dirty: bool | None = None


@dataclass(frozen=True)
class Environment:
    """``environment.json``: the sessions of a run, oldest first."""

    format_version: int = FORMAT_VERSION
    sessions: list[Session] = field(default_factory=list)


def environment_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / ENVIRONMENT_FILE


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(CODE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the checkout holding this code, or (None, None) when the
    code is not a tracked file of a git checkout (an installed copy, even inside another repository)."""
    if _git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None, None
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def backend_devices() -> list[str]:
    """The devices the Keras backend sees, named with their kind ("gpu:0 NVIDIA H200", "cpu:0")."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        names = []
        for device in tf.config.list_logical_devices():
            kind, index = device.device_type.lower(), device.name.rsplit(":", 1)[-1]
            detail = ""
            if kind == "gpu":
                physical = tf.config.list_physical_devices("GPU")
                if physical:
                    detail = tf.config.experimental.get_device_details(physical[0]).get("device_name", "")
            names.append(f"{kind}:{index} {detail}".strip())
        return names
    return []


def current_session(started_after_epoch: int, num_processes: int = 1) -> Session:
    """This process's environment, as one session record."""
    import keras

    commit, dirty = git_state()
    return Session(started_after_epoch=started_after_epoch, packages=package_versions(),
                   backend=keras.backend.backend(), devices=tuple(backend_devices()), num_processes=num_processes,
                   python=sys.version.split()[0], platform=platform.platform(), cpu=_cpu_model(),
                   git_commit=commit, git_dirty=dirty)


def read_environment(run_dir: str | Path) -> Environment:
    """RUN's environment record; an empty one when RUN has none (trained by an older vqa).

    Raises:
        VQAError: the file is not JSON or not an environment record.
    """
    path = environment_path(run_dir)
    if not path.is_file():
        return Environment()
    data = read_json(path, "environment record")
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise VQAError(f"{path} is not an environment record of format {FORMAT_VERSION}; delete it (training "
                       "writes a new one).")
    sessions = data.get("sessions")
    if not isinstance(sessions, list):
        raise VQAError(f"{path} lacks its list of sessions; delete it (training writes a new one).")
    return Environment(sessions=[record_from_dict(Session, item, str(path), "delete it") for item in sessions])


def record_session(run_dir: str | Path, session: Session) -> None:
    """Append ``session`` to RUN's environment record (created if needed)."""
    try:
        previous = read_environment(run_dir).sessions
    except VQAError:  # a damaged record is replaced rather than stopping training
        previous = []
    data: dict[str, Any] = {"format_version": FORMAT_VERSION,
                            "sessions": [record_to_dict(item) for item in [*previous, session]]}
    write_json(environment_path(run_dir), data)
