"""The VQA architectures: question token ids (+ image features) -> answer scores.

Every model follows the I/O contract that train, evaluate and predict rely on:

- inputs ``question_ids``: int32 (batch, max_length), post-padded with 0;
  ``image_features``: float32 (batch, feature_dim) (float16 stored features are
  accepted and converted by Keras at the input); ``question-only`` has no image input;
  the attention models (``GRID_MODELS``, in vqa.attention) read ``image_grid``: float32
  (batch, H, W, C) instead of ``image_features``.
- output (batch, num_answers): sigmoid for the soft-score loss, softmax for the
  single-answer loss, always float32 (the answer head keeps float32 under mixed
  precision so the loss and the argmax see full-precision scores).

Models use keras and keras.ops only (no tf.*), and no Lambda layers, so a model saved
as a .keras file loads with ``safe_mode=True`` on any Keras backend. The one custom
layer, ``MaskedSum``, is registered; import this module before loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

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


def _inputs(max_length: int, feature_dim: int | None) -> dict[str, keras.KerasTensor]:
    """The named model inputs; no image input when ``feature_dim`` is None."""
    inputs = {"question_ids": keras.Input(shape=(max_length,), dtype="int32", name="question_ids")}
    if feature_dim is not None:
        inputs["image_features"] = keras.Input(shape=(feature_dim,), dtype="float32", name="image_features")
    return inputs


def _word_embedding(config: ModelConfig, embeddings: np.ndarray) -> keras.layers.Embedding:
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


def _stacked_lstms(config: ModelConfig, embedded: keras.KerasTensor) -> list[keras.KerasTensor]:
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
        float (batch, hidden_units): tanh of a projection of all LSTM states.
    """
    embedding = _word_embedding(config, embeddings)
    question_projection = keras.layers.Dense(config.hidden_units, activation="tanh", name="question_projection")

    states = _stacked_lstms(config, embedding(question_ids))
    all_states = keras.layers.Concatenate(name="question_states")(states) if len(states) > 1 else states[0]
    return question_projection(all_states)


def build_deeper_lstm_norm_i(config: ModelConfig, embeddings: np.ndarray, num_answers: int, feature_dim: int,
                             max_length: int, output_activation: str) -> keras.Model:
    """"deeper LSTM Q + norm I" (Antol et al. 2015; Goyal et al. 2017's VQA v2 baseline).

    question_ids (batch, L) -> embedding -> lstm_layers x LSTM(lstm_units) -> concat of
    every layer's (h, c) (batch, 2 * lstm_layers * lstm_units) -> Dense(hidden_units, tanh);
    image_features (batch, D) -> L2 normalisation -> Dense(hidden_units, tanh);
    element-wise product -> dropout -> Dense(fusion_units, tanh) -> dropout -> answer head.

    Returns:
        keras.Model: {"question_ids", "image_features"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, feature_dim)
    image_norm = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="image_l2_norm")
    image_projection = keras.layers.Dense(config.hidden_units, activation="tanh", name="image_projection")
    fusion = keras.layers.Multiply(name="fusion_product")
    fusion_dropout = keras.layers.Dropout(config.dropout, name="fusion_dropout")
    fusion_hidden = keras.layers.Dense(config.fusion_units, activation="tanh", name="fusion_hidden")
    hidden_dropout = keras.layers.Dropout(config.dropout, name="hidden_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = question_code(config, embeddings, inputs["question_ids"])
    image = image_projection(image_norm(inputs["image_features"]))
    joint = fusion_dropout(fusion([question, image]))
    outputs = head(hidden_dropout(fusion_hidden(joint)))
    return keras.Model(inputs, outputs, name="deeper_lstm_norm_i")


def build_question_only(config: ModelConfig, embeddings: np.ndarray, num_answers: int, feature_dim: int,
                        max_length: int, output_activation: str) -> keras.Model:
    """The blind baseline ("deeper LSTM Q"): the same question branch, no image.

    question_ids (batch, L) -> question code (batch, hidden_units) -> dropout ->
    Dense(fusion_units, tanh) -> dropout -> answer head. ``feature_dim`` is ignored.

    Returns:
        keras.Model: {"question_ids"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, None)
    question_dropout = keras.layers.Dropout(config.dropout, name="question_dropout")
    fusion_hidden = keras.layers.Dense(config.fusion_units, activation="tanh", name="fusion_hidden")
    hidden_dropout = keras.layers.Dropout(config.dropout, name="hidden_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = question_code(config, embeddings, inputs["question_ids"])
    outputs = head(hidden_dropout(fusion_hidden(question_dropout(question))))
    return keras.Model(inputs, outputs, name="question_only")


def _mlp(config: ModelConfig, joint: keras.KerasTensor, depth: int = 3) -> keras.KerasTensor:
    """``depth`` x (Dense(hidden_units, tanh) + dropout), as in the original blog post."""
    for index in range(depth):
        joint = keras.layers.Dense(config.hidden_units, activation="tanh", name=f"mlp_{index + 1}")(joint)
        joint = keras.layers.Dropout(config.dropout, name=f"mlp_dropout_{index + 1}")(joint)
    return joint


def build_seed_concat(config: ModelConfig, embeddings: np.ndarray, num_answers: int, feature_dim: int,
                      max_length: int, output_activation: str) -> keras.Model:
    """The original blog post's LSTM model: question LSTM output concatenated with the image.

    question_ids (batch, L) -> embedding -> lstm_layers x LSTM(lstm_units), last hidden
    state (batch, lstm_units); concatenated with image_features (batch, D) ->
    3 x (Dense(hidden_units, tanh) + dropout) -> answer head.

    Returns:
        keras.Model: {"question_ids", "image_features"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, feature_dim)
    embedding = _word_embedding(config, embeddings)
    lstms = [keras.layers.LSTM(config.lstm_units, return_sequences=index < config.lstm_layers - 1,
                               name=f"question_lstm_{index + 1}") for index in range(config.lstm_layers)]
    concat = keras.layers.Concatenate(name="question_image")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = embedding(inputs["question_ids"])
    for lstm in lstms:
        question = lstm(question)
    joint = concat([question, inputs["image_features"]])
    outputs = head(_mlp(config, joint))
    return keras.Model(inputs, outputs, name="seed_concat")


def build_bow_mlp(config: ModelConfig, embeddings: np.ndarray, num_answers: int, feature_dim: int,
                  max_length: int, output_activation: str) -> keras.Model:
    """Bag of words + image, MLP (the blog post's first model).

    question_ids (batch, L) -> embedding -> masked sum (batch, dim); concatenated with
    image_features (batch, D) -> 3 x (Dense(hidden_units, tanh) + dropout) -> answer head.

    Returns:
        keras.Model: {"question_ids", "image_features"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, feature_dim)
    embedding = _word_embedding(config, embeddings)
    bag_of_words = MaskedSum(name="bag_of_words")
    concat = keras.layers.Concatenate(name="question_image")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = bag_of_words(embedding(inputs["question_ids"]))
    joint = concat([question, inputs["image_features"]])
    outputs = head(_mlp(config, joint))
    return keras.Model(inputs, outputs, name="bow_mlp")


Builder = Callable[..., keras.Model]

MODELS: dict[str, Builder] = {
    "deeper-lstm-norm-i": build_deeper_lstm_norm_i,
    "question-only": build_question_only,
    "seed-concat": build_seed_concat,
    "bow-mlp": build_bow_mlp,
}

# The attention models of vqa.attention: they read ``image_grid`` (batch, H, W, C) instead of
# ``image_features``. Looked up on use, since vqa.attention builds on this module's question branch.
GRID_MODELS: tuple[str, ...] = ("san", "multi-glimpse")


def _grid_builder(name: str) -> Builder:
    from vqa import attention

    return {"san": attention.build_san, "multi-glimpse": attention.build_multi_glimpse}[name]


def build_model(config: ModelConfig, embeddings: np.ndarray, num_answers: int, feature_dim: int | None,
                max_length: int, output_activation: str,
                grid_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """Build the architecture named by ``config.name``.

    Args:
        config: the model section of the run configuration.
        embeddings: float32 (vocabulary, dim) word vectors aligned with the question vocabulary.
        num_answers: K, the size of the answer vocabulary.
        feature_dim: D, the image feature size of the global models (ignored by the grid models).
        max_length: L, the padded question length.
        output_activation: "sigmoid" (soft-score loss) or "softmax".
        grid_shape: (H, W, C) of the grid features, needed by the ``GRID_MODELS``.

    Returns:
        An uncompiled keras.Model following the module's I/O contract.

    Raises:
        VQAError: for an unknown model name, impossible widths or a grid model without a grid.
    """
    if config.name not in MODELS and config.name not in GRID_MODELS:
        raise VQAError(f"unknown model {config.name!r} (model.name); "
                       f"choose one of {', '.join([*MODELS, *GRID_MODELS])}.")
    if min(config.lstm_units, config.lstm_layers, config.hidden_units, config.fusion_units,
           config.glimpses, config.attention_hops) < 1:
        raise VQAError("model.lstm_units, lstm_layers, hidden_units, fusion_units, glimpses and attention_hops "
                       "must all be at least 1.")
    if not 0.0 <= config.dropout < 1.0:
        raise VQAError(f"model.dropout must be in [0, 1), got {config.dropout}.")
    if output_activation not in ("sigmoid", "softmax"):
        raise VQAError(f"output activation must be sigmoid or softmax, got {output_activation!r}.")
    if config.name in GRID_MODELS:
        if grid_shape is None:
            raise VQAError(f"model.name={config.name} needs grid features: preprocess with grid features.")
        if len(grid_shape) != 3 or min(grid_shape) < 1:
            raise VQAError(f"grid features must be (height, width, channels) of at least 1, got {grid_shape}.")
        grid_shape = tuple(int(size) for size in grid_shape)
        return _grid_builder(config.name)(config, embeddings, num_answers, grid_shape, max_length,
                                          output_activation)
    return MODELS[config.name](config, embeddings, num_answers, feature_dim, max_length, output_activation)


def load_model(path: str | Path) -> keras.Model:
    """Load a trained model (a .keras file) for inference (safe mode, not compiled).

    Raises:
        VQAError: when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"model file {path} does not exist: train a run first with `vqa train`.")
    return keras.saving.load_model(path, compile=False, safe_mode=True)
