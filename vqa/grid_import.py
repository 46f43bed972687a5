"""Importing grid features from Cyanogenoid/pytorch-vqa into a split's grid file.

Reads the HDF5 file pytorch-vqa's ``preprocess-images.py`` writes (``features`` (N, C, H, W),
``ids`` (N,) COCO image ids) and writes the grid file of ``vqa.grid_features`` (rows in the
asked order, (H, W, C), layer ``IMPORTED_LAYER``, attribute ``source``), streaming a block
of images at a time, so a 25-GB source is never in memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from vqa.backbone import BackboneSpec
from vqa.errors import VQAError, brief
from vqa.feature_values import check_float16_range, nonfinite_rows
from vqa.features import ExtractionResult, check_dtype
from vqa.grid_features import IMPORTED_LAYER, READ_ERRORS, create_grid_datasets, read_sorted_rows, write_grid_attrs
from vqa.progress import progress
from vqa.storage import atomic_path, open_h5

logger = logging.getLogger(__name__)

_IMPORT_BLOCK = 64  # images per read while importing (64 x 14 x 14 x 2048 float16 = 51 MB)


def import_pytorch_vqa(h5_path: str | os.PathLike, image_ids: Iterable[int], out_path: str | os.PathLike,
                       dtype: str = "float16", log: Callable[[str], None] | None = None) -> ExtractionResult:
    """Import grid features in the layout of Cyanogenoid/pytorch-vqa's ``preprocess-images.py``.

    The source holds datasets ``features`` (N, C, H, W) (float16 there, any C, H, W) and
    ``ids`` (N,) COCO image ids. Rows are written in the order of ``image_ids``,
    transposed to (H, W, C), streaming: the source is read in increasing row order,
    ``_IMPORT_BLOCK`` images at a time, so a 25-GB file is never in memory. An image whose
    grid holds NaN or inf is skipped and named; a file whose shape looks channels-last
    ((N, H, W, C)) is warned about through ``log``.

    Args:
        h5_path: the source HDF5 file.
        image_ids: ids to import, in the order of the output rows; unique.
        out_path: the grid file to write (atomically), ``vqa.grid_features.grid_path(split_dir)``.
        dtype: "float16" or "float32".
        log: called with a warning sentence (default: this module's logger).

    Returns:
        The ``ExtractionResult``; ids not in the source ("not in <file>") and ids whose grid
        holds NaN or inf are in ``skipped``.

    Raises:
        VQAError: the source is missing or not such a file (no ``features``/``ids``, wrong
            shapes, ids that do not match the rows or repeat), or holds values beyond float16's
            range while ``dtype`` is float16.
    """
    dtype = check_dtype(dtype)
    h5_path, out_path = Path(h5_path), Path(out_path)
    image_ids = np.array([int(i) for i in image_ids], dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to import_pytorch_vqa must be unique")
    with _open_source(h5_path) as source:
        features, source_ids = _source_datasets(h5_path, source)
        num_images, channels, height, width = features.shape
        if channels < height * width and width > max(channels, height):
            (log or logger.warning)(
                f"grid features {h5_path} read as (N, C, H, W) are {features.shape}: {channels} channels of "
                f"{height} x {width} cells, where grids have many channels over few cells; if the file is "
                "channels-last (N, H, W, C), the grids are imported transposed: write it as (N, C, H, W), as "
                "pytorch-vqa's preprocess-images.py does.")
        row_of = {int(i): row for row, i in enumerate(source_ids.tolist())}
        keep = np.array([int(i) in row_of for i in image_ids], dtype=bool)
        skipped = {int(i): f"not in {h5_path.name}" for i in image_ids[~keep]}
        kept_ids = image_ids[keep]
        source_rows = np.array([row_of[int(i)] for i in kept_ids], dtype=np.int64)
        by_source = np.argsort(source_rows, kind="stable")  # output rows in increasing source-row order
        spec = BackboneSpec.for_import(h5_path.resolve(), channels)
        bad: dict[int, str] = {}  # output row -> why it is unusable
        with atomic_path(out_path) as tmp:
            with open_h5(tmp, "w") as f:
                out = create_grid_datasets(f, kept_ids, (height, width, channels), dtype, allocate=True)
                with progress(total=len(kept_ids), desc="import grid features", unit="img") as bar:
                    for start in range(0, len(by_source), _IMPORT_BLOCK):
                        out_rows = by_source[start:start + _IMPORT_BLOCK]
                        try:
                            block = read_sorted_rows(features, source_rows[out_rows])
                        except READ_ERRORS as error:
                            raise VQAError(f"{h5_path} could not be read ({brief(error)}); it may be truncated: "
                                           "copy or make it again.") from None
                        nonfinite = nonfinite_rows(block)
                        bad.update((int(row), f"NaN or inf in its grid in {h5_path.name}")
                                   for row in out_rows[nonfinite])
                        read = min(start + _IMPORT_BLOCK, len(by_source))
                        check_float16_range(block[~nonfinite], dtype, f"grid features {h5_path}" + (
                            f" (in the first {read} of the {len(by_source)} images imported)"
                            if read < len(by_source) else ""))
                        block = np.ascontiguousarray(block.transpose(0, 2, 3, 1), dtype=dtype)
                        in_order = np.argsort(out_rows)
                        _write_sorted_rows(out, out_rows[in_order], block[in_order])
                        bar.update(len(out_rows))
                if bad:
                    keep = np.ones(len(kept_ids), dtype=bool)
                    keep[list(bad)] = False
                    _drop_rows(f, keep)
                    skipped.update((int(kept_ids[row]), reason) for row, reason in sorted(bad.items()))
                    kept_ids = kept_ids[keep]
                write_grid_attrs(f, spec, IMPORTED_LAYER, skipped, str(h5_path.resolve()))
    return ExtractionResult(out_path, kept_ids, skipped, computed=len(kept_ids))


def check_pytorch_vqa(h5_path: str | os.PathLike) -> tuple[int, int, int, int]:
    """The (N, C, H, W) of a pytorch-vqa grid file, checked as ``import_pytorch_vqa`` checks it, reading the ids only.

    Raises:
        VQAError: as ``import_pytorch_vqa`` for a missing, unreadable or malformed file.
    """
    h5_path = Path(h5_path)
    with _open_source(h5_path) as source:
        features, _ = _source_datasets(h5_path, source)
        return tuple(int(n) for n in features.shape)


def _open_source(h5_path: Path):
    """The pytorch-vqa file open for reading, or one sentence saying it is missing or no HDF5 file."""
    import h5py

    if not h5_path.is_file():
        raise VQAError(f"grid features to import {h5_path} do not exist; pass the HDF5 file that pytorch-vqa's "
                       "preprocess-images.py wrote.")
    try:
        return h5py.File(h5_path, "r")
    except READ_ERRORS as error:
        raise VQAError(f"{h5_path} is not a readable HDF5 file ({brief(error)}); pass the file that "
                       "pytorch-vqa's preprocess-images.py wrote.") from None


def _drop_rows(f, keep: np.ndarray) -> None:
    """Keep only the rows where ``keep`` is true, in order, in place: rows move down block by block, then the
    datasets shrink (rows only ever move to lower positions, so a block is read before it is overwritten)."""
    features = f["features"]
    written = 0
    for start in range(0, len(keep), _IMPORT_BLOCK):
        block_keep = keep[start:start + _IMPORT_BLOCK]
        if block_keep.any():
            rows = features[start:start + len(block_keep)][block_keep]
            features[written:written + len(rows)] = rows
            written += len(rows)
    features.resize(written, axis=0)
    image_ids = f["image_ids"][...][keep]
    del f["image_ids"]
    f.create_dataset("image_ids", data=image_ids)


def _source_datasets(h5_path: Path, source):
    """(features, ids as int64) of a pytorch-vqa file, checked, or one sentence saying what is wrong."""
    import h5py

    fix = "pass the file that pytorch-vqa's preprocess-images.py wrote"
    try:
        features, ids = source.get("features"), source.get("ids")
        if not isinstance(features, h5py.Dataset) or not isinstance(ids, h5py.Dataset):
            raise VQAError(f"{h5_path} lacks dataset 'features' or 'ids' (it has {sorted(source.keys())}); {fix}.")
        if features.ndim != 4 or ids.ndim != 1:
            raise VQAError(f"{h5_path} has 'features' of shape {features.shape} and 'ids' of shape {ids.shape}; "
                           f"expected (N, C, H, W) and (N,): {fix}.")
        if not (np.issubdtype(features.dtype, np.floating) and np.issubdtype(ids.dtype, np.integer)):
            raise VQAError(f"{h5_path} has {features.dtype} 'features' and {ids.dtype} 'ids'; expected float "
                           f"features and integer ids: {fix}.")
        source_ids = ids[...].astype(np.int64)
    except VQAError:
        raise
    except READ_ERRORS as error:
        raise VQAError(f"{h5_path} could not be read ({brief(error)}); it may be truncated: {fix}.") from None
    if len(source_ids) != len(features):
        raise VQAError(f"{h5_path} has {len(source_ids)} ids for {len(features)} feature rows; {fix}.")
    unique, counts = np.unique(source_ids, return_counts=True)
    if len(unique) != len(source_ids):
        raise VQAError(f"{h5_path} lists image {int(unique[counts > 1][0])} more than once in 'ids'; {fix}.")
    return features, source_ids


def _write_sorted_rows(dataset, rows: np.ndarray, values: np.ndarray) -> None:
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        dataset[first:last + 1] = values
    else:
        dataset[rows] = values
