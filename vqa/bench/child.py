"""Child processes and memory sampling: each peak-memory figure belongs to one measurement alone."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CHILD_TIMEOUT_S = 400
_CHILD_CODE = ("import importlib, json, sys; from vqa.storage import write_json; "
               "module, _, name = sys.argv[1].rpartition('.'); "
               "write_json(sys.argv[3], getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2])))")


def child_env() -> dict:
    """This process's environment for a child: TensorFlow quieter, this checkout of vqa first on the path."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH")]))
    return env


def run_in_child(function: str, timeout_s: float = CHILD_TIMEOUT_S, **kwargs) -> dict:
    """Run ``function(**kwargs)`` in a fresh Python process and return its JSON result.

    Args:
        function: the dotted path of a function returning a JSON-able dict, e.g.
            ``"vqa.bench.training.training_child"``.
        timeout_s: how long the child may run before it is killed (and this raises).
        kwargs: JSON-able keyword arguments.

    A fresh process gives each peak-memory figure to one measurement alone and keeps
    global TensorFlow settings of one section out of another.
    """
    module, _, name = function.rpartition(".")
    if not module or not hasattr(importlib.import_module(module), name):
        raise ValueError(f"{function!r} is not the dotted path of a function")
    with tempfile.TemporaryDirectory(prefix="vqa-bench-child-") as folder:
        result_path = Path(folder) / "result.json"
        completed = subprocess.run([sys.executable, "-c", _CHILD_CODE, function, json.dumps(kwargs), str(result_path)],
                                   capture_output=True, text=True, env=child_env(), timeout=timeout_s)
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"bench child {function} exited with {completed.returncode}: "
                               f"{completed.stderr.strip()[-800:]}")
        return json.loads(result_path.read_text(encoding="utf-8"))


class RSSSampler:
    """Samples this process's resident memory every 10 ms in a thread: ``start`` and ``peak`` bytes."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "RSSSampler":
        self.start = self.peak = current_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_bytes())


def current_rss_bytes() -> int:
    """Resident memory now (/proc/self/statm); the peak so far where /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
