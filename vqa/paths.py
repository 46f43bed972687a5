"""Refuse output paths that collide, before a command does any work.

An output that is also one of the command's inputs, or another of its outputs, would be
overwritten (``vqa score --results mine.json --per-question mine.json`` would replace the
results with per-question scores), so every command that writes files checks them first.
An output inside an input folder, or one holding an input, is refused as well: its files
would mix with the input's (``vqa train --data OUT --out OUT/train2014`` writes a run into a
split folder that the next ``vqa preprocess`` into OUT rewrites).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from vqa.errors import VQAError

PathLike = str | os.PathLike


def _same(a: PathLike, b: PathLike) -> bool:
    """One file or folder under two names: the same real path, or (both existing) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` lies strictly inside ``folder``, links resolved."""
    real_path, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real_path != real_folder and real_path.is_relative_to(real_folder)


def check_outputs(inputs: Mapping[str, PathLike | None], outputs: Mapping[str, PathLike | None]) -> None:
    """Refuse an output that equals an input or another output, lies inside an input, or holds one.

    Args:
        inputs: what names each input (an option such as "--results", or "the val2014 annotations
            file") -> its path; None entries are not given and skipped.
        outputs: the same for the outputs. List the outputs the user chooses last, so the sentence
            names the option they can change.

    Raises:
        VQAError: "--per-question mine.json is also --results; choose another file name.", or
            "--out data/processed/train2014/run is inside --data data/processed; choose a folder outside it."
    """
    given_inputs = [(name, path) for name, path in inputs.items() if path is not None]
    given_outputs = [(name, path) for name, path in outputs.items() if path is not None]
    for position, (name, path) in enumerate(given_outputs):
        for other, other_path in given_outputs[:position] + given_inputs:
            if _same(path, other_path):
                kind = "folder" if Path(path).is_dir() else "file name"
                raise VQAError(f"{name} {path} is also {other}; choose another {kind}.")
        for other, other_path in given_inputs:
            if _inside(path, other_path):
                raise VQAError(f"{name} {path} is inside {other} {other_path}; choose a folder outside it.")
            if _inside(other_path, path):
                raise VQAError(f"{name} {path} holds {other} {other_path}; choose a folder that does not hold it.")
