"""Sharded extraction: which images a shard computes, and merging the shard files into the unsharded file.

``vqa.extraction.extract_outputs(..., shard=(i, n))`` computes shard i's share of the images
(whole batches i, i + n, i + 2n, ... of the unsharded run) into one file per output,
``vqa.features.shard_path(path, i, n)``, each with the layout of its final file (the
image-feature file of ``vqa.features`` or the grid file of ``vqa.grid_features``) plus
attribute ``shard``. ``merge_shards`` checks the n shard files of one output and writes the
file an unsharded run writes, same bytes, then deletes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vqa import grid_features
from vqa.backbone import BackboneSpec, same_features
from vqa.errors import VQAError, brief
from vqa.features import ExtractionResult, existing_result, partial_path, shard_path, write_rows
from vqa.grid_features import read_sorted_rows


def batch_count(num_images: int, batch_size: int) -> int:
    """How many batches extraction feeds the model (at least 1): the most shards a job can be split into."""
    return max(1, -(-num_images // batch_size))


def check_shard(shard: tuple[int, int], num_batches: int | None = None) -> tuple[int, int]:
    """``shard`` as (index, count) with 0 <= index < count <= ``num_batches`` (when given), or one sentence.

    A shard is whole batches, so more shards than batches leaves shards with nothing to do, and
    a count such as 1000000000 would have the merge wait for a billion files.
    """
    try:
        index, count = (int(n) for n in shard)
    except (TypeError, ValueError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise VQAError(f"shard {shard!r} is not INDEX/COUNT with 0 <= INDEX < COUNT; pass e.g. 0/3, 1/3 and 2/3.")
    if num_batches is not None and count > num_batches:
        raise VQAError(f"shard {index}/{count} splits {num_batches} batches of images into more shards than "
                       f"batches; pass a COUNT of at most {num_batches}.")
    return index, count


def shard_positions(num_images: int, batch_size: int, index: int, count: int) -> np.ndarray:
    """Input positions of shard ``index`` of ``count``: the whole batches index, index + count, ... of the input."""
    positions = np.arange(num_images)
    return positions[(positions // batch_size) % count == index]


def shard_json(index: int, count: int, batch_size: int, image_ids: np.ndarray) -> str:
    """The ``shard`` attribute: which share of which images (by id, so shards may run on machines with other mounts)."""
    images = hashlib.sha256(np.ascontiguousarray(image_ids, dtype=np.int64).tobytes()).hexdigest()
    return json.dumps({"index": index, "count": count, "batch_size": batch_size, "images": images}, sort_keys=True)


def merge_shards(images: Sequence[tuple[int, str | os.PathLike]], out_path: str | os.PathLike, count: int,
                 backbone: BackboneSpec | None = None) -> ExtractionResult:
    """Join the ``count`` shard files of one output of an extraction into ``out_path``, then delete them.

    Works for the image-feature file and the grid file alike (told apart by the shards'
    rows: (M, D) or (M, H, W, C)). Every shard must be complete and made for ``images`` (the
    list the shards were given) with one backbone, dtype and batch size. The result is the
    file an unsharded run writes: same rows in the same order, same attributes, same feature
    bytes. Run again after a merge, it reuses the merged file.

    Args:
        images: the (image id, path) pairs the shards were given.
        out_path: the final file.
        count: how many shards.
        backbone: when given, the shards must have been made by a backbone with these features.

    Raises:
        VQAError: naming a shard that is missing, unfinished or made for another job.
    """
    import h5py

    out_path = Path(out_path)
    image_ids = np.array([int(image_id) for image_id, _ in images], dtype=np.int64)
    _, count = check_shard((0, count))
    if count > max(1, len(image_ids)):
        raise VQAError(f"{out_path.parent} holds shards of a {count}-way split of {len(image_ids)} images, more "
                       f"shards than images; delete the files {out_path.name}.shard-* and extract again.")
    shards = [shard_path(out_path, index, count) for index in range(count)]
    if out_path.is_file() and not any(path.exists() or partial_path(path).exists() for path in shards):
        try:
            with h5py.File(out_path, "r") as f:
                spec_json, dtype = str(f.attrs["backbone"]), str(f["features"].dtype)
        except (OSError, KeyError, ValueError, TypeError):
            spec_json = None  # not a feature file: the missing shards are what to report
        existing = spec_json and existing_result(out_path, image_ids, spec_json, dtype)
        if existing:
            return existing
    for index, path in enumerate(shards):
        if not path.is_file():
            state = "is unfinished" if partial_path(path).exists() else "is missing"
            raise VQAError(f"shard {path} {state}; run its extraction (shard {index} of {count}) to the end "
                           "before merging.")
    with contextlib.ExitStack() as opened:
        parts = [_open_shard(opened, path, index, count, image_ids) for index, path in enumerate(shards)]
        first = parts[0]
        for part in parts[1:]:
            if (part["batch_size"], part["dtype"], part["shape"], part["layer"]) != (
                    first["batch_size"], first["dtype"], first["shape"], first["layer"]) or (
                    json.loads(part["backbone"]) != json.loads(first["backbone"])):
                raise VQAError(f"shard {part['path']} was made with another backbone, dtype or batch size than "
                               f"{first['path']}; delete it and extract it again like the others.")
        spec = _shard_spec(first)
        if backbone is not None and not same_features(spec, backbone):
            raise VQAError(f"shard {first['path']} was made with another backbone than this run's "
                           f"({spec.kind} {spec.weights}, {spec.image_size}, grid layer {spec.grid_layer or 'none'}); "
                           "pass the options the shards were extracted with, or delete them and extract again.")
        shard_of = (np.arange(len(image_ids)) // first["batch_size"]) % count
        row_of = np.full(len(image_ids), -1, dtype=np.int64)
        skipped_at: dict[int, str] = {}
        for index, part in enumerate(parts):
            positions = np.flatnonzero(shard_of == index)
            done = np.array([int(image_ids[p]) not in part["skipped"] for p in positions], dtype=bool)
            if not np.array_equal(part["image_ids"], image_ids[positions[done]]):
                raise VQAError(f"shard {part['path']} holds other images than its share of the {len(image_ids)} "
                               "given; delete it and extract it again.")
            row_of[positions[done]] = np.arange(int(done.sum()))
            skipped_at.update({int(p): part["skipped"][int(image_ids[p])] for p in positions[~done]})
        skipped = {int(image_ids[p]): skipped_at[p] for p in sorted(skipped_at)}
        rows = _ShardRows([part["features"] for part in parts], [part["path"] for part in parts], shard_of, row_of)
        if len(first["shape"]) == 3:
            kept = grid_features.write_grid_rows(out_path, image_ids, row_of >= 0, rows, spec, first["dtype"],
                                                 skipped)
        else:
            kept = write_rows(out_path, image_ids, row_of >= 0, rows, first["backbone"], first["dtype"], skipped)
    for path in shards:
        path.unlink()
    return ExtractionResult(out_path, kept, skipped, resumed=len(kept))


def _shard_spec(part: dict) -> BackboneSpec:
    try:
        return BackboneSpec.from_dict(json.loads(part["backbone"]))
    except (ValueError, RecursionError, VQAError) as error:
        raise VQAError(f"shard {part['path']} does not say which backbone made it ({brief(error)}); delete it and "
                       "extract it again.") from None


def _open_shard(opened: contextlib.ExitStack, path: Path, index: int, count: int, image_ids: np.ndarray) -> dict:
    """A shard file's datasets and attributes, checked to be shard ``index`` of ``count`` of these images."""
    import h5py

    foreign = f"shard {path} belongs to another extraction"
    try:
        f = opened.enter_context(h5py.File(path, "r"))
        info = json.loads(f.attrs["shard"])
        part = {"path": path, "features": f["features"], "image_ids": f["image_ids"][...].astype(np.int64),
                "backbone": str(f.attrs["backbone"]), "dtype": str(f["features"].dtype),
                "shape": tuple(f["features"].shape[1:]), "layer": str(f.attrs.get("layer", "")),
                "batch_size": int(info["batch_size"]),
                "skipped": {int(k): str(v) for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}}
        expected = shard_json(index, count, part["batch_size"], image_ids)
    except (OSError, KeyError, ValueError, RecursionError, TypeError, AttributeError) as error:
        raise VQAError(f"shard {path} is not a readable shard file ({brief(error)}); delete it and extract it "
                       "again.") from None
    if json.loads(expected) != info:
        raise VQAError(f"{foreign} (another shard number, shard count or image list); delete it and extract it "
                       "again with these images.")
    if len(part["shape"]) not in (1, 3):
        raise VQAError(f"shard {path} holds rows of shape {part['shape']}, neither feature rows nor grids; delete it "
                       "and extract it again.")
    return part


class _ShardRows:
    """The shards' rows seen in input order, as the writers read them: ``rows[start:stop]`` (zeros if skipped)."""

    def __init__(self, datasets: list, paths: list[Path], shard_of: np.ndarray, row_of: np.ndarray):
        self._datasets, self._paths, self._shard_of, self._row_of = datasets, paths, shard_of, row_of
        self.shape = (len(row_of), *datasets[0].shape[1:])
        self.dtype = datasets[0].dtype

    def __getitem__(self, window: slice) -> np.ndarray:
        shard_of, row_of = self._shard_of[window], self._row_of[window]
        block = np.zeros((len(row_of), *self.shape[1:]), dtype=self.dtype)
        for index, (dataset, path) in enumerate(zip(self._datasets, self._paths)):
            mine = np.flatnonzero((shard_of == index) & (row_of >= 0))
            if len(mine):
                try:
                    block[mine] = read_sorted_rows(dataset, row_of[mine])
                except (OSError, ValueError, TypeError) as error:
                    raise VQAError(f"shard {path} could not be read ({brief(error)}); it may be truncated: delete "
                                   "it and extract it again.") from None
        return block
