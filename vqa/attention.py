"""Attention over the parts of an image: question token ids + a grid or regions -> answer scores.

Two architectures, registered in ``vqa.registry`` as "san" and "multi-glimpse", each reading
either kind of spatial input (``vqa.visual``):

- a grid: ``image_grid`` float32 (batch, H, W, C), e.g. VGG-16 ``block5_pool`` 7 x 7 x 512;
  the H * W cells are the parts attended over;
- regions: ``region_features`` (batch, K, D), ``region_geometry`` (batch, K, 5) and
  ``region_mask`` (batch, K); each box is a part, its normalised x1, y1, x2, y2 and area
  stand beside its feature, and a masked softmax gives padded boxes no weight.

Output: the same float32 answer head as the global models, so the losses, training and
evaluation work unchanged. The attention weights are layers named ``attention``
(multi-glimpse, one map per glimpse) or ``attention_1`` ... ``attention_<hops>`` (san, one
per hop), each float32 (batch, maps, parts) summing to 1 over the parts. ``attention_model``
reads them by name from a built or loaded model, so a saved model shows its maps without
retraining. Only built-in Keras layers and the registered ``vqa.model_parts`` layers are
used: the models load with ``safe_mode=True``.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from vqa.config import ModelConfig
from vqa.errors import VQAError
from vqa.model_parts import MaskedSoftmax, answer_head, question_code
from vqa.names import IMAGE_GRID, QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
from vqa.visual import KINDS, VisualSpec

ATTENTION = "attention"
_ATTENTION_NAME = re.compile(rf"^{ATTENTION}(_(\d+))?$")


def _inputs(max_length: int, visual: VisualSpec) -> dict[str, keras.KerasTensor]:
    if visual.kind not in ("grid", "regions"):
        raise VQAError(f"the attention models read a grid or regions, not {visual.kind} inputs.")
    return {QUESTION_IDS: keras.Input(shape=(max_length,), dtype="int32", name=QUESTION_IDS),
            **KINDS[visual.kind].model_inputs(visual)}


def _parts(inputs: dict, visual: VisualSpec) -> tuple[keras.KerasTensor, keras.KerasTensor | None, int | None]:
    """The parts attended over, each scaled to unit L2 norm (float32), their mask and their count.

    Returns:
        A grid's cells (batch, H * W, C), None and H * W; or regions (batch, K, D + 5), each
        unit-norm feature followed by its box geometry, the mask (batch, K) and None (K varies).
    """
    if visual.kind == "grid":
        height, width, channels = visual.shape
        cells = keras.layers.Reshape((height * width, channels), name="grid_cells")(inputs[IMAGE_GRID])
        cells = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="cell_l2_norm")(cells)
        return cells, None, height * width
    features = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="region_l2_norm")(
        inputs[REGION_FEATURES])
    parts = keras.layers.Concatenate(axis=-1, dtype="float32", name="region_parts")(
        [features, inputs[REGION_GEOMETRY]])
    return parts, inputs[REGION_MASK], None


def _attention_weights(logits: keras.KerasTensor, mask: keras.KerasTensor | None, name: str) -> keras.KerasTensor:
    """(batch, parts, maps) logits -> (batch, maps, parts) weights summing to 1 over the (unmasked) parts."""
    maps_first = keras.layers.Permute((2, 1), name=f"{name}_logits_t")(logits)
    if mask is None:
        return keras.layers.Softmax(axis=-1, dtype="float32", name=name)(maps_first)
    return MaskedSoftmax(dtype="float32", name=name)([maps_first, mask])


def _beside_each_part(vector: keras.KerasTensor, count: int | None, name: str) -> keras.KerasTensor:
    """(batch, units) -> (batch, count, units) tiled, or (batch, 1, units) to broadcast over any count."""
    if count is not None:
        return keras.layers.RepeatVector(count, name=name)(vector)
    return keras.layers.Reshape((1, vector.shape[-1]), name=name)(vector)


def build_san(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
              max_length: int, output_activation: str) -> keras.Model:
    """Stacked Attention Networks (Yang et al., CVPR 2016), ``config.attention_hops`` hops.

    parts (batch, N, d_in) (``_parts``) -> v_I = Dense(hidden_units, tanh) (batch, N, d);
    question code u (batch, d = hidden_units). Per hop: h_A = tanh(W_I v_I + W_Q u)
    (batch, N, fusion_units); p = softmax over the N parts of Dense(1)(h_A) (layer
    ``attention_<hop>``, (batch, 1, N)); u <- sum_parts p v_I + u. Then dropout ->
    Dense(hidden_units, relu) -> dropout -> answer head. The paper's answer layer is linear in
    u; a weighted average of the parts codes a count only as a mixing ratio, which a linear
    layer decodes poorly (README "Recipes" has the figures).

    Returns:
        keras.Model: {"question_ids", the visual inputs} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, visual)
    image_projection = keras.layers.Dense(config.hidden_units, activation="tanh", name="image_projection")
    answer_dropout = keras.layers.Dropout(config.dropout, name="answer_dropout")
    classifier = keras.layers.Dense(config.hidden_units, activation="relu", name="classifier")
    classifier_dropout = keras.layers.Dropout(config.dropout, name="classifier_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    parts, mask, count = _parts(inputs, visual)
    image = image_projection(parts)
    question = question_code(config, embeddings, inputs[QUESTION_IDS])
    for hop in range(1, config.attention_hops + 1):
        image_part = keras.layers.Dense(config.fusion_units, use_bias=False, name=f"hop_{hop}_image")(image)
        question_part = keras.layers.Dense(config.fusion_units, name=f"hop_{hop}_question")(question)
        question_part = _beside_each_part(question_part, count, f"hop_{hop}_tile")
        hidden = keras.layers.Add(name=f"hop_{hop}_sum")([image_part, question_part])
        hidden = keras.layers.Activation("tanh", name=f"hop_{hop}_tanh")(hidden)
        hidden = keras.layers.Dropout(config.dropout, name=f"hop_{hop}_dropout")(hidden)
        logits = keras.layers.Dense(1, name=f"hop_{hop}_logits")(hidden)
        weights = _attention_weights(logits, mask, f"{ATTENTION}_{hop}")
        attended = keras.layers.Dot(axes=(2, 1), name=f"hop_{hop}_attended")([weights, image])
        attended = keras.layers.Flatten(name=f"hop_{hop}_flat")(attended)
        question = keras.layers.Add(name=f"hop_{hop}_query")([attended, question])
    outputs = head(classifier_dropout(classifier(answer_dropout(question))))
    return keras.Model(inputs, outputs, name="san")


def build_multi_glimpse(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
                        max_length: int, output_activation: str) -> keras.Model:
    """"Show, Ask, Attend, and Answer" (Kazemi & Elqursh 2017), ``config.glimpses`` glimpses.

    parts (batch, N, d_in) (``_parts``); question code q (batch, hidden_units) beside each
    part -> dropout -> Dense(fusion_units, relu) (the paper's 1x1 conv, 512) -> Dense(glimpses)
    -> softmax over the N parts per glimpse (layer ``attention``, (batch, glimpses, N)); each
    glimpse's weighted sum of parts (batch, glimpses * d_in) concatenated with q -> dropout ->
    Dense(hidden_units, relu) (the paper's 1024) -> dropout -> answer head. On regions, whose
    count varies, the first dense layer is applied to the part and to q separately and summed
    (the same function as on their concatenation), since q cannot be tiled to an unknown count.

    Returns:
        keras.Model: {"question_ids", the visual inputs} -> (batch, num_answers).
    """
    # Layers.
    inputs = _inputs(max_length, visual)
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
    parts, mask, count = _parts(inputs, visual)
    question = question_code(config, embeddings, inputs[QUESTION_IDS])
    if count is not None:
        tiled = _beside_each_part(question, count, "question_tile")
        joint = attention_dropout(keras.layers.Concatenate(axis=-1, name="cell_question")([parts, tiled]))
        hidden = attention_hidden(joint)
    else:
        part_code = keras.layers.Dense(config.fusion_units, name="attention_part")(attention_dropout(parts))
        question_code_ = keras.layers.Dense(config.fusion_units, use_bias=False, name="attention_question")(
            keras.layers.Dropout(config.dropout, name="question_dropout")(question))
        hidden = keras.layers.Add(name="part_question")(
            [part_code, _beside_each_part(question_code_, None, "question_tile")])
        hidden = keras.layers.Activation("relu", name="attention_relu")(hidden)
    weights = _attention_weights(attention_logits(hidden), mask, ATTENTION)
    seen = glimpses_flat(glimpse([weights, parts]))
    outputs = head(mlp_dropout(mlp(joint_dropout(glimpses_question([seen, question])))))
    return keras.Model(inputs, outputs, name="multi_glimpse")


def attention_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's attention softmax layers, in hop order; empty for a model without attention."""
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
        keras.Model: the model's inputs -> float32 (batch, G, H, W) over a grid, or (batch, G, K)
        over regions; G the glimpses (multi-glimpse) or hops (san); each map sums to 1.

    Raises:
        VQAError: when ``model`` has no attention layers (a global model).
    """
    layers = attention_layers(model)
    by_name = {tensor.name: tensor for tensor in model.inputs}
    if not layers or not (IMAGE_GRID in by_name or REGION_FEATURES in by_name):
        raise VQAError(f"model {model.name!r} has no attention over the parts of an image; "
                       "train an attention model (model.name=san or multi-glimpse).")
    maps = [layer.output for layer in layers]
    # float32 layers: under mixed precision the maps stay as the float32 softmax made them.
    weights = maps[0] if len(maps) == 1 else keras.layers.Concatenate(axis=1, dtype="float32",
                                                                      name="attention_maps")(maps)
    if IMAGE_GRID in by_name:
        height, width, _ = by_name[IMAGE_GRID].shape[1:]
        weights = keras.layers.Reshape((weights.shape[1], height, width), dtype="float32",
                                       name="attention_grid")(weights)
    return keras.Model(model.input, weights, name=f"{model.name}_attention")
