"""What training, validation and prediction read from a preprocessed directory OUT.

Reads, each through its owner: the manifest (``vqa.manifest``), the answer vocabulary
(``vqa.answers``), the question vocabulary and word vectors (``vqa.text``), and per
split the question arrays and answer types (``vqa.split_files``) and the image input the
run reads (``vqa.visual``: fc7 vectors, a grid or regions, held in memory or streamed).

A question is usable when the input its run reads has its image: each question's row is
looked up by image id in that input's own file (``vqa.visual.rows_for``), so an OUT made
only by importing grids or regions trains with no images and no fc7 file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from vqa import manifest as manifest_lib
from vqa import split_files, visual
from vqa.errors import VQAError
from vqa.names import QUESTION_IDS


@dataclass(frozen=True)
class SplitData:
    """One preprocessed split and its open visual input.

    Attributes:
        split: the split name, e.g. "train2014".
        question_ids: int64 (N,) VQA question ids.
        token_ids: int32 (N, L) question token ids, post-padded with 0.
        image_index: int32 (N,) row of each question's image in ``visual``, -1 where that input
            has none; 0 for every question of a split loaded without an image input.
        answer_index: int32 (N,) class of the most common answer, -1 outside the vocabulary.
        score_indices: int32 (N, 10) answer classes padded with -1.
        score_values: float32 (N, 10) official VQA accuracy of each of those classes.
        has_annotations: False for test splits (no answers).
        answer_types: the answer type of each question ("yes/no", ...), or None when
            the split's text files do not say.
        visual: the open image input (``vqa.visual.VisualReader``), None for a blind run;
            ``close()`` closes it.
        source: the ``data.features`` source it was opened as, or None.
    """

    split: str
    question_ids: np.ndarray
    token_ids: np.ndarray
    image_index: np.ndarray
    answer_index: np.ndarray
    score_indices: np.ndarray
    score_values: np.ndarray
    has_annotations: bool
    answer_types: list[str] | None = None
    visual: visual.VisualReader | None = None
    source: str | None = None

    def close(self) -> None:
        """Close the file a streamed input holds open (a no-op otherwise)."""
        if self.visual is not None:
            self.visual.close()

    @property
    def num_questions(self) -> int:
        return len(self.question_ids)

    @property
    def max_length(self) -> int:
        return self.token_ids.shape[1]

    @property
    def spec(self) -> visual.VisualSpec | None:
        """What the model reads of each image, or None without an image input."""
        return self.visual.spec if self.visual is not None else None

    @property
    def feature_dim(self) -> int:
        """D of the image input (C of a grid), 0 without one."""
        return self.visual.spec.feature_dim if self.visual is not None else 0

    @property
    def grid_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of the grid behind the input (grid, grid-mean, grid-regions), else None."""
        return self.visual.grid_shape if self.visual is not None else None


def load_split(out_dir: str | Path, split: str, source: str | None = "fc7") -> SplitData:
    """Read one preprocessed split: its question arrays, and its image input opened.

    Args:
        out_dir: the preprocessed directory OUT.
        split: a split name listed in OUT's manifest, e.g. "train2014".
        source: a ``vqa.visual.SOURCES`` name (what ``data.features`` resolved to), or None
            for a run that reads no image. Close the result with ``SplitData.close``.

    Raises:
        VQAError: when OUT is not preprocessed, does not hold ``split`` or the input's file,
            or a file is damaged.
    """
    out_dir = Path(out_dir)
    manifest = manifest_lib.load_manifest(out_dir)
    manifest_lib.require_split(out_dir, manifest, split)
    split_dir = out_dir / split
    arrays = split_files.read_questions(split_dir)
    reader = visual.open_source(source, split_dir) if source is not None else None
    if reader is None:
        image_index = np.zeros(arrays.num_questions, np.int32)
    else:
        image_index = visual.rows_for(arrays.image_ids, reader.image_ids)
    return SplitData(
        split=split,
        question_ids=arrays.question_ids,
        token_ids=arrays.token_ids,
        image_index=image_index,
        answer_index=arrays.answer_index,
        score_indices=arrays.score_indices,
        score_values=arrays.score_values,
        has_annotations=arrays.has_annotations,
        answer_types=split_files.read_answer_types(split_dir, arrays.num_questions),
        visual=reader,
        source=source,
    )


def dense_scores(score_indices: np.ndarray, score_values: np.ndarray, num_answers: int) -> np.ndarray:
    """Scatter sparse soft scores into dense targets.

    Args:
        score_indices: int (B, S) answer classes, -1 = padding.
        score_values: float (B, S) the official accuracy of each class.
        num_answers: K.

    Returns:
        float32 (B, K): row b holds score_values[b, s] at column score_indices[b, s], 0 elsewhere.
    """
    batch = score_indices.shape[0]
    dense = np.zeros((batch, num_answers), dtype=np.float32)
    rows = np.broadcast_to(np.arange(batch)[:, None], score_indices.shape)
    present = score_indices >= 0
    dense[rows[present], score_indices[present]] = score_values[present]
    return dense


class QuestionBatches(keras.utils.PyDataset):
    """Batches of one split for ``model.fit`` / ``model.predict`` on any Keras backend.

    Yields ``{"question_ids": int32 (B, L)}`` plus the split's image inputs (``vqa.visual``) and, when
    ``with_targets``, the targets: float32 (B, K) soft scores for loss "soft", int32 (B,)
    class indices for loss "softmax". A split loaded without an image input yields none.

    Training (``training=True``) leaves out questions whose image is missing and questions
    without a vocabulary answer (no positive soft score / answer_index -1), counting both,
    and shuffles every epoch with a generator seeded by (seed, epoch), so a resumed run
    sees the same orders as an uninterrupted one. ``set_epoch`` picks the epoch; the order
    is a pure function of it, so batches prefetched by Keras never depend on timing.
    Evaluation keeps every question in file order and gives a missing image a zero vector.

    Args:
        data: the split.
        batch_size: questions per batch (the last batch may be smaller).
        num_answers: K, for the dense soft-score targets.
        loss: "soft" or "softmax" (which targets, and which questions count as answerable).
        training: filter and shuffle as described above.
        with_targets: yield (inputs, targets) rather than inputs only.
        seed: the shuffling seed.
        include_images: False for a question-only model: no image input is yielded.
        limit: keep only the first ``limit`` questions (after filtering); 0 = all.
        batch_multiple: pad the last batch to a multiple of this by repeating its last
            question (JAX data parallelism shards every batch evenly over the devices);
            with targets, a third element then gives padding a sample weight of 0, and
            predictions past ``num_samples`` are padding.
        shard: (process, processes): in a cluster of training processes (``vqa.distributed``)
            each yields only its consecutive share of every (padded) global batch, process 0 the
            first; ``batch_size``, ``len`` and ``num_samples`` stay global.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for Keras.
    """

    def __init__(self, data: SplitData, batch_size: int, num_answers: int, loss: str = "soft",
                 training: bool = False, with_targets: bool = True, seed: int = 0, include_images: bool = True,
                 limit: int = 0, batch_multiple: int = 1, shard: tuple[int, int] = (0, 1), **kwargs):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise VQAError(f"train.batch_size must be at least 1, got {batch_size}.")
        if loss not in ("soft", "softmax"):
            raise VQAError(f"train.loss must be soft or softmax, got {loss!r}.")
        if with_targets and not data.has_annotations:
            raise VQAError(f"split {data.split} has no annotations, so it cannot be trained or scored on.")
        self.data = data
        self.batch_size = batch_size
        self.num_answers = num_answers
        self.loss = loss
        self.training = training
        self.with_targets = with_targets
        self.seed = seed
        self.include_images = include_images
        self.batch_multiple = max(1, batch_multiple)
        self.process, self.processes = shard
        if self.processes > 1 and self.batch_multiple % self.processes:
            raise VQAError(f"{self.processes} training processes need a batch multiple divisible by "
                           f"{self.processes}, got {self.batch_multiple}: give every process as many devices.")

        keep = np.ones(data.num_questions, dtype=bool)
        missing_image = data.image_index < 0
        if training:
            if loss == "soft":
                unanswerable = ~(data.score_values > 0).any(axis=1)
            else:
                unanswerable = data.answer_index < 0
            keep &= ~missing_image & ~unanswerable
            self.num_without_answer = int((unanswerable & ~missing_image).sum())
        else:
            self.num_without_answer = 0
        self.rows = np.flatnonzero(keep)
        if limit:
            self.rows = self.rows[:limit]
        self.num_missing_images = int(missing_image[self.rows].sum()) if not training else int(missing_image.sum())
        if len(self.rows) == 0:
            raise VQAError(
                f"split {data.split} has no usable questions (missing images: {int(missing_image.sum())}, "
                f"without a vocabulary answer: {self.num_without_answer}): check the preprocessing."
            )
        self._order = self.rows
        self.set_epoch(0)

    @property
    def num_samples(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the question order for ``epoch`` (0-based); a no-op unless training."""
        self._epoch = epoch
        if self.training:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = self.rows[rng.permutation(len(self.rows))]

    def batch_rows(self, index: int) -> np.ndarray:
        """The split rows (question positions) of batch ``index`` in the current epoch's order."""
        return self._order[index * self.batch_size:(index + 1) * self.batch_size]

    def close(self) -> None:
        """Release what feeding holds (nothing here; ``vqa.streamed_batches`` stops its prefetch)."""

    def padded_rows(self, index: int) -> tuple[np.ndarray, int]:
        """Batch ``index``'s rows padded to ``batch_multiple``, and how many are real: this process's
        share of them in a cluster (``shard``)."""
        rows = self.batch_rows(index)
        real = len(rows)
        padding = -real % self.batch_multiple
        if padding:
            rows = np.concatenate([rows, np.repeat(rows[-1:], padding)])
        if self.processes > 1:
            size = len(rows) // self.processes
            start = self.process * size
            rows, real = rows[start:start + size], min(max(real - start, 0), size)
        return rows, real

    def image_inputs(self, index: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The image inputs of batch ``index`` (rows ``rows``), read from the split's visual input."""
        return self.data.visual.read(self.data.image_index[rows])

    def __getitem__(self, index: int):
        rows, real = self.padded_rows(index)
        inputs = {QUESTION_IDS: self.data.token_ids[rows]}
        if self.include_images and self.data.visual is not None:
            inputs.update(self.image_inputs(index, rows))
        if not self.with_targets:
            return inputs
        if self.loss == "soft":
            targets = dense_scores(self.data.score_indices[rows], self.data.score_values[rows], self.num_answers)
        else:
            targets = self.data.answer_index[rows]
        if self.batch_multiple > 1:  # every process of a cluster yields the same structure
            weights = np.zeros(len(rows), np.float32)
            weights[:real] = 1.0
            return inputs, targets, weights
        return inputs, targets
