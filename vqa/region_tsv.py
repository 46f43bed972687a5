"""Region features in peteanderson80/bottom-up-attention's TSV layout, read and written.

One line per image, the ``TSV_FIELDS`` tab-separated: image_id, image_w, image_h, num_boxes,
then the boxes float32 (K, 4) and the features float32 (K, D), each as base64 of its raw bytes;
a source is one file, a folder of ``*.tsv*`` parts or a glob. ``tsv_rows`` reads the wanted
images' lines, line by line, for ``vqa.region_import``; ``write_tsv`` writes such a file (the
demo's stand-in regions).
"""

from __future__ import annotations

import base64
import binascii
import csv
import glob
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from vqa.errors import VQAError, brief
from vqa.storage import atomic_path

if TYPE_CHECKING:
    from vqa.region_import import Row

TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
TSV_PART = re.compile(r".*\.tsv(\.\d+)?$")
# The longest field read: 100 boxes of 2048 float32 features are 1.1 MB of base64, 1,000 boxes 11 MB; a
# longer one is no TSV of regions, and csv would hold it whole in memory.
TSV_FIELD_MAX_BYTES = 64 << 20


def write_tsv(path: str | os.PathLike, rows: Iterable[tuple[int, float, float, np.ndarray, np.ndarray]]) -> int:
    """Write regions in peteanderson80/bottom-up-attention's TSV layout, atomically: what ``tsv_rows`` reads.

    One line per image, the ``TSV_FIELDS`` tab-separated and unquoted: image_id, image_w, image_h,
    num_boxes, then the boxes float32 (K, 4) x1, y1, x2, y2 in pixels and the features float32 (K, D),
    each as base64 of its raw bytes. The demo's stand-in region features are written with it.

    Args:
        path: the .tsv file; while it is written its temporary name does not end in .tsv, so a folder of
            parts never offers a half-written one.
        rows: (image id, image width, image height, boxes (K, 4), features (K, D)) per image.

    Returns:
        The number of lines written.
    """
    def encoded(array: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(array, np.float32).tobytes()).decode("ascii")

    lines = 0
    with atomic_path(path, suffix=".partial") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        for image_id, width, height, boxes, features in rows:
            writer.writerow([int(image_id), width, height, len(boxes), encoded(boxes), encoded(features)])
            lines += 1
    return lines


def is_glob(path: Path) -> bool:
    """Whether ``path`` is a glob pattern (e.g. ``trainval_36.tsv.*``), which only the TSV layout takes."""
    return glob.has_magic(str(path))


def _tsv_parts(path: Path) -> list[Path]:
    """The TSV files of a file, folder of parts or glob."""
    if is_glob(path):
        parts = [Path(p) for p in sorted(glob.glob(str(path))) if Path(p).is_file()]
    elif path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.is_file() and TSV_PART.fullmatch(p.name))
    else:
        parts = [path]
    if not parts:
        raise VQAError(f"region features {path} match no file; pass the .tsv files of bottom-up-attention.")
    return parts


def tsv_ids(path: Path) -> Iterator[int]:
    """The image id of each line whose first field is one, part after part (the rest of a line is not decoded)."""
    for part in _tsv_parts(path):
        try:
            with part.open(encoding="latin-1") as f:
                for line in f:
                    first = line.split("\t", 1)[0].strip()
                    if first.isdigit():
                        yield int(first)
        except OSError as error:
            raise VQAError(f"region features {part} could not be read ({brief(error)}); "
                           "it may be truncated or not a bottom-up-attention TSV.") from None


def tsv_rows(path: Path, wanted: set[int]) -> Iterator[tuple[int, Row]]:
    """(image id, row) for each line of a wanted image, part after part; the rest are not decoded."""
    parts = _tsv_parts(path)
    limit = csv.field_size_limit()
    csv.field_size_limit(TSV_FIELD_MAX_BYTES)
    try:
        for part in parts:
            try:
                with part.open(newline="", encoding="latin-1") as f:  # a bad byte spoils its row only
                    lines = csv.reader(f, dialect="excel-tab")
                    for fields in lines:
                        image_id = int(fields[0]) if fields and fields[0].strip().isdigit() else None
                        if image_id in wanted:
                            yield image_id, _tsv_row(fields, f"line {lines.line_num} of {part.name}")
            except csv.Error as error:
                if "field limit" in str(error):
                    raise VQAError(f"region features {part} has a field over {TSV_FIELD_MAX_BYTES >> 20} MB on line "
                                   f"{lines.line_num}, more than any image's boxes take; it is not a "
                                   "bottom-up-attention TSV (or is damaged).") from None
                raise VQAError(f"region features {part} could not be read ({brief(error)}); "
                               "it may be truncated or not a bottom-up-attention TSV.") from None
            except OSError as error:
                raise VQAError(f"region features {part} could not be read ({brief(error)}); "
                               "it may be truncated or not a bottom-up-attention TSV.") from None
    finally:
        csv.field_size_limit(limit)


def _tsv_row(fields: list[str], where: str) -> Row:
    """One TSV line's regions, or why they are unusable (naming ``where``)."""
    if len(fields) != len(TSV_FIELDS):
        return f"{where} has {len(fields)} fields, not the {len(TSV_FIELDS)} of {', '.join(TSV_FIELDS)}"
    try:
        width, height, num_boxes = float(fields[1]), float(fields[2]), int(fields[3])
        boxes = np.frombuffer(base64.b64decode(fields[4], validate=True), dtype=np.float32)
        features = np.frombuffer(base64.b64decode(fields[5], validate=True), dtype=np.float32)
    except (ValueError, binascii.Error) as error:
        return f"{where} is not image_w, image_h, num_boxes and base64 float32 ({brief(error, 60)})"
    if num_boxes <= 0:
        return "0 boxes"
    if len(boxes) != num_boxes * 4 or len(features) % num_boxes:
        return (f"{where} has {len(boxes)} box values and {len(features)} feature values for {num_boxes} boxes "
                "(a wrong byte count)")
    return features.reshape(num_boxes, -1), boxes.reshape(num_boxes, 4), width, height
