"""Reading a whole file with a bound on its size, so no input can fill the memory.

Every reader that loads a whole file (JSON, text lists, pickles) reads it through
``read_bytes_capped`` with a bound that fits the file's kind, named where that kind is read
(``vqa.metric.RESULTS_MAX_BYTES``, ``vqa.layout.OFFICIAL_JSON_MAX_BYTES``, ...). The size is
checked before reading, and the read itself stops one byte past the bound, so a file that
grows while it is read is still refused.

A device (``/dev/zero``), a FIFO or a socket is refused up front as "not a regular file":
a device may never end and a FIFO may never be written to, so neither can be told from a
hang, and every file this project reads is a regular one. The file is opened with
O_NONBLOCK, so even opening a FIFO that no one writes to returns at once, and checked on
the open descriptor, so a path swapped for a FIFO after a check is caught too.
"""

from __future__ import annotations

import errno
import os
import stat

from vqa.errors import VQAError

_CHUNK = 1 << 24  # what one read asks for once a file is found growing


def size_text(num_bytes: int) -> str:
    """A size for a sentence: "25 MB", "1.5 GB" (binary units, as ``ls -h``)."""
    if num_bytes >= 1 << 30:
        return f"{num_bytes / (1 << 30):.3g} GB"
    if num_bytes >= 1 << 20:
        return f"{num_bytes / (1 << 20):.3g} MB"
    return f"{num_bytes} bytes"


def too_big(path: str | os.PathLike, what: str, size: int | None, limit: int) -> VQAError:
    """The sentence for a file over its bound; ``size`` None when it grew past the bound while read."""
    shown, bound = size_text(size or 0), size_text(limit)
    if shown == bound:  # a few bytes over: say how many
        shown, bound = f"{size:,} bytes", f"{limit:,} bytes"
    said = f"is {shown}" if size is not None else f"grew past {bound} while it was read"
    return VQAError(f"{what} {path} {said}, over its limit of {bound}; is it the right file?")


def open_regular(path: str | os.PathLike, what: str) -> tuple[int, os.stat_result]:
    """An open read-only descriptor of ``path`` and its stat, or a sentence when it is not a regular file.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open`` (callers have their own sentences).
        VQAError: a device, FIFO or socket.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            raise VQAError(f"{what} {path} is not a regular file (a device, FIFO or socket); pass a file.")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def check_size(path: str | os.PathLike, limit: int, what: str) -> int:
    """The size of regular file ``path``, refused in one sentence when over ``limit`` bytes or not a regular file.

    For readers that stream a file rather than load it (word vectors): the stream is bounded by this size.
    """
    fd, info = open_regular(path, what)
    os.close(fd)
    if info.st_size > limit:
        raise too_big(path, what, info.st_size, limit)
    return info.st_size


def read_bytes_capped(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The whole of regular file ``path``, refused when it is (or grows) over ``limit`` bytes.

    Args:
        path: the file.
        limit: the most bytes a file of this kind can hold.
        what: a few words saying what the file is ("results file"), for the sentence.

    Raises:
        VQAError: over the bound, or not a regular file.
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open``.
    """
    fd, info = open_regular(path, what)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if info.st_size > limit:
            raise too_big(path, what, info.st_size, limit)
        data = f.read(info.st_size + 1)  # one byte more than stat saw: does the file go on?
        if len(data) <= info.st_size:
            return data
        chunks, total = [data], len(data)
        while total <= limit and (chunk := f.read(min(_CHUNK, limit + 1 - total))):
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:
        raise too_big(path, what, None, limit)
    return b"".join(chunks)


def read_text_capped(path: str | os.PathLike, limit: int, what: str) -> str:
    """``read_bytes_capped`` decoded as UTF-8 (a ``UnicodeDecodeError`` is left to the caller's sentence)."""
    return read_bytes_capped(path, limit, what).decode("utf-8")

