"""Progress bars for long steps (tqdm, which spaCy already depends on)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = None) -> tqdm:
    """A progress bar with rate and time left, written to stderr.

    Bars redraw often on a terminal and every few seconds in a log file;
    ``VQA_NO_PROGRESS=1`` hides them.
    """
    if disable is None:
        disable = os.environ.get("VQA_NO_PROGRESS", "") not in ("", "0")
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                file=sys.stderr, smoothing=0.1, mininterval=0.2 if interactive else 5.0)
