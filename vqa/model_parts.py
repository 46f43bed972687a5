"""The building blocks every VQA architecture shares: the question branch, masks and the answer head.

``vqa.model`` (the global models), ``vqa.attention`` (attention over grids and regions)
and later architectures build on these, so none of them imports another. The custom
layers are registered: a saved model that uses them loads with ``safe_mode=True`` once
this module is imported (``vqa.registry`` imports it).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from vqa import box_relations  # noqa: F401  its layers too: importing this module registers every custom layer
from vqa.config import ModelConfig
from vqa.errors import VQAError


@keras.saving.register_keras_serializable(package="vqa")
class MaskedSum(keras.layers.Layer):
    """Sum over the time axis, ignoring padded positions (a bag of words).

    Padding rows of the embedding matrix start as zeros, but fine-tuned embeddings
    can move them, so the mask rather than the zero row is what keeps padding out.

    Call args:
        inputs: float (batch, time, dim).
        mask: bool (batch, time) or None.

    Returns:
        float (batch, dim).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is not None:
            inputs = inputs * ops.expand_dims(ops.cast(mask, inputs.dtype), axis=-1)
        return ops.sum(inputs, axis=1)

    def compute_mask(self, inputs, mask=None):
        # The time axis is gone, so there is nothing left to mask.
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package="vqa")
class MaskedSoftmax(keras.layers.Layer):
    """Softmax over the last axis that gives padded positions (boxes, words) zero weight.

    Call args:
        inputs: list of logits float (batch, maps, K) and mask float (batch, K), 1 = real, 0 = padding.

    Returns:
        float32 (batch, maps, K), each map summing to 1 over the real positions (all zeros
        for a row without any, rather than NaN).
    """

    def call(self, inputs):
        logits, mask = inputs
        logits = ops.cast(logits, "float32")
        mask = ops.expand_dims(ops.cast(mask, "float32"), axis=1)
        logits = logits - ops.max(logits, axis=-1, keepdims=True)
        weights = ops.exp(logits) * mask
        return weights / ops.maximum(ops.sum(weights, axis=-1, keepdims=True), 1e-9)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="vqa")
class PaddingMask(keras.layers.Layer):
    """Which positions of post-padded token ids are words, as a tensor (an Embedding's mask is not one).

    Call args:
        inputs: int (batch, L) token ids, 0 = padding.

    Returns:
        float32 (batch, L): 1 for a word, 0 for padding.
    """

    def call(self, inputs):
        return ops.cast(ops.not_equal(inputs, 0), "float32")


@keras.saving.register_keras_serializable(package="vqa")
class AttentionMask(keras.layers.Layer):
    """The ``attention_mask`` of ``keras.layers.MultiHeadAttention`` from a query and a key mask.

    Only keys are masked: every query, a padded one too, may attend every real key, so no
    row is empty unless there is no real key at all (an image without boxes).

    Call args:
        inputs: list of the query mask float (batch, Tq) (only its shape is used) and the key
            mask float (batch, Tk), 1 = real, 0 = padding.

    Returns:
        bool (batch, Tq, Tk): True where the query may attend the key.
    """

    def call(self, inputs):
        query_mask, key_mask = inputs
        queries = ops.expand_dims(ops.ones_like(query_mask, dtype="bool"), axis=-1)
        keys = ops.expand_dims(ops.greater(ops.cast(key_mask, "float32"), 0.5), axis=1)
        return ops.logical_and(queries, keys)


def word_embedding(config: ModelConfig, embeddings: np.ndarray) -> keras.layers.Embedding:
    """Embedding initialised from the word-vector matrix; token 0 is padding (masked).

    The matrix is passed as weights, not as a Constant initializer, so it is stored
    once in the weights file and not repeated in the model's JSON config.
    """
    embeddings = np.asarray(embeddings, dtype="float32")
    if embeddings.ndim != 2:
        raise VQAError(f"word vectors must be a (vocabulary, dim) matrix, got shape {embeddings.shape}.")
    return keras.layers.Embedding(
        embeddings.shape[0], embeddings.shape[1], mask_zero=True, weights=embeddings,
        trainable=config.train_embeddings, name="word_embedding",
    )


def stacked_lstms(config: ModelConfig, embedded: keras.KerasTensor) -> list[keras.KerasTensor]:
    """Run ``config.lstm_layers`` LSTMs over the embedded question.

    Args:
        embedded: float (batch, max_length, dim), masked.

    Returns:
        The final hidden and cell state of every layer, each float (batch, lstm_units),
        in the order h1, c1, h2, c2, ... (the "deeper LSTM Q" question code).
    """
    states = []
    sequence = embedded
    for layer_index in range(config.lstm_layers):
        lstm = keras.layers.LSTM(config.lstm_units, return_sequences=True, return_state=True,
                                 name=f"question_lstm_{layer_index + 1}")
        sequence, hidden, cell = lstm(sequence)
        states += [hidden, cell]
    return states


def answer_head(num_answers: int, output_activation: str) -> keras.layers.Dense:
    """Dense(num_answers) kept in float32 under mixed precision; shared by every model."""
    return keras.layers.Dense(num_answers, activation=output_activation, dtype="float32", name="answer_scores")


def question_code(config: ModelConfig, embeddings: np.ndarray,
                  question_ids: keras.KerasTensor) -> keras.KerasTensor:
    """The deeper-LSTM question branch, shared by the image, the blind and the attention models.

    Args:
        question_ids: int32 (batch, max_length).

    Returns:
        float (batch, hidden_units): tanh of a projection of every layer's final hidden state (and cell
        state, with ``model.question_states=hidden-and-cell``).
    """
    embedding = word_embedding(config, embeddings)
    question_projection = keras.layers.Dense(config.hidden_units, activation="tanh", name="question_projection")

    states = stacked_lstms(config, embedding(question_ids))
    if config.question_states == "hidden":
        states = states[0::2]  # h1, h2, ...: the cell states are unbounded (see ModelConfig.question_states)
    all_states = keras.layers.Concatenate(name="question_states")(states) if len(states) > 1 else states[0]
    return question_projection(all_states)
