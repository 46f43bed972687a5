"""Resumable image-feature extraction: image files -> backbone -> the feature file of a split.

Work goes to the feature file's partial file (``vqa.features.partial_path``): an HDF5
file with preallocated rows, a per-row state (pending / done / skipped) and skip
reasons, flushed after each batch with the rows written before their state. A run
killed at any point, SIGKILL included, continues where it stopped when started again
with the same images, backbone and dtype; a partial file from other inputs is
discarded. The final file (``vqa.features``) appears by atomic rename.
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
from vqa.features import ExtractionResult, check_dtype, existing_result, partial_path, write_rows
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
                     workers: int | None = None, prefetch_batches: int = 4) -> ExtractionResult:
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

    existing = existing_result(out_path, image_ids, spec_json, dtype)
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
        kept = write_rows(out_path, image_ids, state == _DONE, partial["features"], spec_json, dtype, skipped)
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
