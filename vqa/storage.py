"""Atomic file writes and small JSON helpers.

Every artefact is written to a temporary name in the same folder and renamed
into place, so a file that exists under its final name is always complete,
whenever the process is killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vqa.bounded_read import read_bytes_capped, read_text_capped
from vqa.errors import VQAError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the final file name.
        suffix: suffix of the temporary name (some writers, such as Keras, insist
            on a particular extension); defaults to the final name's suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    prefix = f".{path.stem}."
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual permissions
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        named = getattr(error, "filename", None)
        if isinstance(error, OSError) and error.errno and (
                not named or Path(named).parent == path.parent and Path(named).name.startswith(prefix)):
            # h5py and zipfile report a full disk without a file name, and a failed temporary file is
            # hidden: the user needs to know which of their files it is.
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
        raise


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, mode: str = "w", lock: bool = False) -> Iterator[Any]:
    """Open an HDF5 file for writing (``mode`` "w" or "r+") through an unbuffered Python file.

    Through HDF5's own file driver a full disk is a crash: h5py segfaults when it closes a
    file whose write failed with ENOSPC. Through a Python file the failed write is an
    ordinary OSError that the CLI reports, and every write reaches the operating system at
    once, so whatever was flushed survives a SIGKILL.

    Args:
        path: the HDF5 file.
        mode: "w" creates (or truncates) it, "r+" updates it.
        lock: hold an exclusive lock while it is open; raises ``BlockingIOError`` at once
            when another process holds it.

    Yields:
        The open ``h5py.File``.
    """
    import h5py

    if mode not in ("w", "r+"):
        raise ValueError(f"open_h5 writes HDF5 files (mode 'w' or 'r+'), not mode {mode!r}")
    with open(path, "wb+" if mode == "w" else "rb+", buffering=0) as raw:
        if lock:
            import fcntl

            fcntl.flock(raw.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        recording = _RecordingFile(raw)
        try:
            with h5py.File(recording, mode) as f:
                yield f
        except BaseException as error:
            if recording.error is not None and error is not recording.error:
                raise recording.error from None
            raise


class _RecordingFile:
    """A file for h5py that remembers the first exception one of its writes raised.

    h5py cannot pass on an exception raised by a write it makes while closing the file
    (Ctrl-C, a full disk): it comes out as an unrelated error ("no attribute 'truncate'").
    ``open_h5`` raises the remembered exception instead.
    """

    def __init__(self, raw):
        self._raw = raw
        self.error: BaseException | None = None

    def write(self, data) -> int:
        try:
            return self._raw.write(data)
        except BaseException as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_lines(path: str | os.PathLike, lines: Any) -> None:
    """Write one item per line atomically; newlines inside items become spaces."""
    text = "".join(str(line).replace("\n", " ").replace("\r", " ") + "\n" for line in lines)
    write_text(path, text)


# The most bytes a file of lines may hold unless its reader says otherwise: the biggest split text file
# the pipeline writes, train2014's questions, is about 20 MB.
LINES_MAX_BYTES = 1 << 30


def read_lines(path: str | os.PathLike, limit: int = LINES_MAX_BYTES, what: str = "file") -> list[str]:
    """Read a file written by ``write_lines`` back into a list of strings.

    Args:
        path: the file.
        limit: the most bytes it can hold (``vqa.bounded_read``).
        what: a few words saying what the file is, for the error message.
    """
    return read_text_capped(path, limit, what).split("\n")[:-1]


def json_text(data: Any, indent: int | None = None) -> str:
    """``data`` as strict JSON: NaN and infinities (which strict readers reject) become null."""
    return json.dumps(_finite(data), indent=indent, ensure_ascii=False, allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as strict JSON atomically (see ``json_text``)."""
    write_text(path, json_text(data, indent) + "\n")


# The bound of ``read_json`` unless a caller names another: the settings, records and vocabularies the
# project writes are all under 1 MB for the real VQA v2 (a run's configuration is 2 KB, the answer vocabulary
# 50 KB); a bigger file is another file given by mistake.
SMALL_JSON_MAX_BYTES = 64 << 20


def read_json(path: str | os.PathLike, what: str = "file", limit: int = SMALL_JSON_MAX_BYTES) -> Any:
    """Read a JSON file, turning a missing, oversized or malformed file into a ``VQAError``.

    Args:
        path: the file.
        what: a few words saying what the file is, for the error message.
        limit: the most bytes the file can hold (``vqa.bounded_read``); pass a bigger bound for the
            official questions and annotations and for results files.
    """
    path = Path(path)
    try:
        return json.loads(read_bytes_capped(path, limit, what))
    except FileNotFoundError:
        raise VQAError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise VQAError(f"{what} {path} is a folder, not a JSON file.") from None
    except json.JSONDecodeError as e:
        raise VQAError(
            f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "it may be truncated: download or write it again."
        ) from None
    except UnicodeDecodeError:
        raise VQAError(f"{what} {path} is not UTF-8 text; save it as UTF-8 (JSON files are UTF-8).") from None
    except RecursionError:
        raise VQAError(f"{what} {path} is {NESTED_TOO_DEEPLY}; is it the right file?") from None


# What a JSON text nested beyond Python's recursion limit is, for messages (``json`` raises RecursionError).
NESTED_TOO_DEEPLY = "nested too deeply to be read as JSON (arrays or objects thousands of levels deep)"
