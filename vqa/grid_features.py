"""The grid-feature file of a preprocessed split: ``OUT/<split>/grid_features.h5``.

Layout: datasets ``image_ids`` int64 (M,) and ``features`` float16 (M, H, W, C),
channels-last, chunked one image per chunk (``chunks=(1, H, W, C)``, no compression),
so reading an image is one chunk read; attributes ``backbone`` (the JSON of the
``vqa.backbone.BackboneSpec`` that made them), ``layer`` (e.g. "block5_pool"),
``skipped`` (JSON: image id -> why it has no row) and, for imports, ``source``.
Full COCO at 14 x 14 x 512 is about 25 GB, so nothing here reads the file whole:
``GridReader`` reads the rows a batch asks for, in sorted order, and mean-pools
block by block; ``vqa.grid_import.import_pytorch_vqa`` streams another project's
file across, and ``write_grid_rows`` streams the rows ``vqa.extraction`` computed
(from its partial file or from shard files) into the final file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from vqa.backbone import BackboneSpec
from vqa.errors import VQAError, brief
from vqa.features import check_dtype, finished_file
from vqa.storage import atomic_path, open_h5

FILENAME = "grid_features.h5"
IMPORTED_LAYER = "imported"  # the ``layer`` of features imported from another project
_COPY_BYTES = 64 << 20  # bytes of grids per block while writing extracted rows (320 images of 14 x 14 x 512)
# What h5py and HDF5 raise for a missing dataset or attribute, a damaged file or bad JSON in it.
READ_ERRORS = (OSError, KeyError, ValueError, RecursionError, TypeError, AttributeError, VQAError)


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
            features = create_grid_datasets(f, image_ids, grids.shape[1:], dtype)
            if len(grids):
                features[...] = grids.astype(dtype, copy=False)
            write_grid_attrs(f, spec, layer, skipped or {}, source)


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
            out = create_grid_datasets(f, image_ids[kept], shape, dtype)
            written = 0
            for start in range(0, len(keep), block):
                block_keep = keep[start:start + block]
                if block_keep.any():
                    rows = np.asarray(grids[start:start + len(block_keep)])[block_keep]
                    out[written:written + len(rows)] = rows.astype(dtype, copy=False)
                    written += len(rows)
            write_grid_attrs(f, spec, spec.grid_layer, skipped, "")
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
    except READ_ERRORS as error:
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
        except READ_ERRORS as error:
            raise _unreadable(self.path, error) from None
        try:
            self.info = _info(self.path, self._file)
            self._features = self._file["features"]
        except READ_ERRORS as error:
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
            except READ_ERRORS as error:
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
        except READ_ERRORS as error:
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


# --- shared by the writers (here and in vqa.grid_import) and the readers ----------------------------


def create_grid_datasets(f, image_ids: np.ndarray, shape: Sequence[int], dtype: str, allocate: bool = False):
    """Create ``image_ids`` and ``features`` (M, H, W, C) in the open file ``f``; return ``features``.

    Features are chunked one image per chunk; ``allocate`` lays all chunks out in row order now.
    """
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


def write_grid_attrs(f, spec: BackboneSpec, layer: str, skipped: Mapping[int, str], source: str) -> None:
    """Set the attributes ``backbone``, ``layer``, ``skipped`` and (when given) ``source`` of the open file ``f``."""
    f.attrs["backbone"] = spec.to_json()
    f.attrs["layer"] = str(layer)
    f.attrs["skipped"] = json.dumps({str(k): str(v) for k, v in skipped.items()})
    if source:
        f.attrs["source"] = str(source)


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
