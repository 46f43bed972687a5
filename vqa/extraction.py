"""Resumable image-feature extraction: image files -> backbone -> the feature file of a split.

Work goes to the feature file's partial file (``vqa.features.partial_path``): an HDF5
file with preallocated rows, a per-row state (pending / done / skipped) and skip
reasons, flushed after each batch with the rows written before their state. A run
killed at any point, SIGKILL included, continues where it stopped when started again
with the same images, backbone and dtype; a partial file from other inputs is
discarded. The final file (``vqa.features``) appears by atomic rename.

Sharded: ``extract_features(..., shard=(i, n))`` computes shard i's share of the images
(whole batches i, i + n, i + 2n, ... of the unsharded run) into its own resumable file
(``vqa.features.shard_path``); ``merge_shards`` checks the n shard files and writes the
file an unsharded run writes, then deletes them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vqa.backbone import Backbone
from vqa.errors import VQAError, brief
from vqa.features import (ExtractionResult, check_dtype, existing_result, partial_path, shard_path,
                          write_rows)
from vqa.grid_features import read_sorted_rows
from vqa.images import UnreadableImage, load_image
from vqa.progress import progress
from vqa.storage import atomic_path, open_h5

logger = logging.getLogger(__name__)

# Row states in the partial file of a running extraction.
_PENDING, _DONE, _SKIPPED = 0, 1, 2
_REASON_BYTES = 200


def _try_load(path: str, image_size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path, image_size), None
    except UnreadableImage as error:
        return None, error.reason


def extract_features(images: Sequence[tuple[int, str | os.PathLike]], backbone: Backbone,
                     out_path: str | os.PathLike, batch_size: int = 32, dtype: str = "float16",
                     workers: int | None = None, prefetch_batches: int = 4,
                     shard: tuple[int, int] | None = None) -> ExtractionResult:
    """Compute one feature row per readable image into ``out_path``.

    Decoding and resizing run in a thread pool (Pillow releases the GIL) a few
    batches ahead of the model, which runs batched in the calling thread.

    Work goes to the partial file beside ``out_path``: an HDF5 file with preallocated rows, a
    per-row state (pending / done / skipped) and skip reasons, flushed after each
    batch with the rows written before their state. A run killed at any point,
    SIGKILL included, continues where it stopped when started again with the
    same images, backbone and dtype; a ``.partial`` from other inputs is
    discarded. Batches are fixed slices of the input, so a resumed run feeds the
    model the same batches as an uninterrupted one and writes the same file.
    The final file appears by atomic rename; an existing complete file for the
    same inputs is reused as it is.

    Args:
        images: (image id, path) pairs; ids must be unique.
        backbone: from ``vqa.backbone.load_backbone``.
        out_path: the feature file (``vqa.features.features_path``).
        batch_size: images per model call.
        dtype: "float16" (half the disk and memory) or "float32".
        workers: decoding threads; default min(8, CPU count).
        prefetch_batches: batches decoded ahead of the model.
        shard: (index, count), 0 <= index < count: compute only the batches index,
            index + count, ... of the unsharded run (``shard_positions``) into their own
            resumable file, ``shard_path(out_path, index, count)``; ``merge_shards``
            joins the count shards. Each shard feeds the model exactly the batches an
            unsharded run would, so the merged features are the same bytes. Shards of
            one job must share images, backbone, dtype and batch_size.

    Returns:
        The ``ExtractionResult``; unreadable images are in ``skipped`` with a reason.
    """
    import h5py

    dtype = check_dtype(dtype)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out_path = Path(out_path)
    work = partial_path(out_path)
    image_ids = np.array([int(image_id) for image_id, _ in images], dtype=np.int64)
    paths = [os.path.abspath(path) for _, path in images]
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to extract_features must be unique")
    spec_json = backbone.spec.to_json()
    shard_attrs = None
    if shard is not None:
        index, count = check_shard(shard)
        shard_attrs = {"shard": _shard_json(index, count, batch_size, image_ids)}
        positions = shard_positions(len(image_ids), batch_size, index, count)
        image_ids, paths = image_ids[positions], [paths[p] for p in positions]
        out_path = shard_path(out_path, index, count)
        work = partial_path(out_path)

    existing = existing_result(out_path, image_ids, spec_json, dtype, shard_attrs)
    if existing is not None:
        work.unlink(missing_ok=True)
        return existing

    signature = _signature(image_ids, paths, spec_json, dtype)
    try:
        with _open_partial(work, signature, image_ids, backbone.feature_dim, dtype) as partial:
            state = partial["state"][...]
            pending = np.flatnonzero(state == _PENDING)
            resumed = len(state) - len(pending)
            if resumed:
                logger.warning("resuming feature extraction in %s: %d of %d images already done",
                               work, resumed, len(state))
            # Fixed slices of the input: the same batches whether or not the run was interrupted.
            batches = np.split(pending, np.flatnonzero(np.diff(pending // batch_size)) + 1) if len(pending) else []
            _run_batches(batches, paths, backbone, partial, workers, prefetch_batches, total=len(state),
                         done=resumed)
    except OSError as error:
        if error.errno and not error.filename:  # h5py names no file, e.g. for a full disk
            raise OSError(error.errno, os.strerror(error.errno), str(work)) from error
        raise

    with h5py.File(work, "r") as partial:
        state = partial["state"][...]
        skipped = _skipped_reasons(partial, state, image_ids)
        kept = write_rows(out_path, image_ids, state == _DONE, partial["features"], spec_json, dtype, skipped,
                          extra_attrs=shard_attrs)
    work.unlink()
    return ExtractionResult(out_path, kept, skipped, computed=int(np.count_nonzero(state[pending] == _DONE)),
                            resumed=resumed)


def _run_batches(batches: list[np.ndarray], paths: list[str], backbone: Backbone, partial, workers: int | None,
                 prefetch_batches: int, total: int, done: int) -> None:
    """Decode ahead in threads, run the model batch by batch, record each batch in the .partial file."""
    workers = workers or min(8, os.cpu_count() or 1)
    features, state, reasons = partial["features"], partial["state"], partial["reasons"]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    in_flight: collections.deque = collections.deque()
    upcoming = iter(batches)

    def submit_next_batch() -> None:
        positions = next(upcoming, None)
        if positions is not None:
            in_flight.append((positions, [pool.submit(_try_load, paths[p], backbone.image_size) for p in positions]))

    try:
        for _ in range(max(1, prefetch_batches)):
            submit_next_batch()
        with progress(total=total, desc="image features", unit="img") as bar:
            bar.update(done)
            while in_flight:
                positions, futures = in_flight.popleft()
                submit_next_batch()
                loaded = [future.result() for future in futures]
                readable = [i for i, (image, _) in enumerate(loaded) if image is not None]
                rows = np.zeros((len(positions), backbone.feature_dim), dtype=features.dtype)
                if readable:
                    rows[readable] = backbone.features(np.stack([loaded[i][0] for i in readable]))
                new_state = np.array([_SKIPPED if image is None else _DONE for image, _ in loaded], dtype=np.int8)
                _write_rows(features, positions, rows)
                for position, (image, reason) in zip(positions, loaded):
                    if image is None:
                        reasons[position] = reason.encode("utf-8")[:_REASON_BYTES]
                # Rows reach the file before the state that vouches for them.
                partial.flush()
                _write_rows(state, positions, new_state)
                partial.flush()
                bar.update(len(positions))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_rows(dataset, positions: np.ndarray, values: np.ndarray) -> None:
    first, last = int(positions[0]), int(positions[-1])
    if last - first + 1 == len(positions):
        dataset[first:last + 1] = values
    else:
        dataset[positions.tolist()] = values


def _signature(image_ids: np.ndarray, paths: list[str], spec_json: str, dtype: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": 1, "backbone": spec_json, "dtype": dtype}).encode())
    digest.update(image_ids.tobytes())
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _open_partial(partial_path: Path, signature: str, image_ids: np.ndarray, feature_dim: int, dtype: str):
    """Open the .partial file of this exact job, creating it (atomically) when absent or foreign.

    The file is locked while open, so a second process on the same job stops at once
    instead of writing the same rows.
    """
    if partial_path.exists():
        opened = contextlib.ExitStack()
        try:
            partial = opened.enter_context(open_h5(partial_path, "r+", lock=True))
        except BlockingIOError:
            raise VQAError(f"another process is writing {partial_path}; wait for it to finish or stop it "
                           "before extracting again.") from None
        except OSError as error:
            if error.errno:  # a failing disk, not a damaged file: deleting the work would not help
                raise
            reason = f"it is unreadable ({brief(error)})"
        else:
            if partial.attrs.get("signature") == signature:
                with opened:
                    yield partial
                return
            opened.close()
            reason = "it belongs to other images, another backbone or another dtype"
        logger.warning("starting feature extraction afresh: %s exists but %s", partial_path, reason)
        partial_path.unlink()

    with atomic_path(partial_path) as tmp:
        with open_h5(tmp, "w") as partial:
            partial.attrs["signature"] = signature
            partial.create_dataset("image_ids", data=image_ids)
            # Space allocated now and never moved: later writes touch raw data only, never HDF5
            # metadata, which is what lets the file survive a SIGKILL in the middle of a write.
            # Feature rows are only read once their state says done, so they need no zero fill.
            for name, shape, row_dtype, fill_time in (
                    ("features", (len(image_ids), feature_dim), dtype, "never"),
                    ("state", (len(image_ids),), np.int8, "alloc"),
                    ("reasons", (len(image_ids),), f"S{_REASON_BYTES}", "alloc")):
                plist = _early_allocation()
                partial.create_dataset(name, shape=shape, dtype=row_dtype, dcpl=plist, fill_time=fill_time)
    with open_h5(partial_path, "r+", lock=True) as partial:
        yield partial


def _early_allocation():
    """Dataset-creation properties that allocate all of a dataset's space when it is created."""
    import h5py

    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return plist


def _skipped_reasons(partial, state: np.ndarray, image_ids: np.ndarray) -> dict[int, str]:
    positions = np.flatnonzero(state == _SKIPPED)
    reasons = partial["reasons"][positions.tolist()] if len(positions) else []
    return {int(image_ids[p]): reason.decode("utf-8", "ignore") for p, reason in zip(positions, reasons)}


# --- shards ----------------------------------------------------------------------------------------


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` as (index, count) with 0 <= index < count, or one sentence saying what a shard is."""
    try:
        index, count = (int(n) for n in shard)
    except (TypeError, ValueError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise VQAError(f"shard {shard!r} is not INDEX/COUNT with 0 <= INDEX < COUNT; pass e.g. 0/3, 1/3 and 2/3.")
    return index, count


def shard_positions(num_images: int, batch_size: int, index: int, count: int) -> np.ndarray:
    """Input positions of shard ``index`` of ``count``: the whole batches index, index + count, ... of the input."""
    positions = np.arange(num_images)
    return positions[(positions // batch_size) % count == index]


def _shard_json(index: int, count: int, batch_size: int, image_ids: np.ndarray) -> str:
    """The ``shard`` attribute: which share of which images (by id, so shards may run on machines with other mounts)."""
    images = hashlib.sha256(np.ascontiguousarray(image_ids, dtype=np.int64).tobytes()).hexdigest()
    return json.dumps({"index": index, "count": count, "batch_size": batch_size, "images": images}, sort_keys=True)


def merge_shards(images: Sequence[tuple[int, str | os.PathLike]], out_path: str | os.PathLike,
                 count: int) -> ExtractionResult:
    """Join the ``count`` shard files of an extraction into ``out_path``, then delete them.

    Every shard must be complete and made for ``images`` (the list the shards were given)
    with one backbone, dtype and batch size. The result is the file an unsharded run
    writes: same rows in the same order, same attributes, same feature bytes. Run again
    after a merge, it reuses the merged file.

    Raises:
        VQAError: naming a shard that is missing, unfinished or made for another job.
    """
    import h5py

    out_path = Path(out_path)
    image_ids = np.array([int(image_id) for image_id, _ in images], dtype=np.int64)
    _, count = check_shard((0, count))
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
            if (part["batch_size"], part["dtype"]) != (first["batch_size"], first["dtype"]) or (
                    json.loads(part["backbone"]) != json.loads(first["backbone"])):
                raise VQAError(f"shard {part['path']} was made with another backbone, dtype or batch size than "
                               f"{first['path']}; delete it and extract it again like the others.")
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
        kept = write_rows(out_path, image_ids, row_of >= 0, rows, first["backbone"], first["dtype"], skipped)
    for path in shards:
        path.unlink()
    return ExtractionResult(out_path, kept, skipped, resumed=len(kept))


def _open_shard(opened: contextlib.ExitStack, path: Path, index: int, count: int, image_ids: np.ndarray) -> dict:
    """A shard file's datasets and attributes, checked to be shard ``index`` of ``count`` of these images."""
    import h5py

    foreign = f"shard {path} belongs to another extraction"
    try:
        f = opened.enter_context(h5py.File(path, "r"))
        info = json.loads(f.attrs["shard"])
        part = {"path": path, "features": f["features"], "image_ids": f["image_ids"][...].astype(np.int64),
                "backbone": str(f.attrs["backbone"]), "dtype": str(f["features"].dtype),
                "batch_size": int(info["batch_size"]),
                "skipped": {int(k): str(v) for k, v in json.loads(f.attrs.get("skipped", "{}")).items()}}
        expected = _shard_json(index, count, part["batch_size"], image_ids)
    except (OSError, KeyError, ValueError, RecursionError, TypeError, AttributeError) as error:
        raise VQAError(f"shard {path} is not a readable shard file ({brief(error)}); delete it and extract it "
                       "again.") from None
    if json.loads(expected) != info:
        raise VQAError(f"{foreign} (another shard number, shard count or image list); delete it and extract it "
                       "again with these images.")
    return part


class _ShardRows:
    """The shards' rows seen in input order, as ``write_rows`` reads them: ``rows[start:stop]`` (zeros if skipped)."""

    def __init__(self, datasets: list, paths: list[Path], shard_of: np.ndarray, row_of: np.ndarray):
        self._datasets, self._paths, self._shard_of, self._row_of = datasets, paths, shard_of, row_of
        self.shape = (len(row_of), datasets[0].shape[1])
        self.dtype = datasets[0].dtype

    def __getitem__(self, window: slice) -> np.ndarray:
        shard_of, row_of = self._shard_of[window], self._row_of[window]
        block = np.zeros((len(row_of), self.shape[1]), dtype=self.dtype)
        for index, (dataset, path) in enumerate(zip(self._datasets, self._paths)):
            mine = np.flatnonzero((shard_of == index) & (row_of >= 0))
            if len(mine):
                try:
                    block[mine] = read_sorted_rows(dataset, row_of[mine])
                except (OSError, ValueError, TypeError) as error:
                    raise VQAError(f"shard {path} could not be read ({brief(error)}); it may be truncated: delete "
                                   "it and extract it again.") from None
        return block
