"""The region-feature file of a preprocessed split: ``OUT/<split>/region_features.h5``.

Bottom-up-attention features: a variable number of detected boxes per image, each with a
D-d feature. Datasets (keys from ``vqa.names``): ``image_ids`` int64 (N,); ``offsets`` int64
(N + 1,), image i's boxes being rows offsets[i]:offsets[i + 1]; ``features`` float16|float32
(total_boxes, D), 64 boxes per chunk; ``boxes`` float32 (total_boxes, 4) x1, y1, x2, y2 in
pixels; ``image_sizes`` float32 (N, 2) width, height. Attributes ``format_version`` (1),
``source`` (the imported path), ``layout`` (one of ``vqa.region_import.LAYOUTS``) and
``skipped`` (JSON: image id -> why it has no row). Every image has at least one box.

Full COCO train is about 12 GB at float16, so nothing here holds the file whole:
``RegionWriter`` appends in blocks, ``RegionReader`` reads a batch's boxes in sorted order and
mean-pools block by block. ``vqa.region_import`` fills it from the layouts other projects ship.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from vqa.errors import VQAError, brief
from vqa.feature_values import FLOAT16_MAX
from vqa.features import check_dtype, finished_file
from vqa.grid_features import read_sorted_rows
from vqa.names import H5_BOXES, H5_FEATURES, H5_IMAGE_IDS, H5_IMAGE_SIZES, H5_OFFSETS
from vqa.storage import atomic_path, open_h5

FILENAME = "region_features.h5"
FORMAT_VERSION = 1
_CHUNK_BOXES = 64  # 64 x 2048 float16 = 256 KB: an image of 36 boxes is one or two chunk reads
_FLUSH_BOXES = 4096  # boxes buffered before a write (16 MB of 2048-d float16)
# What h5py and HDF5 raise for a missing dataset or attribute, a damaged file or bad JSON in it.
_READ_ERRORS = (OSError, KeyError, ValueError, RecursionError, TypeError, AttributeError, IndexError, VQAError)


def region_path(split_dir: str | os.PathLike) -> Path:
    """Where a preprocessed split folder keeps its region features."""
    return Path(split_dir) / FILENAME


@dataclass(frozen=True)
class RegionInfo:
    """A region file's description, without its features.

    Attributes:
        path: the region file.
        image_ids: int64 (N,), the images in row order.
        feature_dim: D, the size of one box's feature.
        max_boxes, total_boxes: the largest box count of an image (0 when empty), and all boxes.
        dtype: the stored feature dtype, "float16" or "float32".
        skipped: image id -> reason, for images without a row.
        source, layout: the path they were imported from, and its layout ("tsv", "npz", ...).
    """

    path: Path
    image_ids: np.ndarray
    feature_dim: int
    max_boxes: int
    total_boxes: int
    dtype: str
    skipped: dict[int, str]
    source: str = ""
    layout: str = ""


@dataclass(frozen=True)
class RegionBatch:
    """The regions of a batch of images, padded to the batch's largest box count Kb (at least 1).

    Attributes:
        features: (B, Kb, D) in the stored dtype; zeros where masked.
        boxes: float32 (B, Kb, 4) x1, y1, x2, y2 in pixels; zeros where masked.
        sizes: float32 (B, 2) width, height; zeros for an image without regions.
        mask: bool (B, Kb), True where a real box is.
    """

    features: np.ndarray
    boxes: np.ndarray
    sizes: np.ndarray
    mask: np.ndarray


def check_row(features: np.ndarray, boxes: np.ndarray, width: float, height: float,
              feature_dim: int | None, dtype: str = "float16") -> str | None:
    """Why one image's regions cannot be stored, or None when they can.

    Args:
        features: (K, D) box features.
        boxes: (K, 4) x1, y1, x2, y2 in pixels; a box may stick out of the image by the larger
            of 2 px and 1% of the side (detectors round), not more.
        width, height: the image's size in pixels.
        feature_dim: the D every row must have; None accepts any.
        dtype: the stored dtype; float16 refuses values beyond its range rather than store inf.
    """
    features, boxes = np.asarray(features), np.asarray(boxes)
    if features.ndim != 2 or boxes.shape != (len(features), 4):
        return f"features of shape {features.shape} and boxes of shape {boxes.shape}, not (K, D) and (K, 4)"
    if len(boxes) == 0:
        return "0 boxes"
    dim = features.shape[1]
    if dim == 0 or feature_dim is not None and dim != feature_dim:
        return f"features of size {dim}" + ("" if feature_dim is None else f", not {feature_dim} like the others")
    if not np.isfinite(features).all():
        return "NaN or inf in its features"
    if not np.isfinite(boxes).all():
        return "NaN or inf in its boxes"
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        return f"image size {width} x {height} is not positive"
    largest = float(np.abs(features).max())
    if dtype == "float16" and largest > FLOAT16_MAX:  # float16 would store inf
        return (f"feature value {largest:g} is beyond float16's range ({FLOAT16_MAX:g}); "
                "import with --feature-dtype float32")
    x1, y1, x2, y2 = boxes.T
    slack_x, slack_y = max(2.0, 0.01 * width), max(2.0, 0.01 * height)
    inverted = (x2 < x1) | (y2 < y1)
    outside = (x1 < -slack_x) | (y1 < -slack_y) | (x2 > width + slack_x) | (y2 > height + slack_y)
    for index in np.flatnonzero(inverted | outside)[:1]:
        box = f"box {index} ({', '.join(f'{v:g}' for v in boxes[index])})"
        if inverted[index]:
            return f"{box} is inverted (x2 < x1 or y2 < y1)"
        return f"{box} lies outside the {width:g} x {height:g} image"
    return None


class RegionWriter:
    """Writes a region file row by row, atomically: the file appears under its name only on success.

    Use as a context manager. ``add`` buffers up to ``_FLUSH_BOXES`` boxes, then appends them to
    resizable datasets, so a 25-GB import needs some 20 MB of memory, plus about 200 bytes an
    image for the ids, offsets and sizes written at the end.

    Args:
        path: the region file (``region_path``).
        feature_dim: D; None takes the size of the first good row (a TSV says it only there).
        dtype: the stored feature dtype, "float16" or "float32".
        source, layout: recorded as the file's attributes.

    Attributes:
        image_ids: the images written so far, in row order.
        skipped: image id -> reason, for images refused or skipped.
    """

    def __init__(self, path: str | os.PathLike, feature_dim: int | None, dtype: str = "float16",
                 source: str = "", layout: str = ""):
        self.path = Path(path)
        self.feature_dim = None if feature_dim is None else int(feature_dim)
        self.dtype = check_dtype(dtype)
        self.source, self.layout = str(source), str(layout)
        self.image_ids: list[int] = []
        self.skipped: dict[int, str] = {}
        self._offsets, self._sizes = [0], []
        self._written: set[int] = set()
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._stored = 0  # boxes already in the file
        self._stack: contextlib.ExitStack | None = None
        self._file = self._features = self._boxes = None

    def __enter__(self) -> "RegionWriter":
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(open_h5(tmp, "w"))
        return self

    def __exit__(self, *exc_info) -> bool:
        stack, self._stack = self._stack, None
        if exc_info[0] is None:
            try:
                self._finish()
            except BaseException as error:  # the temporary file goes, and the error comes out
                stack.__exit__(type(error), error, error.__traceback__)
                raise
        return bool(stack.__exit__(*exc_info))

    def add(self, image_id: int, features: np.ndarray, boxes: np.ndarray, width: float, height: float) -> str | None:
        """Append one image's regions; return why they were refused instead (writing nothing).

        Args:
            image_id: the image; a repeat of a written image is refused (the first is kept).
            features: (K, D) box features.
            boxes: (K, 4) x1, y1, x2, y2 in pixels.
            width, height: the image's size in pixels.
        """
        if self._stack is None:
            raise RuntimeError("use RegionWriter as a context manager: with RegionWriter(...) as writer")
        image_id = int(image_id)
        if image_id in self._written:
            return f"image {image_id} appears again (its first regions are kept)"
        reason = check_row(features, boxes, width, height, self.feature_dim, self.dtype)
        if reason is not None:
            self.skip(image_id, reason)
            return reason
        features, boxes = np.asarray(features), np.asarray(boxes)
        self.feature_dim = features.shape[1]
        self._buffer.append((features.astype(self.dtype), boxes.astype(np.float32)))
        self._offsets.append(self._offsets[-1] + len(features))
        self._sizes.append((float(width), float(height)))
        self.image_ids.append(image_id)
        self._written.add(image_id)
        self.skipped.pop(image_id, None)  # a good row after a bad one of the same image wins
        if self._offsets[-1] - self._stored >= _FLUSH_BOXES:
            self._flush()
        return None

    def skip(self, image_id: int, reason: str) -> None:
        """Record that ``image_id`` has no regions, and why; ignored when it has some already."""
        if int(image_id) not in self._written:
            self.skipped.setdefault(int(image_id), str(reason))

    def _flush(self) -> None:
        if self._features is None:
            dim = self.feature_dim or 0
            # Chunked, resizable datasets; a file of unknown D (nothing written) stays plainly empty.
            chunks = {"chunks": (_CHUNK_BOXES, dim), "maxshape": (None, dim)} if dim else {}
            self._features = self._file.create_dataset(H5_FEATURES, shape=(0, dim), dtype=self.dtype, **chunks)
            self._boxes = self._file.create_dataset(H5_BOXES, shape=(0, 4), dtype=np.float32, chunks=(1024, 4),
                                                    maxshape=(None, 4))
        if self._buffer:
            features = np.concatenate([f for f, _ in self._buffer])
            boxes = np.concatenate([b for _, b in self._buffer])
            start, self._stored = self._stored, self._stored + len(features)
            self._features.resize(self._stored, axis=0)
            self._boxes.resize(self._stored, axis=0)
            self._features[start:] = features
            self._boxes[start:] = boxes
            self._buffer = []

    def _finish(self) -> None:
        self._flush()
        f = self._file
        f.create_dataset(H5_IMAGE_IDS, data=np.asarray(self.image_ids, dtype=np.int64))
        f.create_dataset(H5_OFFSETS, data=np.asarray(self._offsets, dtype=np.int64))
        f.create_dataset(H5_IMAGE_SIZES, data=np.asarray(self._sizes, dtype=np.float32).reshape(-1, 2))
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["source"] = self.source
        f.attrs["layout"] = self.layout
        f.attrs["skipped"] = json.dumps({str(k): str(v) for k, v in self.skipped.items()})


def read_region_info(path: str | os.PathLike) -> RegionInfo:
    """A region file's ids, sizes and attributes; reads no features.

    Raises:
        VQAError: the file is missing, truncated or not a region file.
    """
    import h5py

    path = _existing(path)
    try:
        with h5py.File(path, "r") as f:
            return _info(path, f)[0]
    except _READ_ERRORS as error:
        raise _unreadable(path, error) from None


class RegionReader:
    """An open, read-only region file: reads batches of images' regions and mean-pools them.

    Use as a context manager, or call ``close()``. Reads hold the reader's lock (h5py handles
    are not safe to share across threads otherwise), so one reader may serve a background
    prefetch thread and the training loop at once.

    Attributes:
        info: the file's ``RegionInfo``.
        image_ids: int64 (N,), the rows' image ids.
        feature_dim, max_boxes: as in ``info``.
        dtype: the stored feature dtype.
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = _existing(path)
        try:
            self._file = h5py.File(self.path, "r")
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error) from None
        try:
            self.info, self._offsets, self._sizes = _info(self.path, self._file)
            self._features, self._boxes = self._file[H5_FEATURES], self._file[H5_BOXES]
        except _READ_ERRORS as error:
            self._file.close()
            raise _unreadable(self.path, error) from None
        self.image_ids = self.info.image_ids
        self.feature_dim, self.max_boxes = self.info.feature_dim, self.info.max_boxes
        self.dtype = self._features.dtype
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __enter__(self) -> "RegionReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (again is harmless)."""
        self._file.close()

    def read(self, rows: Iterable[int] | np.ndarray) -> RegionBatch:
        """The regions of ``rows``, in the asked order, padded to the batch's largest box count.

        Each distinct image's boxes are read once, in increasing order (consecutive images as one
        slice); a row may repeat, and row -1 (an image without regions) is all masked.

        Raises:
            IndexError: a row is below -1 or not in the file.
            VQAError: the file cannot be read (truncated, damaged disk).
        """
        rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -1 or rows.max() >= len(self.image_ids)):
            raise IndexError(f"rows {rows.min()}..{rows.max()} asked of {self.path}, which has "
                             f"{len(self.image_ids)} rows (-1 means no image)")
        present = rows >= 0
        unique, inverse = np.unique(rows[present], return_inverse=True)
        counts = self._offsets[unique + 1] - self._offsets[unique]
        width = max(1, int(counts.max(initial=0)))
        # One padded entry per distinct image, plus an all-padding one (last) for row -1.
        features = np.zeros((len(unique) + 1, width, self.feature_dim), dtype=self.dtype)
        boxes = np.zeros((len(unique) + 1, width, 4), dtype=np.float32)
        if len(unique):
            box_rows = np.concatenate([np.arange(self._offsets[r], self._offsets[r + 1]) for r in unique])
            image_of_box = np.repeat(np.arange(len(unique)), counts)
            slot_of_box = np.arange(len(box_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
            try:
                with self._lock:
                    features[image_of_box, slot_of_box] = read_sorted_rows(self._features, box_rows)
                    boxes[image_of_box, slot_of_box] = read_sorted_rows(self._boxes, box_rows)
            except _READ_ERRORS as error:
                raise _unreadable(self.path, error) from None
        pick = np.full(len(rows), len(unique))
        pick[present] = inverse.reshape(-1)
        sizes = np.concatenate([self._sizes[unique], np.zeros((1, 2), np.float32)])
        mask = np.arange(width) < np.append(counts, 0)[pick][:, None]
        return RegionBatch(features=features[pick], boxes=boxes[pick], sizes=sizes[pick], mask=mask)

    def mean_pooled(self, block: int = 256) -> np.ndarray:
        """float32 (N, D): each image's mean over its boxes, read ``block`` images at a time.

        Lets the global models train on a region file, so every model compares on one file.
        """
        if block < 1:
            raise ValueError(f"block must be positive, got {block}")
        pooled = np.zeros((len(self.image_ids), self.feature_dim), dtype=np.float32)
        offsets = self._offsets
        try:
            for start in range(0, len(pooled), block):
                stop = min(start + block, len(pooled))
                with self._lock:
                    features = self._features[offsets[start]:offsets[stop]]
                sums = np.add.reduceat(features, offsets[start:stop] - offsets[start], axis=0, dtype=np.float32)
                pooled[start:stop] = sums / np.diff(offsets[start:stop + 1])[:, None]
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error) from None
        return pooled


def geometry(boxes: np.ndarray, sizes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 (B, K, 5): each box's x1/w, y1/h, x2/w, y2/h and area/(w*h), clipped to [0, 1], zeros where masked.

    Args:
        boxes: (B, K, 4) x1, y1, x2, y2 in pixels.
        sizes: (B, 2) image width, height in pixels.
        mask: bool (B, K), True where a real box is.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    sizes = np.asarray(sizes, dtype=np.float32)
    # An image without regions has size 0: divide by 1 there (its boxes are masked anyway).
    width, height = (np.where(sizes[:, i] > 0, sizes[:, i], 1)[:, None] for i in (0, 1))
    corners = np.clip(boxes / np.stack([width, height, width, height], axis=-1), 0, 1)
    # The area of the part inside the image, so a box sticking out by the writer's slack stays <= 1.
    area = np.clip((corners[..., 2] - corners[..., 0]) * (corners[..., 3] - corners[..., 1]), 0, 1)
    out = np.concatenate([corners, area[..., None]], axis=-1)
    return np.where(np.asarray(mask, dtype=bool)[..., None], out, 0).astype(np.float32)


def cell_boxes(height: int, width: int, image_w: float = 1.0, image_h: float = 1.0) -> np.ndarray:
    """float32 (H * W, 4): the x1, y1, x2, y2 of a H x W grid's cells over an image_w x image_h image, row-major.

    Lets a grid be read as H * W regions (cell (i, j) is box i * W + j).
    """
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    cell_w, cell_h = image_w / width, image_h / height
    boxes = np.stack([columns * cell_w, rows * cell_h, (columns + 1) * cell_w, (rows + 1) * cell_h], axis=-1)
    return boxes.reshape(-1, 4).astype(np.float32)


def _info(path: Path, f) -> tuple[RegionInfo, np.ndarray, np.ndarray]:
    """(info, offsets int64 (N + 1,), image sizes float32 (N, 2)), checked against each other."""
    if int(f.attrs["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"format version {f.attrs['format_version']}, not {FORMAT_VERSION}")
    features, boxes = f[H5_FEATURES], f[H5_BOXES]
    image_ids, offsets = f[H5_IMAGE_IDS][...].astype(np.int64), f[H5_OFFSETS][...].astype(np.int64)
    sizes = f[H5_IMAGE_SIZES][...].astype(np.float32)
    total = len(features)
    if (features.ndim != 2 or boxes.shape != (total, 4) or image_ids.ndim != 1 or sizes.shape != (len(image_ids), 2)
            or offsets.shape != (len(image_ids) + 1,) or offsets[0] != 0 or offsets[-1] != total
            or (np.diff(offsets) < 1).any()):
        raise ValueError(f"{len(image_ids)} ids, {offsets.shape} offsets, {sizes.shape} sizes for features of "
                         f"shape {features.shape} and boxes of shape {boxes.shape}")
    dtype = check_dtype(features.dtype)
    skipped = {int(k): str(v) for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}
    max_boxes = int(np.diff(offsets).max(initial=0))
    info = RegionInfo(path=path, image_ids=image_ids, feature_dim=int(features.shape[1]), max_boxes=max_boxes,
                      total_boxes=total, dtype=dtype, skipped=skipped, source=str(f.attrs.get("source", "")),
                      layout=str(f.attrs.get("layout", "")))
    return info, offsets, sizes


def _unreadable(path: Path, error: BaseException) -> VQAError:
    return VQAError(f"region features {path} are not a readable region file ({brief(error)}); "
                    "delete it and import them again.")


def _existing(path: str | os.PathLike) -> Path:
    """``path``, checked to be an existing file."""
    return finished_file(path, "region features", "import them again to finish them", "import them first")

