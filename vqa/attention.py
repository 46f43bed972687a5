"""Attention over the image grid: question token ids + grid features -> answer scores.

Two architectures, built by ``vqa.model.build_model`` for ``model.name`` "san" and
"multi-glimpse":

- inputs ``question_ids``: int32 (batch, max_length), post-padded with 0;
  ``image_grid``: float32 (batch, H, W, C), e.g. VGG-16 ``block5_pool`` 7 x 7 x 512 or
  14 x 14 x 512 (float16 stored grids are converted by Keras at the input).
- output (batch, num_answers): the same float32 answer head as the global models, so the
  losses, training and evaluation work unchanged.

The attention weights are softmax layers named ``attention`` (multi-glimpse, one map per
glimpse) or ``attention_1`` ... ``attention_<hops>`` (san, one per hop), each float32
(batch, maps, H * W) and summing to 1 over the cells. ``attention_model`` reads them by
name from a built or loaded model, so a saved model shows its maps without retraining.
Only built-in Keras layers are used: the models load with ``safe_mode=True`` and need no
import of this module to load.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from vqa.config import ModelConfig
from vqa.errors import VQAError
from vqa.model import answer_head, question_code

GRID_INPUT = "image_grid"
ATTENTION = "attention"
_ATTENTION_NAME = re.compile(rf"^{ATTENTION}(_(\d+))?$")


def _inputs(max_length: int, grid_shape: tuple[int, int, int]) -> dict[str, keras.KerasTensor]:
    return {
        "question_ids": keras.Input(shape=(max_length,), dtype="int32", name="question_ids"),
        GRID_INPUT: keras.Input(shape=tuple(grid_shape), dtype="float32", name=GRID_INPUT),
    }


def _cells(grid: keras.KerasTensor, grid_shape: tuple[int, int, int]) -> keras.KerasTensor:
    """(batch, H, W, C) -> (batch, H * W, C), each cell scaled to unit L2 norm (float32)."""
    height, width, channels = grid_shape
    cells = keras.layers.Reshape((height * width, channels), name="grid_cells")(grid)
    return keras.layers.UnitNormalization(axis=-1, dtype="float32", name="cell_l2_norm")(cells)


def _softmax_over_cells(logits: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """(batch, cells, maps) logits -> (batch, maps, cells) weights summing to 1 over the cells."""
    maps_first = keras.layers.Permute((2, 1), name=f"{name}_logits_t")(logits)
    return keras.layers.Softmax(axis=-1, dtype="float32", name=name)(maps_first)


def build_san(config: ModelConfig, embeddings: np.ndarray, num_answers: int, grid_shape: tuple[int, int, int],
              max_length: int, output_activation: str) -> keras.Model:
    """Stacked Attention Networks (Yang et al., CVPR 2016), ``config.attention_hops`` hops.

    image_grid (batch, H, W, C) -> cells (batch, N = H * W, C), L2-normalised ->
    v_I = Dense(hidden_units, tanh) (batch, N, d); question code u (batch, d = hidden_units).
    Per hop: h_A = tanh(W_I v_I + W_Q u) (batch, N, fusion_units); p = softmax over the N
    cells of Dense(1)(h_A) (layer ``attention_<hop>``, (batch, 1, N));
    u <- sum_cells p v_I + u. Then dropout -> answer head.

    Returns:
        keras.Model: {"question_ids", "image_grid"} -> (batch, num_answers).
    """
    # Layers.
    height, width, _ = grid_shape
    cells_count = height * width
    inputs = _inputs(max_length, grid_shape)
    image_projection = keras.layers.Dense(config.hidden_units, activation="tanh", name="image_projection")
    answer_dropout = keras.layers.Dropout(config.dropout, name="answer_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    image = image_projection(_cells(inputs[GRID_INPUT], grid_shape))
    question = question_code(config, embeddings, inputs["question_ids"])
    for hop in range(1, config.attention_hops + 1):
        image_part = keras.layers.Dense(config.fusion_units, use_bias=False, name=f"hop_{hop}_image")(image)
        question_part = keras.layers.Dense(config.fusion_units, name=f"hop_{hop}_question")(question)
        question_part = keras.layers.RepeatVector(cells_count, name=f"hop_{hop}_tile")(question_part)
        hidden = keras.layers.Add(name=f"hop_{hop}_sum")([image_part, question_part])
        hidden = keras.layers.Activation("tanh", name=f"hop_{hop}_tanh")(hidden)
        hidden = keras.layers.Dropout(config.dropout, name=f"hop_{hop}_dropout")(hidden)
        logits = keras.layers.Dense(1, name=f"hop_{hop}_logits")(hidden)
        weights = _softmax_over_cells(logits, f"{ATTENTION}_{hop}")
        attended = keras.layers.Dot(axes=(2, 1), name=f"hop_{hop}_attended")([weights, image])
        attended = keras.layers.Flatten(name=f"hop_{hop}_flat")(attended)
        question = keras.layers.Add(name=f"hop_{hop}_query")([attended, question])
    outputs = head(answer_dropout(question))
    return keras.Model(inputs, outputs, name="san")


def build_multi_glimpse(config: ModelConfig, embeddings: np.ndarray, num_answers: int,
                        grid_shape: tuple[int, int, int], max_length: int, output_activation: str) -> keras.Model:
    """"Show, Ask, Attend, and Answer" (Kazemi & Elqursh 2017), ``config.glimpses`` glimpses.

    image_grid (batch, H, W, C) -> cells (batch, N = H * W, C), L2-normalised; question code
    q (batch, hidden_units) tiled over the cells and concatenated -> dropout ->
    Dense(fusion_units, relu) (the paper's 1x1 conv, 512) -> Dense(glimpses) -> softmax over
    the N cells per glimpse (layer ``attention``, (batch, glimpses, N)); each glimpse's
    weighted sum of cells (batch, glimpses * C) concatenated with q -> dropout ->
    Dense(hidden_units, relu) (the paper's 1024) -> dropout -> answer head.

    Returns:
        keras.Model: {"question_ids", "image_grid"} -> (batch, num_answers).
    """
    # Layers.
    height, width, _ = grid_shape
    inputs = _inputs(max_length, grid_shape)
    tile = keras.layers.RepeatVector(height * width, name="question_tile")
    cell_question = keras.layers.Concatenate(axis=-1, name="cell_question")
    attention_dropout = keras.layers.Dropout(config.dropout, name="attention_dropout")
    attention_hidden = keras.layers.Dense(config.fusion_units, activation="relu", name="attention_hidden")
    attention_logits = keras.layers.Dense(config.glimpses, name="attention_logits")
    glimpse = keras.layers.Dot(axes=(2, 1), name="glimpses")
    glimpses_flat = keras.layers.Flatten(name="glimpses_flat")
    glimpses_question = keras.layers.Concatenate(name="glimpses_question")
    joint_dropout = keras.layers.Dropout(config.dropout, name="joint_dropout")
    mlp = keras.layers.Dense(config.hidden_units, activation="relu", name="mlp")
    mlp_dropout = keras.layers.Dropout(config.dropout, name="mlp_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    cells = _cells(inputs[GRID_INPUT], grid_shape)
    question = question_code(config, embeddings, inputs["question_ids"])
    joint = attention_dropout(cell_question([cells, tile(question)]))
    weights = _softmax_over_cells(attention_logits(attention_hidden(joint)), ATTENTION)
    seen = glimpses_flat(glimpse([weights, cells]))
    outputs = head(mlp_dropout(mlp(joint_dropout(glimpses_question([seen, question])))))
    return keras.Model(inputs, outputs, name="multi_glimpse")


def attention_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's attention softmax layers, in hop order; empty for a global model."""
    found = []
    for layer in model.layers:
        match = _ATTENTION_NAME.match(layer.name)
        if match:
            found.append((int(match.group(2) or 0), layer))
    return [layer for _, layer in sorted(found, key=lambda item: item[0])]


def attention_model(model: keras.Model) -> keras.Model:
    """A sub-model sharing ``model``'s weights: its inputs -> the attention weights.

    Works on a model just built or loaded from a .keras file (layers are found by name).

    Returns:
        keras.Model: {"question_ids", "image_grid"} -> float32 (batch, G, H, W), G the
        glimpses (multi-glimpse) or hops (san); each map sums to 1 over H x W.

    Raises:
        VQAError: when ``model`` has no attention layers (a global model).
    """
    layers = attention_layers(model)
    grid = {tensor.name: tensor for tensor in model.inputs}.get(GRID_INPUT)
    if not layers or grid is None:
        raise VQAError(f"model {model.name!r} has no attention over an image grid; "
                       "train an attention model (model.name=san or multi-glimpse).")
    height, width, _ = grid.shape[1:]
    maps = [layer.output for layer in layers]
    # float32 layers: under mixed precision the maps stay as the float32 softmax made them.
    if len(maps) > 1:
        maps = [keras.layers.Concatenate(axis=1, dtype="float32", name="attention_maps")(maps)]
    weights = keras.layers.Reshape((maps[0].shape[1], height, width), dtype="float32", name="attention_grid")(maps[0])
    return keras.Model(model.input, weights, name=f"{model.name}_attention")
