"""The grid-feature file of a preprocessed split: ``OUT/<split>/grid_features.h5``.

Layout: datasets ``image_ids`` int64 (M,) and ``features`` float16 (M, H, W, C),
channels-last, chunked one image per chunk (``chunks=(1, H, W, C)``, no compression),
so reading an image is one chunk read; attributes ``backbone`` (the JSON of the
``vqa.backbone.BackboneSpec`` that made them), ``layer`` (e.g. "block5_pool"),
``skipped`` (JSON: image id -> why it has no row) and, for imports, ``source``.
Full COCO at 14 x 14 x 512 is about 25 GB, so nothing here reads the file whole:
``GridReader`` reads the rows a batch asks for, in sorted order, and mean-pools
block by block; ``import_pytorch_vqa`` streams another project's file across, and
``write_grid_rows`` streams the rows ``vqa.extraction`` computed (from its partial
file or from shard files) into the final file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from vqa.backbone import BackboneSpec
from vqa.errors import VQAError, brief
from vqa.feature_values import check_float16_range, nonfinite_rows
from vqa.features import ExtractionResult, check_dtype, finished_file
from vqa.progress import progress
from vqa.storage import atomic_path, open_h5

logger = logging.getLogger(__name__)

FILENAME = "grid_features.h5"
IMPORTED_LAYER = "imported"  # the ``layer`` of features imported from another project
_IMPORT_BLOCK = 64  # images per read while importing (64 x 14 x 14 x 2048 float16 = 51 MB)
_COPY_BYTES = 64 << 20  # bytes of grids per block while writing extracted rows (320 images of 14 x 14 x 512)
# What h5py and HDF5 raise for a missing dataset or attribute, a damaged file or bad JSON in it.
_READ_ERRORS = (OSError, KeyError, ValueError, RecursionError, TypeError, AttributeError, VQAError)


def grid_path(split_dir: str | os.PathLike) -> Path:
    """Where a preprocessed split folder keeps its grid features."""
    return Path(split_dir) / FILENAME


@dataclass(frozen=True)
class GridInfo:
    """A grid file's description, without its rows.

    Attributes:
        path: the grid file.
        image_ids: int64 (M,), the rows' image ids.
        shape: (H, W, C) of one image's grid.
        spec: the backbone that made them.
        layer: the layer they come from ("block5_pool", or "imported").
        skipped: image id -> reason, for images without a row.
        source: the file they were imported from ("" when extracted here).
    """

    path: Path
    image_ids: np.ndarray
    shape: tuple[int, int, int]
    spec: BackboneSpec
    layer: str
    skipped: dict[int, str]
    source: str = ""


def write_grids(path: str | os.PathLike, image_ids: Sequence[int] | np.ndarray, grids: np.ndarray,
                spec: BackboneSpec, layer: str, skipped: Mapping[int, str] | None = None,
                source: str = "", dtype: str = "float16") -> None:
    """Write a whole grid file at once, atomically.

    Args:
        path: the grid file (``grid_path``).
        image_ids: int (M,), one per row; unique.
        grids: (M, H, W, C), channels-last; stored as ``dtype``.
        spec: the backbone that made them.
        layer: the layer they come from.
        skipped: image id -> reason, for images without a row.
        source: the file they were imported from, if any.
        dtype: "float16" (the default and the usual choice) or "float32".
    """
    grids = np.asarray(grids)
    image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    dtype = check_dtype(dtype)
    if grids.ndim != 4 or len(grids) != len(image_ids):
        raise ValueError(f"{len(image_ids)} image ids for grids of shape {grids.shape}; expected (M, H, W, C)")
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to write_grids must be unique")
    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as f:
            features = _create(f, image_ids, grids.shape[1:], dtype)
            if len(grids):
                features[...] = grids.astype(dtype, copy=False)
            _write_attrs(f, spec, layer, skipped or {}, source)


def write_grid_rows(path: str | os.PathLike, image_ids: np.ndarray, keep: np.ndarray, grids, spec: BackboneSpec,
                    dtype: str, skipped: Mapping[int, str], extra_attrs: Mapping[str, str] | None = None) -> np.ndarray:
    """Write the grids where ``keep`` is true, in input order, as ``write_grids`` lays them out; return their ids.

    ``grids`` is read in blocks (``grids[start:stop]``, e.g. an open HDF5 dataset (N, H, W, C)),
    never whole: full COCO at 14 x 14 x 512 is 25 GB. The layer is ``spec.grid_layer``.
    Written atomically; ``extra_attrs`` (e.g. a shard's) are added to the file's attributes.
    """
    keep = np.asarray(keep, dtype=bool)
    kept = np.flatnonzero(keep)
    shape = tuple(int(n) for n in grids.shape[1:])
    block = max(1, _COPY_BYTES // max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
    with atomic_path(path) as tmp:
        with open_h5(tmp, "w") as f:
            out = _create(f, image_ids[kept], shape, dtype)
            written = 0
            for start in range(0, len(keep), block):
                block_keep = keep[start:start + block]
                if block_keep.any():
                    rows = np.asarray(grids[start:start + len(block_keep)])[block_keep]
                    out[written:written + len(rows)] = rows.astype(dtype, copy=False)
                    written += len(rows)
            _write_attrs(f, spec, spec.grid_layer, skipped, "")
            for key, value in (extra_attrs or {}).items():
                f.attrs[key] = value
    return image_ids[kept]


def read_grid_info(path: str | os.PathLike) -> GridInfo:
    """A grid file's ids, shape and attributes; reads no rows.

    Raises:
        VQAError: the file is missing, incomplete, truncated or not a grid file.
    """
    import h5py

    path = _existing(path)
    try:
        with h5py.File(path, "r") as f:
            return _info(path, f)
    except _READ_ERRORS as error:
        raise _unreadable(path, error) from None


class GridReader:
    """An open, read-only grid file: reads batches of rows and mean-pools, never holding the file in memory.

    Use as a context manager, or call ``close()``. Reads hold the reader's lock (h5py handles
    are not safe to share across threads otherwise), so one reader may serve a background
    prefetch thread and the training loop at once.

    Attributes:
        info: the file's ``GridInfo``.
        image_ids: int64 (M,), the rows' image ids.
        shape: (H, W, C) of one image's grid.
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = _existing(path)
        try:
            self._file = h5py.File(self.path, "r")
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error) from None
        try:
            self.info = _info(self.path, self._file)
            self._features = self._file["features"]
        except _READ_ERRORS as error:
            self._file.close()
            raise _unreadable(self.path, error) from None
        self.image_ids = self.info.image_ids
        self.shape = self.info.shape
        self.dtype = self._features.dtype
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __enter__(self) -> "GridReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (again is harmless)."""
        self._file.close()

    def read(self, rows: Iterable[int] | np.ndarray) -> np.ndarray:
        """The grids of ``rows``, in the asked order: (B, H, W, C) in the stored dtype (float16).

        The distinct rows are read from disk in increasing order (what h5py's selections
        need, and what keeps a batch's reads short), then put back in the asked order;
        a row may repeat, and row -1 (an image without features) gives zeros.

        Raises:
            IndexError: a row is below -1 or not in the file.
            VQAError: the file cannot be read (truncated, damaged disk).
        """
        rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -1 or rows.max() >= len(self.image_ids)):
            raise IndexError(f"rows {rows.min()}..{rows.max()} asked of {self.path}, which has "
                             f"{len(self.image_ids)} rows (-1 means no image)")
        out = np.zeros((len(rows), *self.shape), dtype=self.dtype)
        present = rows >= 0
        unique, inverse = np.unique(rows[present], return_inverse=True)
        if len(unique):
            try:
                with self._lock:
                    block = read_sorted_rows(self._features, unique)
            except _READ_ERRORS as error:
                raise _unreadable(self.path, error) from None
            out[present] = block[inverse.reshape(-1)]
        return out

    def mean_pooled(self, block: int = 256) -> np.ndarray:
        """float32 (M, C): each image's mean over its H x W cells, read ``block`` images at a time.

        Lets the global models train on a grid file, so every model compares on one file.
        """
        if block < 1:
            raise ValueError(f"block must be positive, got {block}")
        pooled = np.zeros((len(self.image_ids), self.shape[2]), dtype=np.float32)
        try:
            for start in range(0, len(pooled), block):
                with self._lock:
                    grids = self._features[start:start + block]
                pooled[start:start + len(grids)] = grids.mean(axis=(1, 2), dtype=np.float32)
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error) from None
        return pooled


def read_sorted_rows(dataset, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` for strictly increasing ``rows``, read as slices of consecutive rows.

    h5py's list selection (``dataset[[3, 9, 27]]``) costs about 1.6 ms a row on a 7 x 7 x 512
    grid file, 60 times a plain slice of the same row (``read_direct`` into the result is
    slower than slicing too: it builds two selections per call), so each run of consecutive
    rows is read as one slice.
    """
    rows = np.asarray(rows, dtype=np.int64)
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        return dataset[first:last + 1]
    out = np.empty((len(rows), *dataset.shape[1:]), dtype=dataset.dtype)
    starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)  # where a run of consecutive rows begins
    for begin, end in zip(starts, [*starts[1:], len(rows)]):
        out[begin:end] = dataset[int(rows[begin]):int(rows[begin]) + int(end - begin)]
    return out


# --- import from Cyanogenoid/pytorch-vqa -----------------------------------------------------------


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
        out_path: the grid file to write (atomically), ``grid_path(split_dir)``.
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
                out = _create(f, kept_ids, (height, width, channels), dtype, allocate=True)
                with progress(total=len(kept_ids), desc="import grid features", unit="img") as bar:
                    for start in range(0, len(by_source), _IMPORT_BLOCK):
                        out_rows = by_source[start:start + _IMPORT_BLOCK]
                        try:
                            block = read_sorted_rows(features, source_rows[out_rows])
                        except _READ_ERRORS as error:
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
                _write_attrs(f, spec, IMPORTED_LAYER, skipped, str(h5_path.resolve()))
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
    except _READ_ERRORS as error:
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
    except _READ_ERRORS as error:
        raise VQAError(f"{h5_path} could not be read ({brief(error)}); it may be truncated: {fix}.") from None
    if len(source_ids) != len(features):
        raise VQAError(f"{h5_path} has {len(source_ids)} ids for {len(features)} feature rows; {fix}.")
    unique, counts = np.unique(source_ids, return_counts=True)
    if len(unique) != len(source_ids):
        raise VQAError(f"{h5_path} lists image {int(unique[counts > 1][0])} more than once in 'ids'; {fix}.")
    return features, source_ids


# --- shared by the writers and the readers ---------------------------------------------------------


def _create(f, image_ids: np.ndarray, shape: Sequence[int], dtype: str, allocate: bool = False):
    """The two datasets, features chunked one image per chunk; ``allocate`` lays all chunks out in row order now."""
    import h5py

    height, width, channels = (int(n) for n in shape)
    f.create_dataset("image_ids", data=np.asarray(image_ids, dtype=np.int64))
    options = {}
    if allocate:  # rows written out of order still lie in row order on disk
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        options = {"dcpl": plist, "fill_time": "never"}
    # An unlimited first axis lets an empty file have one-image chunks too.
    return f.create_dataset("features", shape=(len(image_ids), height, width, channels), dtype=dtype,
                            chunks=(1, height, width, channels), maxshape=(None, height, width, channels), **options)


def _write_attrs(f, spec: BackboneSpec, layer: str, skipped: Mapping[int, str], source: str) -> None:
    f.attrs["backbone"] = spec.to_json()
    f.attrs["layer"] = str(layer)
    f.attrs["skipped"] = json.dumps({str(k): str(v) for k, v in skipped.items()})
    if source:
        f.attrs["source"] = str(source)


def _write_sorted_rows(dataset, rows: np.ndarray, values: np.ndarray) -> None:
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == len(rows):
        dataset[first:last + 1] = values
    else:
        dataset[rows] = values


def _info(path: Path, f) -> GridInfo:
    features, image_ids = f["features"], f["image_ids"][...]
    if features.ndim != 4 or image_ids.ndim != 1 or len(image_ids) != features.shape[0]:
        raise ValueError(f"{image_ids.shape} ids for features of shape {features.shape}")
    check_dtype(features.dtype)
    spec = BackboneSpec.from_dict(json.loads(f.attrs["backbone"]))
    skipped = {int(k): str(v) for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}
    source = f.attrs.get("source", "")
    return GridInfo(path=path, image_ids=image_ids.astype(np.int64), shape=tuple(int(n) for n in features.shape[1:]),
                    spec=spec, layer=str(f.attrs["layer"]), skipped=skipped, source=str(source))


def _unreadable(path: Path, error: BaseException) -> VQAError:
    return VQAError(f"grid features {path} are not a readable grid file ({brief(error)}); "
                    "delete it and extract or import them again.")


def _existing(path: str | os.PathLike) -> Path:
    """``path``, checked to be a finished grid file (not missing, not still a .partial)."""
    return finished_file(path, "grid features", "run the extraction again to finish them",
                         "extract or import them first")
