"""The global VQA architectures: question token ids + one vector per image -> answer scores.

I/O contract (what train, evaluate and predict rely on):

- inputs ``question_ids``: int32 (batch, max_length), post-padded with 0;
  ``image_features``: float32 (batch, D) (float16 stored features are accepted and
  converted by Keras at the input); ``question-only`` has no image input.
- output (batch, num_answers): sigmoid for the soft-score loss, softmax for the
  single-answer loss, always float32 (the answer head keeps float32 under mixed
  precision so the loss and the argmax see full-precision scores).

The vector may be fc7, a grid's cell means or a region file's box means
(``vqa.visual.vector``). Models use keras and keras.ops only, and no Lambda layers, so a
saved model loads with ``safe_mode=True`` on any Keras backend. They are registered,
with the input kind they read, in ``vqa.registry``.
"""

from __future__ import annotations

import keras
import numpy as np

from vqa.config import ModelConfig
from vqa.model_parts import MaskedSum, answer_head, question_code, word_embedding
from vqa.names import IMAGE_FEATURES, QUESTION_IDS
from vqa.visual import KINDS, VisualSpec


def _inputs(max_length: int, visual: VisualSpec | None) -> dict[str, keras.KerasTensor]:
    """The named model inputs; no image input when ``visual`` is None."""
    inputs = {QUESTION_IDS: keras.Input(shape=(max_length,), dtype="int32", name=QUESTION_IDS)}
    if visual is not None:
        inputs.update(KINDS["vector"].model_inputs(visual))
    return inputs


def build_deeper_lstm_norm_i(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
                             max_length: int, output_activation: str) -> keras.Model:
    """"deeper LSTM Q + norm I" (Antol et al. 2015; Goyal et al. 2017's VQA v2 baseline).

    question_ids (batch, L) -> embedding -> lstm_layers x LSTM(lstm_units) -> concat of
    every layer's final h (batch, lstm_layers * lstm_units; with model.question_states=
    hidden-and-cell also its c, as the paper's code) -> Dense(hidden_units, tanh);
    image_features (batch, D) -> L2 normalisation -> Dense(hidden_units) -> standardised
    (BatchNormalization, momentum 0.9, offset initialised to 1) -> tanh; element-wise product ->
    dropout -> Dense(fusion_units, tanh) -> dropout -> answer head.

    The paper's projection is Dense(tanh) of the unit-norm image. A vector whose parts share
    a large common component barely varies at unit norm, and neither does its projection: on
    the learning bench's mean-pooled grids (4x; reference 68.5) the model stayed at 59-61 for
    20 epochs, and with the projection standardised before its tanh it reached 80.9.
    Standardising the image's own features instead (as ``build_seed_concat`` does) magnifies
    the low-variance ones, noise included: a 16-image test set then fell to the blind level.
    Standardised with the usual offset of 0, the code is centred: where the images differ mostly
    by noise, its tanh flips the question code's signs at random in the product, and on such
    fc7-like data (blind 48.8) the model fell to 17; starting at tanh(1 + z), positive, the
    product passes the question on while the image's part is learned (77.1 by epoch 6).

    Returns:
        keras.Model: {"question_ids", "image_features"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, visual)
    image_norm = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="image_l2_norm")
    image_projection = keras.layers.Dense(config.hidden_units, name="image_projection")
    # Offset 1: the code starts at tanh(1 + noise), positive, so the product passes the question on.
    projection_standardised = keras.layers.BatchNormalization(
        momentum=0.9, beta_initializer=keras.initializers.Constant(1.0), dtype="float32",
        name="image_projection_standardised")
    image_tanh = keras.layers.Activation("tanh", name="image_code")
    fusion = keras.layers.Multiply(name="fusion_product")
    fusion_dropout = keras.layers.Dropout(config.dropout, name="fusion_dropout")
    fusion_hidden = keras.layers.Dense(config.fusion_units, activation="tanh", name="fusion_hidden")
    hidden_dropout = keras.layers.Dropout(config.dropout, name="hidden_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = question_code(config, embeddings, inputs[QUESTION_IDS])
    image = image_tanh(projection_standardised(image_projection(image_norm(inputs[IMAGE_FEATURES]))))
    joint = fusion_dropout(fusion([question, image]))
    outputs = head(hidden_dropout(fusion_hidden(joint)))
    return keras.Model(inputs, outputs, name="deeper_lstm_norm_i")


def build_question_only(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
                        max_length: int, output_activation: str) -> keras.Model:
    """The blind baseline ("deeper LSTM Q"): the same question branch, no image.

    question_ids (batch, L) -> question code (batch, hidden_units) -> dropout ->
    Dense(fusion_units, tanh) -> dropout -> answer head. ``visual`` is ignored.

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
    question = question_code(config, embeddings, inputs[QUESTION_IDS])
    outputs = head(hidden_dropout(fusion_hidden(question_dropout(question))))
    return keras.Model(inputs, outputs, name="question_only")


def _mlp(config: ModelConfig, joint: keras.KerasTensor, depth: int = 3) -> keras.KerasTensor:
    """``depth`` x (Dense(hidden_units, tanh) + dropout), as in the original blog post."""
    for index in range(depth):
        joint = keras.layers.Dense(config.hidden_units, activation="tanh", name=f"mlp_{index + 1}")(joint)
        joint = keras.layers.Dropout(config.dropout, name=f"mlp_dropout_{index + 1}")(joint)
    return joint


def build_seed_concat(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
                      max_length: int, output_activation: str) -> keras.Model:
    """The original blog post's LSTM model: question LSTM output concatenated with the image.

    question_ids (batch, L) -> embedding -> lstm_layers x LSTM(lstm_units), last hidden
    state (batch, lstm_units); concatenated with image_features (batch, D), both standardised
    per feature (BatchNormalization, momentum 0.9 so that its inference statistics settle
    within a small run's first epoch) -> 3 x (Dense(hidden_units, tanh) + dropout) -> answer
    head.

    The post concatenated raw fc7. fc7's features share a large positive part from image to
    image: raw they saturate the tanh layers, and at unit L2 norm they barely vary. On the
    learning bench's fc7-like vectors (1x; reference 94.9) bow-mlp reached 14.9 raw, 44.5
    L2-normalised (the blind level) and 98.0 standardised. Here the 4096 standardised image
    features then drowned the 512 small LSTM outputs (no yes/no question answered, 60.0) until
    those were standardised too (95.0).

    Returns:
        keras.Model: {"question_ids", "image_features"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, visual)
    embedding = word_embedding(config, embeddings)
    lstms = [keras.layers.LSTM(config.lstm_units, return_sequences=index < config.lstm_layers - 1,
                               name=f"question_lstm_{index + 1}") for index in range(config.lstm_layers)]
    question_norm = keras.layers.BatchNormalization(momentum=0.9, dtype="float32", name="question_standardised")
    image_norm = keras.layers.BatchNormalization(momentum=0.9, dtype="float32", name="image_standardised")
    concat = keras.layers.Concatenate(name="question_image")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = embedding(inputs[QUESTION_IDS])
    for lstm in lstms:
        question = lstm(question)
    joint = concat([question_norm(question), image_norm(inputs[IMAGE_FEATURES])])
    outputs = head(_mlp(config, joint))
    return keras.Model(inputs, outputs, name="seed_concat")


def build_bow_mlp(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
                  max_length: int, output_activation: str) -> keras.Model:
    """Bag of words + image, MLP (the blog post's first model).

    question_ids (batch, L) -> embedding -> masked sum (batch, dim); concatenated with
    image_features (batch, D) standardised per feature (see ``build_seed_concat``) ->
    3 x (Dense(hidden_units, tanh) + dropout) -> answer head.

    Returns:
        keras.Model: {"question_ids", "image_features"} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, visual)
    embedding = word_embedding(config, embeddings)
    bag_of_words = MaskedSum(name="bag_of_words")
    image_norm = keras.layers.BatchNormalization(momentum=0.9, dtype="float32", name="image_standardised")
    concat = keras.layers.Concatenate(name="question_image")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = bag_of_words(embedding(inputs[QUESTION_IDS]))
    joint = concat([question, image_norm(inputs[IMAGE_FEATURES])])
    outputs = head(_mlp(config, joint))
    return keras.Model(inputs, outputs, name="bow_mlp")
