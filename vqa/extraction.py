"""Resumable image-feature extraction: image files -> backbone -> the feature and/or grid file of a split.

One forward pass per batch gives every output asked: the feature rows (``"features"``,
the file of ``vqa.features``) and the grids (``"grid"``, the file of ``vqa.grid_features``).
Work goes to one partial file (``vqa.features.partial_path`` of the first output's file): an
HDF5 file with preallocated rows for each output (grids one image per chunk), a per-row
state (pending / done / skipped) and skip reasons, flushed after each batch with the rows
written before their state. A run killed at any point, SIGKILL included, continues where
it stopped when started again with the same images, backbone, dtype and outputs; a partial
file from other inputs is discarded. The final files are streamed from it in blocks (never
a whole grid array in memory) and appear by atomic rename.

Sharded (``shard=(i, n)``): shard i's share of the images goes to one file per output
(``vqa.features.shard_path``), joined by ``vqa.shards.merge_shards``.
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
from typing import Mapping, Sequence

import numpy as np

from vqa import grid_features
from vqa.backbone import Backbone
from vqa.errors import VQAError, brief
from vqa.features import ExtractionResult, check_dtype, existing_result, partial_path, shard_path, write_rows
from vqa.images import UnreadableImage, load_image
from vqa.progress import progress
# Re-exported: sharding is part of extraction's interface.
from vqa.shards import batch_count, check_shard, merge_shards, shard_json, shard_positions  # noqa: F401
from vqa.storage import atomic_path, open_h5

logger = logging.getLogger(__name__)

OUTPUTS = ("features", "grid")  # what an extraction can write: the keys of ``Backbone.outputs``
# Row states in the partial file of a running extraction.
_PENDING, _DONE, _SKIPPED = 0, 1, 2
_REASON_BYTES = 200
_PARTIAL_DATASETS = {"features": "features", "grid": "grids"}


def _try_load(path: str, image_size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path, image_size), None
    except UnreadableImage as error:
        return None, error.reason


def extract_features(images: Sequence[tuple[int, str | os.PathLike]], backbone: Backbone,
                     out_path: str | os.PathLike, batch_size: int = 32, dtype: str = "float16",
                     workers: int | None = None, prefetch_batches: int = 4,
                     shard: tuple[int, int] | None = None) -> ExtractionResult:
    """The feature rows alone: ``extract_outputs`` with ``{"features": out_path}``."""
    return extract_outputs(images, backbone, {"features": out_path}, batch_size=batch_size, dtype=dtype,
                           workers=workers, prefetch_batches=prefetch_batches, shard=shard)["features"]


def extract_outputs(images: Sequence[tuple[int, str | os.PathLike]], backbone: Backbone,
                    paths: Mapping[str, str | os.PathLike], batch_size: int = 32, dtype: str = "float16",
                    workers: int | None = None, prefetch_batches: int = 4,
                    shard: tuple[int, int] | None = None) -> dict[str, ExtractionResult]:
    """Compute one feature row and/or one grid per readable image, from one forward pass per batch.

    Decoding and resizing run in a thread pool (Pillow releases the GIL) a few
    batches ahead of the model, which runs batched in the calling thread.

    Work goes to one partial file beside the first output's file (see the module
    docstring); batches are fixed slices of the input, so a resumed run feeds the
    model the same batches as an uninterrupted one and writes the same files. An
    existing complete file for the same inputs is reused as it is.

    Args:
        images: (image id, path) pairs; ids must be unique.
        backbone: from ``vqa.backbone.load_backbone``, giving every output asked.
        paths: output -> its file: "features" -> ``vqa.features.features_path(split)``
            and/or "grid" -> ``vqa.grid_features.grid_path(split)``.
        batch_size: images per model call.
        dtype: "float16" (half the disk and memory) or "float32", for every output.
        workers: decoding threads; default min(8, CPU count).
        prefetch_batches: batches decoded ahead of the model.
        shard: (index, count), 0 <= index < count: compute only the batches index,
            index + count, ... of the unsharded run (``shard_positions``) into their own
            resumable files, ``shard_path(path, index, count)`` per output; ``merge_shards``
            joins the count shards of each. Each shard feeds the model exactly the batches
            an unsharded run would, so the merged files hold the same bytes. Shards of one
            job must share images, backbone, dtype, outputs and batch_size.

    Returns:
        Output -> its ``ExtractionResult`` (the same images and ``skipped`` reasons in each).

    Raises:
        VQAError: the backbone does not give an output asked, or another process is on the job.
    """
    import h5py

    dtype = check_dtype(dtype)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    paths = {name: Path(path) for name, path in paths.items() if path is not None}
    if not paths or set(paths) - set(OUTPUTS):
        raise ValueError(f"extract_outputs writes some of {OUTPUTS}, not {sorted(paths)}")
    shapes = backbone.output_shapes()
    for name in paths:
        if name not in shapes:
            raise VQAError(f"backbone {backbone.spec.weights} gives no {'grid' if name == 'grid' else 'feature vector'}"
                           f" (it gives {' and '.join(shapes)}); load it with --features "
                           f"{'grid or both' if name == 'grid' else 'fc7 or both'}.")
    image_ids = np.array([int(image_id) for image_id, _ in images], dtype=np.int64)
    image_paths = [os.path.abspath(path) for _, path in images]
    if len(np.unique(image_ids)) != len(image_ids):
        raise ValueError("image ids passed to extract_features must be unique")
    spec_json = backbone.spec.to_json()
    shard_attrs = None
    if shard is not None:
        index, count = check_shard(shard, batch_count(len(image_ids), batch_size))
        shard_attrs = {"shard": shard_json(index, count, batch_size, image_ids)}
        positions = shard_positions(len(image_ids), batch_size, index, count)
        image_ids, image_paths = image_ids[positions], [image_paths[p] for p in positions]
        paths = {name: shard_path(path, index, count) for name, path in paths.items()}
    outputs = [name for name in OUTPUTS if name in paths]
    work = partial_path(paths[outputs[0]])

    existing = {name: existing_result(paths[name], image_ids, spec_json, dtype, shard_attrs) for name in outputs}
    if all(existing.values()):
        work.unlink(missing_ok=True)
        return existing

    signature = _signature(image_ids, image_paths, spec_json, dtype, outputs)
    datasets = {_PARTIAL_DATASETS[name]: shapes[name] for name in outputs}
    try:
        with _open_partial(work, signature, image_ids, datasets, dtype) as partial:
            state = partial["state"][...]
            pending = np.flatnonzero(state == _PENDING)
            resumed = len(state) - len(pending)
            if resumed:
                logger.warning("resuming feature extraction in %s: %d of %d images already done",
                               work, resumed, len(state))
            # Fixed slices of the input: the same batches whether or not the run was interrupted.
            batches = np.split(pending, np.flatnonzero(np.diff(pending // batch_size)) + 1) if len(pending) else []
            _run_batches(batches, image_paths, backbone, partial, outputs, workers, prefetch_batches,
                         total=len(state), done=resumed)
    except OSError as error:
        if error.errno and not error.filename:  # h5py names no file, e.g. for a full disk
            raise OSError(error.errno, os.strerror(error.errno), str(work)) from error
        raise

    results = {}
    with h5py.File(work, "r") as partial:
        state = partial["state"][...]
        keep = state == _DONE
        skipped = _skipped_reasons(partial, state, image_ids)
        computed = int(np.count_nonzero(state[pending] == _DONE))
        for name in outputs:
            if existing[name]:  # finished before a crash that left the partial file
                results[name] = existing[name]
                continue
            rows = partial[_PARTIAL_DATASETS[name]]
            if name == "features":
                kept = write_rows(paths[name], image_ids, keep, rows, spec_json, dtype, skipped,
                                  extra_attrs=shard_attrs)
            else:
                kept = grid_features.write_grid_rows(paths[name], image_ids, keep, rows, backbone.spec, dtype,
                                                     skipped, extra_attrs=shard_attrs)
            results[name] = ExtractionResult(paths[name], kept, skipped, computed=computed, resumed=resumed)
    work.unlink()
    return results


def _run_batches(batches: list[np.ndarray], paths: list[str], backbone: Backbone, partial, outputs: list[str],
                 workers: int | None, prefetch_batches: int, total: int, done: int) -> None:
    """Decode ahead in threads, run the model batch by batch, record each batch in the .partial file."""
    workers = workers or min(8, os.cpu_count() or 1)
    datasets = {name: partial[_PARTIAL_DATASETS[name]] for name in outputs}
    state, reasons = partial["state"], partial["reasons"]
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
                rows = {name: np.zeros((len(positions), *dataset.shape[1:]), dtype=dataset.dtype)
                        for name, dataset in datasets.items()}
                if readable:
                    batch = np.stack([loaded[i][0] for i in readable])
                    # Feature rows alone go through ``features``; anything with a grid through ``outputs``.
                    computed = backbone.outputs(batch) if "grid" in rows else {"features": backbone.features(batch)}
                    for name, values in rows.items():
                        values[readable] = computed[name]
                new_state = np.array([_SKIPPED if image is None else _DONE for image, _ in loaded], dtype=np.int8)
                for name, dataset in datasets.items():
                    _write_rows(dataset, positions, rows[name])
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


def _signature(image_ids: np.ndarray, paths: list[str], spec_json: str, dtype: str, outputs: list[str]) -> str:
    job = {"format": 1, "backbone": spec_json, "dtype": dtype}
    if outputs != ["features"]:  # a feature-rows-only job keeps the signature it had before grids existed
        job["outputs"] = outputs
    digest = hashlib.sha256()
    digest.update(json.dumps(job).encode())
    digest.update(image_ids.tobytes())
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _open_partial(partial_path: Path, signature: str, image_ids: np.ndarray, datasets: dict[str, tuple], dtype: str):
    """Open the .partial file of this exact job, creating it (atomically) when absent or foreign.

    ``datasets``: name -> the shape of one image's row ((D,) for "features", (H, W, C) for "grids").
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
            # Rows are only read once their state says done, so they need no zero fill.
            for name, row_shape in datasets.items():
                chunks = (1, *row_shape) if len(row_shape) > 1 and len(image_ids) else None  # a grid: one per chunk
                partial.create_dataset(name, shape=(len(image_ids), *row_shape), dtype=dtype, chunks=chunks,
                                       dcpl=_early_allocation(), fill_time="never")
            for name, row_dtype in (("state", np.int8), ("reasons", f"S{_REASON_BYTES}")):
                partial.create_dataset(name, shape=(len(image_ids),), dtype=row_dtype, dcpl=_early_allocation(),
                                       fill_time="alloc")
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
