"""Reading another project's image-id -> row map, the index into its feature file.

Three forms, told apart by the file's suffix:

    .pkl / .pickle   a pickled dict {image id: row}: hengyuan-hu's ``{split}36_imgid2idx.pkl``
                     (written by Python 2, protocol 0 or 2, ints possibly ``long``) and ban-vqa's
    .json            an object {"<image id>": row}
    anything else    text, one ``<image id> <row>`` per line; ``#`` comments and blank lines skipped

A pickle is a program, so it is never run as one: ``_PlainUnpickler`` refuses every global
(no class, no function such as ``os.system``), which leaves only builtin dicts, lists, ints
and strings able to come out, and the result is then checked to be a dict of ids to rows.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

from vqa.bounded_read import read_bytes_capped
from vqa.errors import VQAError, brief
from vqa.storage import read_json

MAX_BYTES = 256 << 20  # the COCO maps are about 1 MB; a bigger file is the wrong file
PICKLE_SUFFIXES = (".pkl", ".pickle")


def read_id_map(path: str | os.PathLike) -> dict[int, int]:
    """Image id -> row (0-based) from a pickle, JSON or text id map.

    Args:
        path: the id map; its suffix says its form (see the module docstring).

    Returns:
        The map; keys and values are non-negative ints.

    Raises:
        VQAError: the file is missing, over 256 MB, would run code, holds anything but ids and
            rows, or has a malformed line (named by its 1-based number).
    """
    path = Path(path)
    if not path.exists():
        raise VQAError(f"id map {path} does not exist; pass the image-id -> row map that came with the features.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _checked(path, _load_pickle(path), "a plain dict of image ids to rows (it would run code or holds "
                        "other objects); pass the imgid2idx pickle that came with the features, or a JSON or text map")
    if path.suffix.lower() == ".json":
        return _checked(path, read_json(path, "id map", MAX_BYTES), 'a JSON object of "<image id>": row; fix or replace it')
    return _read_text(path)


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global at all, so loading runs no code of the file's choosing."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def _load_pickle(path: Path) -> object:
    """The pickle's object, or None when it could not be loaded plainly (refused, damaged)."""
    try:
        data = read_bytes_capped(path, MAX_BYTES, "id map")
    except OSError as error:
        raise VQAError(f"id map {path} could not be read ({brief(error)}).") from None
    try:
        # encoding: Python 2 byte strings (digit keys, if any) come out as str.
        return _PlainUnpickler(io.BytesIO(data), encoding="ascii").load()
    except Exception:  # a refused global, a damaged stream: pickle raises a dozen types, and none is the user's fault
        return None


def _checked(path: Path, data: object, expected: str) -> dict[int, int]:
    """``data`` as {int: int} when it is a dict of id keys (ints or digit strings) to non-negative int rows."""
    if isinstance(data, dict):
        rows: dict[int, int] = {}
        for key, row in data.items():
            image_id = _as_id(key)
            if image_id is None or _as_id(row) is None or image_id in rows:
                break
            rows[image_id] = int(row)
        else:
            return rows
    raise VQAError(f"id map {path} is not {expected}.")


def _as_id(value: object) -> int | None:
    """A non-negative int from an int (not a bool) or a string of ASCII digits, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _read_text(path: Path) -> dict[int, int]:
    try:
        lines = read_bytes_capped(path, MAX_BYTES, "id map").decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise VQAError(f"id map {path} is not a text file of '<image id> <row>' lines (nor .pkl or .json).") from None
    except OSError as error:
        raise VQAError(f"id map {path} could not be read ({brief(error)}).") from None
    rows: dict[int, int] = {}
    first_line: dict[int, int] = {}
    for line_number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        image_id, row = (_as_id(field) for field in fields) if len(fields) == 2 else (None, None)
        if image_id is None or row is None:
            raise VQAError(f"id map {path} line {line_number} is {line.strip()!r}, not '<image id> <row>' "
                           "(two non-negative integers); fix or replace the file.")
        if image_id in rows:
            raise VQAError(f"id map {path} line {line_number} maps image {image_id} again (first on line "
                           f"{first_line[image_id]}); fix or replace the file.")
        rows[image_id], first_line[image_id] = row, line_number
    return rows
