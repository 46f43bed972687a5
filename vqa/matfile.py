"""Reading neuraltalk-style precomputed image features: a ``vgg_feats.mat`` and its id map.

The .mat file holds MATLAB variable ``feats``, float32 (D, N), one column per image
(MATLAB v5 files are read with scipy, v7.3 files, which are HDF5, with h5py); the id
map has one line ``"<coco image id> <column>"`` per image (0-based columns).
``import_mat_features`` turns them into a feature file; ``check_mat_features`` checks both files
without reading a column (what ``vqa preprocess`` does before any other work).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from vqa.backbone import VGG16_IMAGE_SIZE, BackboneSpec
from vqa.bounded_read import read_text_capped
from vqa.errors import VQAError
from vqa.feature_values import check_float16_range, nonfinite_rows
from vqa.features import ExtractionResult, check_dtype, write_rows
from vqa.id_maps import MAX_BYTES as ID_MAP_MAX_BYTES


def read_id_map(path: Path) -> dict[int, tuple[int, int]]:
    """image id -> (column, line number) from ``"<coco image id> <column>"`` lines."""
    try:
        lines = read_text_capped(path, ID_MAP_MAX_BYTES, "id map").splitlines()
    except FileNotFoundError:
        raise VQAError(f"id map {path} does not exist; pass the coco_vgg_IDMap.txt that came with the .mat file.") from None
    except UnicodeDecodeError:
        raise VQAError(f"id map {path} is not a text file of '<coco image id> <column>' lines.") from None
    columns: dict[int, tuple[int, int]] = {}
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            image_id, column = int(fields[0]), int(fields[1])
            if column < 0:
                raise ValueError
        except ValueError:
            raise VQAError(f"id map {path} line {line_number} is {line!r}, not '<coco image id> <column>'; "
                           "fix or replace the file.") from None
        if image_id in columns:
            raise VQAError(f"id map {path} line {line_number} maps image {image_id} again "
                           f"(first on line {columns[image_id][1]}); fix or replace the file.")
        columns[image_id] = (column, line_number)
    return columns


_NUMERIC_CLASSES = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}


def mat_shape(path: Path) -> tuple[int, int]:
    """(N, D) of the 'feats' (D x N) of a MATLAB v5 or v7.3 file, read from its header: 2-D and numeric."""
    import h5py
    import scipy.io

    if not path.is_file():
        raise VQAError(f"feature file {path} does not exist; pass the vgg_feats.mat to import.")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            feats = f.get("feats")
            if not isinstance(feats, h5py.Dataset):
                raise VQAError(f"{path} has no variable 'feats' (it has {sorted(f.keys())}); "
                               "pass a neuraltalk-style vgg_feats.mat.")
            if feats.ndim != 2:
                raise VQAError(f"'feats' in {path} has shape {feats.shape}; expected a 2-D (D x N) matrix.")
            return tuple(int(n) for n in feats.shape)  # MATLAB's column-major D x N reads as N x D in HDF5
    try:
        variables = {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(path)}
    except Exception:  # scipy raises ValueError, TypeError, IndexError, MatReadError, ... for bad files
        raise VQAError(f"{path} is not a MATLAB file, or one cut off or damaged in its header; pass a "
                       "neuraltalk-style vgg_feats.mat, copied or downloaded again.") from None
    if "feats" not in variables:
        raise VQAError(f"{path} has no variable 'feats' (it has {sorted(variables)}); "
                       "pass a neuraltalk-style vgg_feats.mat.")
    shape, kind = variables["feats"]
    if len(shape) != 2 or kind not in _NUMERIC_CLASSES:
        raise VQAError(f"'feats' in {path} has shape {shape} ({kind}); expected a 2-D numeric (D x N) matrix.")
    return int(shape[1]), int(shape[0])


def check_mat_features(mat_path: str | os.PathLike, id_map_path: str | os.PathLike) -> None:
    """Check a .mat file and its id map as ``import_mat_features`` does, without reading a column.

    Raises:
        VQAError: a missing or unreadable file, no 2-D numeric ``feats``, a bad id-map line, or a
            column beyond the file's.
    """
    mat_path, id_map_path = Path(mat_path), Path(id_map_path)
    _check_columns(read_id_map(id_map_path), mat_shape(mat_path)[0], id_map_path, mat_path)


def _check_columns(columns: dict[int, tuple[int, int]], num_images: int, id_map_path: Path, mat_path: Path) -> None:
    for image_id, (column, line_number) in columns.items():
        if column >= num_images:
            raise VQAError(f"id map {id_map_path} line {line_number} points image {image_id} at column {column}, "
                           f"but {mat_path} has only {num_images} columns; use the id map made with that file.")


@contextlib.contextmanager
def open_mat_feats(path: Path) -> Iterator[tuple[int, int, Callable[[list[int]], np.ndarray]]]:
    """Yield (N, D, take) for the 'feats' (D x N) of a MATLAB v5 or v7.3 file.

    ``take(columns)`` returns float32 (len(columns), D): the features of those columns.
    A v7.3 file stays open (rows are read on demand), so the 2 GB COCO file need
    not fit in memory twice.
    """
    import h5py
    import scipy.io

    mat_shape(path)  # what is wrong with the file's header is said before anything is loaded
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            feats = f["feats"]
            num_images, feature_dim = feats.shape  # MATLAB's column-major D x N reads as N x D in HDF5

            def take(columns: list[int]) -> np.ndarray:
                if not columns:
                    return np.zeros((0, feature_dim), dtype=np.float32)
                unique, inverse = np.unique(columns, return_inverse=True)
                return np.asarray(feats[unique.tolist()], dtype=np.float32)[inverse]

            yield num_images, feature_dim, take
        return
    try:
        contents = scipy.io.loadmat(path, variable_names=["feats"])
    except Exception:  # scipy raises ValueError, TypeError, IndexError, MatReadError, ... for bad files
        raise VQAError(f"{path} names its variables but their values could not be read: it is cut off or damaged; "
                       "copy or download it again.") from None
    feats = contents.get("feats")
    if feats is None:
        names = sorted(name for name, _, _ in scipy.io.whosmat(path))
        raise VQAError(f"{path} has no variable 'feats' (it has {names}); pass a neuraltalk-style vgg_feats.mat.")
    if not isinstance(feats, np.ndarray) or feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
        raise VQAError(f"'feats' in {path} has shape {getattr(feats, 'shape', None)}; "
                       "expected a 2-D numeric (D x N) matrix.")
    feature_dim, num_images = feats.shape
    yield num_images, feature_dim, lambda columns: feats[:, columns].T.astype(np.float32)


def import_mat_features(mat_path: str | os.PathLike, id_map_path: str | os.PathLike, image_ids: Iterable[int],
                        out_path: str | os.PathLike, dtype: str = "float16",
                        backbone: BackboneSpec | None = None) -> ExtractionResult:
    """Import neuraltalk-style precomputed features into a feature file (``vqa.features``).

    Args:
        mat_path: the .mat file.
        id_map_path: the id map text file.
        image_ids: ids to import, in the order of the output rows.
        out_path: the feature file to write (atomically).
        dtype: "float16" or "float32".
        backbone: the spec to record; defaults to VGG-16 ImageNet fc7 of width D,
            the closest backbone predict can run on new images.

    Returns:
        The ``ExtractionResult``; ids missing from the map, and ids whose features hold NaN or inf,
        are in ``skipped``.

    Raises:
        VQAError: missing ``feats``, a wrong shape, a bad id-map line, or values beyond float16's
            range while ``dtype`` is float16.
    """
    dtype = check_dtype(dtype)
    mat_path, id_map_path = Path(mat_path), Path(id_map_path)
    columns = read_id_map(id_map_path)
    image_ids = np.array([int(i) for i in image_ids], dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to import_mat_features must be unique")

    with open_mat_feats(mat_path) as (num_images, feature_dim, column_of_row):
        _check_columns(columns, num_images, id_map_path, mat_path)
        keep = np.array([int(i) in columns for i in image_ids], dtype=bool)
        skipped = {int(i): f"not in id map {id_map_path.name}" for i in image_ids if int(i) not in columns}
        wanted = [columns[int(i)][0] for i in image_ids if int(i) in columns]
        values = column_of_row(wanted)  # float32, so nothing is lost before the checks
    nonfinite = nonfinite_rows(values)
    for position in np.flatnonzero(keep)[nonfinite]:
        skipped[int(image_ids[position])] = f"NaN or inf in its features in {mat_path.name}"
    keep[np.flatnonzero(keep)[nonfinite]] = False
    values = values[~nonfinite]
    check_float16_range(values, dtype, f"image features {mat_path}")
    rows = np.zeros((len(image_ids), feature_dim), dtype=dtype)
    rows[keep] = values
    spec = backbone or BackboneSpec(kind="vgg16", weights="imagenet", image_size=VGG16_IMAGE_SIZE,
                                    feature_dim=feature_dim)
    if spec.feature_dim != feature_dim:
        raise VQAError(f"{mat_path} holds {feature_dim}-d features but the backbone spec says {spec.feature_dim}; "
                       "pass a matching backbone.")
    out_path = Path(out_path)
    kept = write_rows(out_path, image_ids, keep, rows, spec.to_json(), dtype, skipped,
                               extra_attrs={"source": str(mat_path.resolve())})
    return ExtractionResult(out_path, kept, skipped, computed=len(kept))
