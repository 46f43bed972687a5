"""An exclusive lock on an output folder, so two commands never write into the same folder at once.

``vqa preprocess`` locks OUT, ``vqa train`` locks RUN and ``vqa evaluate`` locks RUN's evaluation
folder of the split. The lock is ``fcntl.flock`` on a lock file inside the folder, which holds
the holder's process id and command; the kernel releases it when the holder exits, even after
a SIGKILL, so a stale lock file left by a killed process is simply taken over. The file is
removed when the lock is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from vqa.errors import VQAError

LOCK_FILE = ".vqa.lock"


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``."""
    return Path(folder) / LOCK_FILE


def _holder(fd: int) -> tuple[str, str]:
    """The process id and command written into an open lock file ("?" where unreadable)."""
    try:
        words = os.pread(fd, 4096, 0).decode("utf-8", "replace").split(maxsplit=1)
    except OSError:
        words = []
    return (words[0] if words else "?"), (words[1].strip() if len(words) > 1 else "?")


def _acquire(folder: Path) -> int:
    path = lock_path(folder)
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # another process removed the empty folder just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, command = _holder(fd)
            os.close(fd)
            raise VQAError(f"{folder} is in use by `vqa {command}` (process {pid}); wait for it to finish or "
                           "stop it, then run this command again.") from None
        # The holder before us may have removed the file after we opened it: keep the lock only on the
        # file that stands under the name now, or two processes could each hold a lock.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) while the block runs.

    Args:
        folder: the output folder.
        command: the ``vqa`` command taking it (e.g. "train"), named to a second process.

    Yields:
        The folder.

    Raises:
        VQAError: another process holds the lock; the sentence names the folder, its command and its PID.
    """
    folder = Path(folder)
    created = not folder.exists()
    fd = _acquire(folder)
    try:
        with contextlib.suppress(OSError):  # who holds it is for the message only; a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path(folder))
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # only an empty folder: a command that wrote nothing leaves nothing
                folder.rmdir()
