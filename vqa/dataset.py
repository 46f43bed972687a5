"""What training, validation and prediction read from a preprocessed directory OUT.

Reads, each through its owner: the manifest (``vqa.manifest``), the answer vocabulary
(``vqa.answers``), the question vocabulary and word vectors (``vqa.text``), and per
split the question arrays and answer types (``vqa.split_files``) and the image
features (``vqa.features``) or the grid features (``vqa.grid_features``): streamed through an
open ``GridReader`` for the attention models (batched by ``vqa.grid_batches``), or mean-pooled
into (M, C) image features for a global model compared on the same file.

Memory: a split's image features are read once, in their stored dtype (float16 for the
full VGG-16 fc7 train2014 set: 82,783 x 4096 x 2 bytes = 678 MB), and shared by every
question of that image; a batch gathers its rows with numpy fancy indexing and converts
only those rows to float32. Nothing is copied per question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from vqa import features as features_lib
from vqa import grid_features
from vqa import manifest as manifest_lib
from vqa import split_files
from vqa.errors import VQAError


@dataclass(frozen=True)
class SplitData:
    """One preprocessed split, held in memory.

    Attributes:
        split: the split name, e.g. "train2014".
        question_ids: int64 (N,) VQA question ids.
        token_ids: int32 (N, L) question token ids, post-padded with 0.
        image_index: int32 (N,) row of ``image_features`` or -1 for a missing image.
        answer_index: int32 (N,) class of the most common answer, -1 outside the vocabulary.
        score_indices: int32 (N, 10) answer classes padded with -1.
        score_values: float32 (N, 10) official VQA accuracy of each of those classes.
        image_features: (M, D) in the stored dtype (float16 or float32), one row per image;
            (0, 0) when the split streams grids.
        has_annotations: False for test splits (no answers).
        answer_types: the answer type of each question ("yes/no", ...), or None when
            the split's text files do not say.
        grids: the open ``GridReader`` of a split loaded with ``features="grid"`` (then
            ``image_index`` is a row of the grid file), else None; ``close()`` closes it.
    """

    split: str
    question_ids: np.ndarray
    token_ids: np.ndarray
    image_index: np.ndarray
    answer_index: np.ndarray
    score_indices: np.ndarray
    score_values: np.ndarray
    image_features: np.ndarray
    has_annotations: bool
    answer_types: list[str] | None = None
    grids: Any = None

    def close(self) -> None:
        """Close the grid file a streaming split holds open (a no-op otherwise)."""
        if self.grids is not None:
            self.grids.close()

    @property
    def num_questions(self) -> int:
        return len(self.question_ids)

    @property
    def max_length(self) -> int:
        return self.token_ids.shape[1]

    @property
    def feature_dim(self) -> int:
        """D of the image features, or C (the channels) of a streamed grid."""
        return self.grids.shape[2] if self.grids is not None else self.image_features.shape[1]

    @property
    def grid_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of a streamed grid, else None."""
        return tuple(self.grids.shape) if self.grids is not None else None


FEATURE_SOURCES = ("fc7", "grid", "grid-mean")


def load_split(out_dir: str | Path, split: str, features: str = "fc7") -> SplitData:
    """Read one preprocessed split: its question arrays and its image features.

    Args:
        out_dir: the preprocessed directory OUT.
        split: a split name listed in OUT's manifest, e.g. "train2014".
        features: "fc7": the image features, in memory once in their stored dtype;
            "grid": the grid file, left open as ``SplitData.grids`` and read batch by batch
            (close it with ``SplitData.close``); "grid-mean": the grid file mean-pooled over
            its cells into (M, C) float32 image features, for a global model.

    Raises:
        VQAError: when OUT is not preprocessed, does not hold ``split``, has no grid file
            for a grid source, or a file is damaged.
    """
    if features not in FEATURE_SOURCES:
        raise VQAError(f"data.features must be fc7 or grid-mean, got {features!r}.")
    out_dir = Path(out_dir)
    manifest = manifest_lib.load_manifest(out_dir)
    manifest_lib.require_split(out_dir, manifest, split)
    split_dir = out_dir / split
    arrays = split_files.read_questions(split_dir)
    image_index, reader = arrays.image_index, None
    if features == "fc7":
        fc7_path = features_lib.features_path(split_dir)
        if not fc7_path.exists() and grid_features.grid_path(split_dir).is_file():
            raise VQAError(f"{split_dir} holds grid features only (preprocessed with --features grid), no fc7 "
                           "features; train an attention model (--model san or multi-glimpse) or a global one on "
                           "the mean-pooled grid with --set data.features=grid-mean.")
        image_features = features_lib.read_features(fc7_path).features
        if len(image_index) and int(image_index.max(initial=-1)) >= len(image_features):
            raise VQAError(f"{split_dir} has question rows pointing past its {len(image_features)} image features; "
                           "run `vqa preprocess` again.")
    else:
        path = grid_features.grid_path(split_dir)
        if not path.exists():
            raise VQAError(f"{split_dir} has no grid features, which data.features={features} and the attention "
                           "models read; preprocess with grid features (or import them) first.")
        reader = grid_features.GridReader(path)
        image_index = grid_rows(arrays.image_ids, arrays.image_index, reader.image_ids)
        if features == "grid-mean":
            with reader:
                image_features = reader.mean_pooled()
            reader = None
        else:
            image_features = np.zeros((0, 0), np.float16)
    return SplitData(
        split=split,
        question_ids=arrays.question_ids,
        token_ids=arrays.token_ids,
        image_index=image_index,
        answer_index=arrays.answer_index,
        score_indices=arrays.score_indices,
        score_values=arrays.score_values,
        image_features=image_features,
        has_annotations=arrays.has_annotations,
        answer_types=split_files.read_answer_types(split_dir, arrays.num_questions),
        grids=reader,
    )


def grid_rows(question_image_ids: np.ndarray, image_index: np.ndarray, grid_ids: np.ndarray) -> np.ndarray:
    """int32 (N,): the grid-file row of each question's image, -1 where the image is missing
    (no image at preprocessing, ``image_index`` -1, or no row in the grid file)."""
    if len(grid_ids) == 0:
        return np.full(len(question_image_ids), -1, np.int32)
    order = np.argsort(grid_ids, kind="stable")
    sorted_ids = grid_ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, question_image_ids), len(sorted_ids) - 1)
    found = (image_index >= 0) & (sorted_ids[position] == question_image_ids)
    return np.where(found, order[position], -1).astype(np.int32)


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


def gather_features(image_features: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """(B, D) features of a batch's images in the stored dtype; a missing image (-1) gets zeros.

    float16 rows stay float16: the model's float32 input casts them, which is several
    times cheaper than converting in numpy on the feeding thread (measured by make bench).
    """
    missing = image_index < 0
    rows = image_features[np.where(missing, 0, image_index)]
    if missing.any():
        rows[missing] = 0.0
    return rows


class QuestionBatches(keras.utils.PyDataset):
    """Batches of one split for ``model.fit`` / ``model.predict`` on any Keras backend.

    Yields ``{"question_ids": int32 (B, L), "image_features": float32 (B, D)}`` and, when
    ``with_targets``, the targets: float32 (B, K) soft scores for loss "soft", int32 (B,)
    class indices for loss "softmax". A question-only model ignores the image input.

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
        """Release what feeding holds (nothing here; ``vqa.grid_batches`` stops its prefetch)."""

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
        """The image input of batch ``index`` (rows ``rows``): its image features here."""
        return {"image_features": gather_features(self.data.image_features, self.data.image_index[rows])}

    def __getitem__(self, index: int):
        rows, real = self.padded_rows(index)
        inputs = {"question_ids": self.data.token_ids[rows]}
        if self.include_images:
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
