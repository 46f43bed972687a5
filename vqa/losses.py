"""The training loss, the training-time accuracy metric and the official validation score.

``VQAAccuracy`` is registered with Keras (package "vqa"), so a checkpoint that was
compiled with it loads again in safe mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops

from vqa.errors import VQAError

if TYPE_CHECKING:
    from vqa import dataset as vqa_dataset


def _soft_score_percent(y_true, y_pred):
    """Per-question official accuracy of the top answer x 100: y_true float (B, K) soft scores."""
    top = ops.expand_dims(ops.argmax(y_pred, axis=-1), axis=-1)
    return 100.0 * ops.squeeze(ops.take_along_axis(ops.cast(y_true, "float32"), top, axis=-1), axis=-1)


def _exact_match_percent(y_true, y_pred):
    """100 where the top answer is the class in y_true int (B,) (the most common answer), else 0."""
    top = ops.argmax(y_pred, axis=-1)
    target = ops.cast(ops.reshape(y_true, (-1,)), top.dtype)
    return 100.0 * ops.cast(ops.equal(top, target), "float32")


@keras.saving.register_keras_serializable(package="vqa")
class VQAAccuracy(keras.metrics.MeanMetricWrapper):
    """Training-time accuracy of the top answer, in percent, shown in the progress bar.

    With dense soft-score targets (loss "soft") this is exactly the official VQA accuracy
    on the training questions. With class-index targets (loss "softmax") only the most
    common answer is known, so it is the exact-match accuracy and is named
    ``answer_accuracy`` to say so.
    """

    def __init__(self, sparse_targets: bool = False, name: str | None = None, dtype=None):
        fn = _exact_match_percent if sparse_targets else _soft_score_percent
        super().__init__(fn, name=name or ("answer_accuracy" if sparse_targets else "vqa_accuracy"), dtype=dtype)
        self.sparse_targets = sparse_targets

    def get_config(self):
        return {"sparse_targets": self.sparse_targets, "name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="vqa")
class SoftScoreBCE(keras.losses.Loss):
    """Binary cross-entropy between sigmoid scores and the VQA soft scores, summed over the K
    answers and averaged over the batch (Teney et al. 2018; hengyuan-hu's and BAN's mean x K).

    Summed, not averaged, over answers: averaged, a 3,000-answer head's gradients are 3,000
    times smaller, so Adam's epsilon and the clipping threshold would mean something else at
    every vocabulary size. MCAN also sums over the batch: its learning rate is ours / batch size.
    """

    def __init__(self, name: str = "soft_score_bce", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        y_true = ops.cast(y_true, "float32")
        per_answer = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
        return ops.sum(per_answer, axis=-1)


def make_loss(loss: str) -> keras.losses.Loss:
    """The training loss for ``train.loss``.

    "soft": ``SoftScoreBCE``, the soft-score BCE summed over answers.
    "softmax": sparse categorical cross-entropy against the most common answer's class.
    """
    if loss == "soft":
        return SoftScoreBCE()
    if loss == "softmax":
        return keras.losses.SparseCategoricalCrossentropy(name="answer_cross_entropy")
    raise VQAError(f"train.loss must be soft or softmax, got {loss!r}.")


def official_accuracy(predicted: np.ndarray, score_indices: np.ndarray, score_values: np.ndarray) -> np.ndarray:
    """Per-question official VQA accuracy of predicted classes.

    Args:
        predicted: int (N,) predicted answer classes.
        score_indices: int (N, S) the question's answer classes, -1 padded (distinct).
        score_values: float (N, S) the official accuracy of each of those classes.

    Returns:
        float (N,) in [0, 1]: the score of the predicted class, 0 when it is not listed.
    """
    matches = score_indices == np.asarray(predicted)[:, None]
    return (score_values * matches).sum(axis=1)


def predict_classes(predictor: keras.Model, batches: vqa_dataset.QuestionBatches) -> np.ndarray:
    """int (N,) top answer class per question, from a model made by ``argmax_model``."""
    classes = np.asarray(predictor.predict(batches, verbose=0)).astype(np.int64).reshape(-1)
    return classes[:batches.num_samples]  # the rest pads the last batch for data parallelism


def argmax_model(model: keras.Model) -> keras.Model:
    """Wrap ``model`` so that predict returns int (batch,) classes, not (batch, K) scores.

    Keeps validation memory-lean: the full val2014 scores would be 214,354 x K floats.
    """
    return keras.Model(model.input, ops.argmax(model.output, axis=-1), name=f"{model.name}_argmax")


def score_split(predicted: np.ndarray, data: vqa_dataset.SplitData, rows: np.ndarray,
                prefix: str = "val_") -> dict[str, float]:
    """Official VQA accuracy (x 100, 2 decimals), overall and per answer type when known."""
    per_question = official_accuracy(predicted, data.score_indices[rows], data.score_values[rows])
    scores = {f"{prefix}vqa_accuracy": round(float(per_question.mean()) * 100, 2)}
    if data.answer_types is not None:
        types = np.asarray(data.answer_types, dtype=object)[rows]
        for answer_type in sorted(set(types)):
            key = "".join(c if c.isalnum() else "_" for c in answer_type)
            scores[f"{prefix}vqa_accuracy_{key}"] = round(float(per_question[types == answer_type].mean()) * 100, 2)
    return scores
