"""The learning section's finished runs, kept on disk so that a killed section resumes where it stopped.

The learning matrix is hours of training on a CPU. ``vqa bench`` keeps each finished run in a
folder beside its results file (``bench/results-learning/`` for ``bench/results.json``): one JSON
file per (dataset, size, model) row and per (dataset, size, source) reference. Each file holds
its ``key``: everything the figures depend on (the dataset and its sizes, the model's resolved
recipe or the reference's, and a fingerprint of the ``vqa`` package's source). A rerun reuses a
file whose key is the same and retrains anything else, so a restarted ``make bench
SECTIONS=learning`` trains only what is missing, and a change to a recipe or to the code
retrains what it could change. Deleting the folder starts over.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import vqa
from vqa.errors import VQAError
from vqa.storage import json_text, read_json, write_json

FORMAT_VERSION = 1


def code_fingerprint() -> str:
    """SHA-256 of every ``.py`` file of the ``vqa`` package, by relative path: any code change gives another."""
    package = Path(vqa.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class LearningRows:
    """The finished runs in ``folder``: ``get`` what a key already measured, ``put`` what a run just measured."""

    def __init__(self, folder: Path, fingerprint: str | None = None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint or code_fingerprint()

    def path(self, *names: str) -> Path:
        """The file of one row: its names joined, with anything but letters, digits, '.' and '-' as '_'."""
        return self.folder / (re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(names)) + ".json")

    def get(self, names: tuple[str, ...], key: dict[str, Any]) -> dict | None:
        """The figures kept for ``names`` under this very ``key`` and code, or None (none kept, or another key)."""
        path = self.path(*names)
        if not path.exists():
            return None
        try:
            kept = read_json(path, "a finished learning run")
        except VQAError:  # a damaged file is retrained, not trusted
            return None
        if not isinstance(kept, dict) or kept.get("key") != self._full_key(key):
            return None
        return kept.get("figures")

    def put(self, names: tuple[str, ...], key: dict[str, Any], figures: dict) -> Path:
        """Keep ``figures`` for ``names`` under ``key`` (atomic write); the file written."""
        path = self.path(*names)
        write_json(path, {"format_version": FORMAT_VERSION, "key": self._full_key(key), "figures": figures})
        return path

    def _full_key(self, key: dict[str, Any]) -> dict[str, Any]:
        # Through JSON and back, so a key compares equal to the one read from its file (tuples become lists).
        return json.loads(json_text({**key, "format_version": FORMAT_VERSION, "code": self.fingerprint}))
