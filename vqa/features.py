"""The image-feature file of a preprocessed split: ``OUT/<split>/image_features.h5``.

Layout: datasets ``image_ids`` int64 (M,), ``features`` float16|float32 (M, D);
attributes ``backbone`` (the JSON of the ``vqa.backbone.BackboneSpec`` that made
them) and ``skipped`` (JSON: image id -> why it has no row). One row per readable
image, in input order. Training reads those rows; predict rebuilds the same
backbone from the spec and runs the same ``vqa.images.load_image`` and
``Backbone.features`` on new images, so a question about a new photo sees exactly
the training-time preprocessing.

``vqa.extraction`` computes the rows resumably (through a partial file beside the
final one, ``partial_path``), whole or in shards (``shard_path``, one file per shard,
merged into the final file by ``vqa.shards``), with the grid file of ``vqa.grid_features``
from the same forward pass when asked; ``vqa.matfile`` imports features precomputed elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vqa.backbone import BackboneSpec
from vqa.errors import VQAError, brief
from vqa.storage import atomic_path, open_h5

logger = logging.getLogger(__name__)

FILENAME = "image_features.h5"
FEATURE_DTYPES = ("float16", "float32")
_COPY_ROWS = 4096


def features_path(split_dir: str | os.PathLike) -> Path:
    """Where a preprocessed split folder keeps its image features."""
    return Path(split_dir) / FILENAME


def partial_path(path: str | os.PathLike) -> Path:
    """The work file of an extraction still running (or killed) towards ``path``."""
    return Path(f"{path}.partial")


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """The file of shard ``index`` (0-based) of ``count`` of an extraction towards ``path``.

    A shard file has the layout of a feature file, for its share of the images, plus
    attribute ``shard`` (JSON: index, count, batch_size, images); it has its own partial file.
    """
    return Path(f"{path}.shard-{int(index)}-of-{int(count)}")


def shard_counts(path: str | os.PathLike) -> set[int]:
    """The COUNTs of the shard files (finished or partial) lying beside ``path``: empty when there are none."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.shard-(\d+)-of-(\d+)(\.partial)?")
    matches = (pattern.fullmatch(other.name) for other in path.parent.glob(f"{path.name}.shard-*"))
    return {int(match.group(2)) for match in matches if match}


@dataclass
class ExtractionResult:
    """What an extraction or an import wrote.

    Attributes:
        path: the feature file (or the grid file of ``vqa.grid_features``).
        image_ids: int64 (M,), its rows' image ids, in input order.
        skipped: image id -> reason, for images without a row.
        computed: rows computed (or imported) by this call.
        resumed: rows found done in a partial file and kept.
        reused: the complete file was already there and nothing was done.
    """

    path: Path
    image_ids: np.ndarray
    skipped: dict[int, str]
    computed: int = 0
    resumed: int = 0
    reused: bool = False


def check_dtype(dtype: str) -> str:
    """``dtype`` as "float16" or "float32", or one sentence saying those are the choices."""
    dtype = str(np.dtype(dtype))
    if dtype not in FEATURE_DTYPES:
        raise VQAError(f"feature dtype {dtype!r} is not supported; use float16 or float32.")
    return dtype


def existing_result(out_path: Path, image_ids: np.ndarray, spec_json: str, dtype: str,
                    extra_attrs: Mapping[str, str] | None = None) -> ExtractionResult | None:
    """The result for an existing complete file of the same images and backbone (and ``extra_attrs``), else None."""
    import h5py

    if not out_path.is_file():
        return None
    try:
        with h5py.File(out_path, "r") as f:
            stored_ids = f["image_ids"][...]
            same_backbone = json.loads(f.attrs["backbone"]) == json.loads(spec_json)
            same_dtype = f["features"].dtype == np.dtype(dtype)
            skipped = {int(k): v for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}
            same_extras = all(f.attrs.get(key) == value for key, value in (extra_attrs or {}).items())
    except (OSError, KeyError, ValueError, RecursionError):
        logger.warning("rewriting %s: it is not a complete feature file", out_path)
        return None
    expected = np.array([i for i in image_ids.tolist() if i not in skipped], dtype=np.int64)
    if (same_backbone and same_dtype and same_extras and set(skipped) <= set(image_ids.tolist())
            and np.array_equal(stored_ids, expected)):
        return ExtractionResult(out_path, stored_ids, skipped, reused=True)
    logger.warning("rewriting %s: it was made for other images, another backbone or another dtype", out_path)
    return None


def write_rows(out_path: Path, image_ids: np.ndarray, keep: np.ndarray, features, spec_json: str,
                        dtype: str, skipped: Mapping[int, str], extra_attrs: Mapping[str, str] | None = None,
                        ) -> np.ndarray:
    """Write the rows of ``features`` where ``keep`` is true, in input order, atomically; return their ids.

    ``features`` may be an open HDF5 dataset: it is copied in blocks, never read whole.
    """
    keep = np.asarray(keep, dtype=bool)
    kept = np.flatnonzero(keep)
    with atomic_path(out_path) as tmp:
        with open_h5(tmp, "w") as f:
            f.create_dataset("image_ids", data=image_ids[kept])
            out = f.create_dataset("features", shape=(len(kept), features.shape[1]), dtype=dtype)
            written = 0
            for start in range(0, len(keep), _COPY_ROWS):
                stop = min(start + _COPY_ROWS, len(keep))
                block_keep = keep[start:stop]
                if block_keep.any():
                    block = np.asarray(features[start:stop])[block_keep]
                    out[written:written + len(block)] = block
                    written += len(block)
            f.attrs["backbone"] = spec_json
            f.attrs["skipped"] = json.dumps({str(k): v for k, v in skipped.items()})
            for key, value in (extra_attrs or {}).items():
                f.attrs[key] = value
    return image_ids[kept]


def write_features(path: str | os.PathLike, image_ids: Sequence[int] | np.ndarray, features: np.ndarray,
                   spec: BackboneSpec, skipped: Mapping[int, str] | None = None) -> None:
    """Write a whole feature file at once, atomically, in the layout extraction writes.

    Args:
        path: the feature file.
        image_ids: int (M,), one per row.
        features: float16 or float32 (M, D); stored in that dtype.
        spec: the backbone that made them.
        skipped: image id -> reason, for images without a row.
    """
    features = np.asarray(features)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    dtype = check_dtype(features.dtype)
    if features.ndim != 2 or len(features) != len(image_ids):
        raise ValueError(f"{len(image_ids)} image ids for features of shape {features.shape}")
    write_rows(Path(path), image_ids, np.ones(len(image_ids), bool), features, spec.to_json(), dtype,
               dict(skipped or {}))


@dataclass(frozen=True)
class FeatureSet:
    """A feature file's content.

    Attributes:
        image_ids: int64 (M,), the rows' image ids.
        features: (M, D) in the stored dtype (float16 or float32).
        spec: the backbone that made them.
        skipped: image id -> reason, for images without a row.
    """

    image_ids: np.ndarray
    features: np.ndarray
    spec: BackboneSpec
    skipped: dict[int, str]


def read_features(path: str | os.PathLike) -> FeatureSet:
    """Read a whole feature file.

    Raises:
        VQAError: the file is missing, still being written, truncated or not a feature file.
    """
    import h5py

    path = finished_file(path)
    try:
        with h5py.File(path, "r") as f:
            image_ids, features = f["image_ids"][...], f["features"][...]
            spec = BackboneSpec.from_dict(json.loads(f.attrs["backbone"]))
            skipped = {int(k): str(v) for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}
    except (OSError, KeyError, ValueError, RecursionError, AttributeError, TypeError, VQAError) as error:
        raise VQAError(f"image features {path} are not a readable feature file ({brief(error)}); "
                       "delete it and run preprocessing again.") from None
    if features.ndim != 2 or image_ids.ndim != 1 or len(features) != len(image_ids):
        raise VQAError(f"image features {path} hold {len(image_ids)} ids for features of shape {features.shape}; "
                       "delete it and run preprocessing again.")
    return FeatureSet(image_ids.astype(np.int64), features, spec, skipped)


def read_feature_spec(path: str | os.PathLike) -> BackboneSpec:
    """The ``BackboneSpec`` a feature file was made with (its ``backbone`` attribute), without reading the rows."""
    import h5py

    path = finished_file(path)
    try:
        with h5py.File(path, "r") as f:
            return BackboneSpec.from_dict(json.loads(f.attrs["backbone"]))
    except (OSError, KeyError, ValueError, RecursionError, AttributeError, TypeError, VQAError) as error:
        raise VQAError(f"image features {path} do not say which backbone made them ({brief(error)}); "
                       "run preprocessing again.") from None


def finished_file(path: str | os.PathLike, what: str = "image features",
                  finish: str = "run preprocessing again to finish them", make: str = "run preprocessing first") -> Path:
    """``path``, checked to be a finished feature file: not missing, not still being written (a partial file).

    Args:
        path: the file.
        what, finish, make: the words of the two sentences (``vqa.grid_features`` has its own).

    Raises:
        VQAError: the file is missing, or only its partial file exists.
    """
    path = Path(path)
    if not path.is_file():
        if partial_path(path).exists():
            raise VQAError(f"{what} {path} are incomplete ({partial_path(path)} exists); {finish}.")
        raise VQAError(f"{what} {path} do not exist; {make}.")
    return path
