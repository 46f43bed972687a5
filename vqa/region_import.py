"""Importing bottom-up-attention region features (``vqa preprocess --regions PATH``) into a region file.

Four layouts are in use (``../shared/VQA_FACTS.md``), told apart by ``detect_layout``:

    tsv            peteanderson80/bottom-up-attention: ``image_id, image_w, image_h, num_boxes, boxes,
                   features`` per line, base64 float32; one file, a folder of ``*.tsv*`` parts or a glob
    hdf5           hengyuan-hu/bottom-up-attention-vqa: ``image_features`` (N, K, D), ``image_bb`` (N, K, 4),
                   ``spatial_features`` (N, K, 6), rows found through an id map (``vqa.id_maps``)
    hdf5-adaptive  jnhwkim/ban-vqa: flat ``image_features`` (total, D), ``image_bb``, ``spatial_features``,
                   ``pos_boxes`` (N, 2) [start, end) per image, same id map
    npz            MCAN / OpenVQA: one ``<COCO image file name>.npz`` per image, ``x`` (D, K), ``bbox`` (K, 4)

Sources are 10-25 GB, so each is streamed into a ``vqa.regions.RegionWriter``: TSV line by line
(``vqa.region_tsv``), HDF5 in blocks of rows read in increasing order, npz one file at a time.
Rows are written in the order the source holds them; readers find an image's row through the
file's ``image_ids``.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from vqa import layout as layout_lib
from vqa.errors import VQAError, brief
from vqa.features import ExtractionResult, check_dtype
from vqa.grid_features import read_sorted_rows
from vqa.id_maps import read_id_map
from vqa.progress import progress
from vqa.region_tsv import TSV_PART, is_glob, tsv_ids, tsv_rows
from vqa.regions import RegionWriter

logger = logging.getLogger(__name__)

LAYOUTS = ("tsv", "hdf5", "hdf5-adaptive", "npz")
ID_MAP_SUFFIXES = (".pkl", ".pickle", ".json", ".txt")
_BLOCK_BOXES = 4096  # boxes per HDF5 read (32 MB of 2048-d float32)
# One image's regions as they come out of a source: (features (K, D), boxes (K, 4), width, height),
# or the reason it is unusable.
Row = tuple[np.ndarray, np.ndarray, float, float] | str


def detect_layout(path: str | os.PathLike) -> str:
    """Which of ``LAYOUTS`` ``path`` is in, from its files (no suffix is trusted for HDF5).

    Raises:
        VQAError: ``path`` is missing or none of the four, naming them.
    """
    import h5py

    path = Path(path)
    if is_glob(path) or (path.is_file() and TSV_PART.fullmatch(path.name)):
        return "tsv"
    if path.is_dir():
        names = [child.name for child in path.iterdir()]
        if any(TSV_PART.fullmatch(name) for name in names):
            return "tsv"
        if any(name.endswith(".npz") for name in names):
            return "npz"
    elif path.is_file() and h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                if isinstance(f.get("pos_boxes"), h5py.Dataset):
                    return "hdf5-adaptive"
                if isinstance(f.get("image_features"), h5py.Dataset) and f["image_features"].ndim == 3:
                    return "hdf5"
        except OSError as error:
            raise VQAError(f"region features {path} are not a readable HDF5 file ({brief(error)}).") from None
    what = "does not exist" if not (path.exists() or is_glob(path)) else "is in none of the known layouts"
    raise VQAError(f"region features {path} {what}; pass a .tsv file, folder of .tsv parts or glob (tsv), an HDF5 "
                   "file with image_features (N, K, D) (hdf5) or with pos_boxes (hdf5-adaptive), or a folder of "
                   ".npz files (npz).")


def import_regions(path: str | os.PathLike, image_ids: Iterable[int], out_path: str | os.PathLike, split: str,
                   id_map: str | os.PathLike | None = None, dtype: str = "float16",
                   log: Callable[[str], None] | None = None, allow_empty: bool = False,
                   show_progress: bool = True) -> ExtractionResult:
    """Import the regions of ``image_ids`` from ``path`` (any of ``LAYOUTS``) into a region file.

    Args:
        path: the source: a TSV file, folder of parts or glob; an HDF5 file; a folder of .npz files.
        image_ids: the split's question images; only these are written, each at most once.
        out_path: the region file to write (atomically), ``vqa.regions.region_path(split_dir)``.
        split: e.g. "train2014": picks the id map beside an HDF5 file and the npz file names.
        id_map: the HDF5 layouts' image-id -> row map; by default the ``*imgid2idx*`` file beside it.
        dtype: "float16" or "float32".
        log: called with one line of counts at the end (default: this module's logger).
        allow_empty: write the file even when none of the images has usable regions (the caller
            then says why, from the result's ``skipped``).
        show_progress: draw a progress bar on stderr.

    Returns:
        The ``ExtractionResult``: ids written, in row order, and id -> reason for the others
        ("not in <source>", or why the row is unusable).

    Raises:
        VQAError: the source is unreadable or in no known layout, the id map is missing or does not
            fit, or not one of the images has usable regions.
    """
    dtype = check_dtype(dtype)
    path, out_path = Path(path), Path(out_path)
    wanted = [int(i) for i in image_ids]
    if len(set(wanted)) != len(wanted):
        raise ValueError("image ids passed to import_regions must be unique")
    layout = detect_layout(path)
    source = str(path.parent.resolve() / path.name if is_glob(path) else path.resolve())
    if id_map is not None and layout in ("tsv", "npz"):
        logger.warning("--id-map %s is not used: %s files name their images themselves", id_map, layout)
    with progress(total=len(wanted), desc=f"import regions ({layout})", unit="img",
                  disable=None if show_progress else True) as bar:
        with RegionWriter(out_path, None, dtype, source=source, layout=layout) as writer:
            if layout == "tsv":
                rows = tsv_rows(path, set(wanted))
            elif layout == "npz":
                rows = _npz_rows(path, wanted, split)
            else:
                rows = _hdf5_rows(path, layout, set(wanted), _id_map(path, split, id_map))
            for image_id, row in rows:
                if isinstance(row, str):
                    writer.skip(image_id, row)
                else:
                    writer.add(image_id, *row)
                bar.update(1)
            for image_id in wanted:
                writer.skip(image_id, f"not in {path.name}")
            bar.update(len(wanted) - bar.n)
            skipped = {i: writer.skipped[i] for i in wanted if i in writer.skipped}
            if wanted and not writer.image_ids and not allow_empty:
                first = "; ".join(f"image {i}: {reason}" for i, reason in list(skipped.items())[:3])
                raise VQAError(f"none of the {len(wanted)} images of {split} has usable regions in {path} "
                               f"(first reasons: {first}); is it the right file for {split}?")
    (log or logger.info)(f"{split}: regions of {len(writer.image_ids)} images imported from {path} ({layout}), "
                         f"{len(skipped)} skipped")
    return ExtractionResult(out_path, np.array(writer.image_ids, dtype=np.int64), skipped,
                            computed=len(writer.image_ids))


def check_source(path: str | os.PathLike, splits: Iterable[str], id_map: str | os.PathLike | None = None) -> str:
    """The layout of ``path``, checked as far as reading no features allows; what ``vqa preprocess`` runs first.

    Every layout is detected; an HDF5 file's datasets must fit together and each split must find
    its id map (``import_regions`` reads them the same way).

    Raises:
        VQAError: as ``import_regions`` for a missing or unknown source, datasets that do not fit,
            or a missing or unreadable id map.
    """
    import h5py

    path = Path(path)
    layout = detect_layout(path)
    if layout.startswith("hdf5"):
        try:
            with h5py.File(path, "r") as f:
                features, spans = f["image_features"], f["pos_boxes"][...] if layout == "hdf5-adaptive" else None
                if spans is None:
                    spans = np.stack([np.arange(len(features)) * features.shape[1],
                                      np.arange(1, len(features) + 1) * features.shape[1]], axis=1)
                _check_datasets(path, layout, features, f["image_bb"], f.get("spatial_features"), spans)
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise VQAError(f"region features {path} could not be read as the {layout} layout ({brief(error)}); "
                           "it may be truncated or another layout.") from None
        for split in splits:
            _id_map(path, split, id_map)
    return layout


def source_image_ids(path: str | os.PathLike, split: str, id_map: str | os.PathLike | None = None,
                     limit: int | None = None) -> list[int]:
    """The distinct images ``path`` holds regions for, in source order; the first ``limit`` of them.

    Reads the ids alone: a TSV's first field, an npz folder's file names (those of ``split``), an
    HDF5 file's id map (as ``import_regions`` finds it). With ``limit``, stops reading there, so
    asking whether a file holds one image or several costs two lines.

    Raises:
        VQAError: as ``import_regions`` for a missing or unreadable source or id map.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == "tsv":
        found = tsv_ids(path)
    elif layout == "npz":
        folder = layout_lib.image_folder(split)
        named = (layout_lib.parse_image_filename(child.name) for child in sorted(path.iterdir())
                 if child.name.endswith(".npz"))
        found = (name[1] for name in named if name is not None and name[0] == folder)
    else:
        rows = _id_map(path, split, id_map)
        found = iter(sorted(rows, key=rows.get))
    ids: dict[int, None] = {}
    for image_id in found:
        ids[image_id] = None
        if limit is not None and len(ids) >= limit:
            break
    return list(ids)


# --- hdf5 and hdf5-adaptive -------------------------------------------------------------------------


def _id_map(h5_path: Path, split: str, id_map: str | os.PathLike | None) -> dict[int, int]:
    """The given id map, else ``{prefix}36_imgid2idx.pkl`` or the one ``{prefix}*imgid2idx*`` beside the file."""
    if id_map is not None:
        return read_id_map(id_map)
    prefix = re.match(r"[a-z]*", split.lower()).group()  # train2014 -> train, test-dev2015 -> test
    usual = h5_path.parent / f"{prefix}36_imgid2idx.pkl"
    found = [usual] if usual.is_file() else sorted(
        p for p in h5_path.parent.glob(f"{prefix}*imgid2idx*") if p.suffix.lower() in ID_MAP_SUFFIXES)
    if len(found) != 1:
        seen = f"found {', '.join(p.name for p in found)}" if found else f"found no {prefix}*imgid2idx* file"
        raise VQAError(f"region features {h5_path} need the map of image ids to rows and {seen} beside it; "
                       "pass it with --id-map.")
    return read_id_map(found[0])


def _hdf5_rows(path: Path, layout: str, wanted: set[int], id_map: dict[int, int]) -> Iterator[tuple[int, Row]]:
    """(image id, row) for the wanted images of the map, in increasing source order, a block of rows at a time."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            features, boxes = f["image_features"], f["image_bb"]
            spatial = f.get("spatial_features")
            if layout == "hdf5":
                count, per_image = features.shape[0], features.shape[1]
                spans = np.stack([np.arange(count) * per_image, np.arange(1, count + 1) * per_image], axis=1)
                # Flat (N * K, D) views by row: a fixed layout is an adaptive one with K boxes an image.
                read = _fixed_reader(per_image)
            else:
                spans = f["pos_boxes"][...].astype(np.int64)
                read = read_sorted_rows
            _check_datasets(path, layout, features, boxes, spatial, spans)
            for image_id, row in id_map.items():
                if image_id in wanted and not 0 <= row < len(spans):
                    raise VQAError(f"the id map of {path} points image {image_id} at row {row}, but the file has "
                                   f"{len(spans)} images; use the id map made with that file.")
            chosen = sorted((int(spans[row][0]), image_id, row) for image_id, row in id_map.items()
                            if image_id in wanted)
            yield from _span_blocks(chosen, spans, [features, boxes, spatial], read)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise VQAError(f"region features {path} could not be read as the {layout} layout ({brief(error)}); "
                       "it may be truncated or another layout.") from None


def _check_datasets(path: Path, layout: str, features, boxes, spatial, spans: np.ndarray) -> None:
    """One sentence when the datasets do not fit together (they would be read wrongly, not fail)."""
    boxes_shape = (*features.shape[:-1], 4)
    spatial_fits = spatial is None or spatial.shape == (*features.shape[:-1], 6)
    total = features.shape[0] * (features.shape[1] if layout == "hdf5" else 1)
    spans_fit = spans.ndim == 2 and spans.shape[1] == 2 and (
        not len(spans) or (spans[:, 0] >= 0).all() and (spans[:, 0] <= spans[:, 1]).all() and spans.max() <= total)
    if boxes.shape != boxes_shape or not spatial_fits or not spans_fit:
        raise VQAError(f"region features {path} hold image_features {features.shape}, image_bb {boxes.shape}, "
                       f"spatial_features {None if spatial is None else spatial.shape} and pos_boxes {spans.shape} "
                       f"that do not fit together as the {layout} layout; make or download the file again.")


def _fixed_reader(per_image: int):
    """``read(dataset, box rows)`` on an (N, K, ...) dataset, box row r being image r // K, box r % K."""
    def read(dataset, box_rows: np.ndarray) -> np.ndarray:
        images = np.unique(box_rows // per_image)
        block = read_sorted_rows(dataset, images).reshape(-1, *dataset.shape[2:])
        starts = np.searchsorted(images, box_rows // per_image) * per_image
        return block[starts + box_rows % per_image]
    return read


def _span_blocks(chosen, spans: np.ndarray, datasets, read) -> Iterator[tuple[int, Row]]:
    """Read the boxes of ``chosen`` (start, image id, row) images ``_BLOCK_BOXES`` at a time; yield each image's."""
    block: list[tuple[int, np.ndarray]] = []
    boxes_in_block = 0
    for index, (_, image_id, row) in enumerate(chosen):
        box_rows = np.arange(*spans[row])
        if not len(box_rows):
            yield image_id, "0 boxes"
        else:
            block.append((image_id, box_rows))
            boxes_in_block += len(box_rows)
        if not block or boxes_in_block < _BLOCK_BOXES and index + 1 < len(chosen):
            continue
        # Images may share boxes in a hand-made file: read each box row once, in increasing order.
        unique, inverse = np.unique(np.concatenate([rows for _, rows in block]), return_inverse=True)
        arrays = [None if d is None else read(d, unique)[inverse.reshape(-1)] for d in datasets]
        start = 0
        for image_id, box_rows in block:
            features, boxes, spatial = (None if a is None else a[start:start + len(box_rows)] for a in arrays)
            start += len(box_rows)
            yield image_id, (features, boxes, *_image_size(boxes, spatial))
        block, boxes_in_block = [], 0


def _image_size(boxes: np.ndarray, spatial: np.ndarray | None) -> tuple[float, float]:
    """The image's width and height, which these files do not store.

    From ``spatial_features`` (box width / image width in column 4, heights in 5) on the widest and
    tallest box; else the boxes' right and bottom edges. Sizes are whole pixels in every known
    source, so a recovered size within 0.1% of an integer is taken as that integer (float32 rounding).
    """
    sizes = []
    for side, column in ((boxes[:, 2] - boxes[:, 0], 4), (boxes[:, 3] - boxes[:, 1], 5)):
        widest = int(np.argmax(side)) if len(side) else 0
        if spatial is not None and len(side) and side[widest] > 0 and spatial[widest, column] > 0:
            size = float(side[widest]) / float(spatial[widest, column])
            sizes.append(float(round(size)) if abs(size - round(size)) <= 1e-3 * size else size)
        else:
            sizes.append(float(boxes[:, column - 2].max()) if len(boxes) else 0.0)
    return sizes[0], sizes[1]


# --- npz --------------------------------------------------------------------------------------------


def _npz_rows(folder: Path, wanted: list[int], split: str) -> Iterator[tuple[int, Row]]:
    """(image id, row) for each wanted image with an npz file, in ``wanted`` order, one file at a time."""
    names = {p.name for p in folder.iterdir()}
    for image_id in wanted:
        image_file = layout_lib.image_filename(split, image_id)  # the COCO image file name
        name = next((n for n in (image_file + ".npz", Path(image_file).stem + ".npz") if n in names), None)
        if name is not None:
            yield image_id, _npz_row(folder / name)


def _npz_row(path: Path) -> Row:
    """One MCAN npz file's regions, or why they are unusable (naming the file)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, boxes = np.asarray(data["x"]), np.asarray(data["bbox"], dtype=np.float32)
            count = int(_scalar(data, "num_bbox")) if "num_bbox" in data.files else len(boxes)
            width, height = _scalar(data, "image_w"), _scalar(data, "image_h")
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as error:
        return f"{path.name} could not be loaded ({brief(error, 80)})"
    if x.ndim != 2 or boxes.shape != (count, 4):
        return f"{path.name} has x of shape {x.shape} and bbox of shape {boxes.shape} for {count} boxes"
    if x.shape[1] == count:  # MCAN's (D, K); also when D == K, as MCAN writes it
        x = x.T
    elif x.shape[0] != count:
        return f"{path.name} has x of shape {x.shape}, which has no axis of its {count} boxes"
    return x, boxes, width, height


def _scalar(data, key: str) -> float:
    """A number stored as a 0-d or one-element array (MCAN writes both)."""
    return float(np.asarray(data[key]).reshape(-1)[0])
