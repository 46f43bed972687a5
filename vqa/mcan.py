"""Deep Modular Co-Attention Networks ("mcan"): question token ids + region boxes -> answer scores.

Yu et al., CVPR 2019, in the encoder-decoder layout of MILVLG/openvqa: a self-attention
encoder over the words, a decoder whose layers let the boxes attend to each other and then
to the encoded words, an attended summary ("AttFlat") of each side, their sum -> answers.

Masks are explicit, as in the paper's code: token id 0 and ``region_mask`` 0 mark padding;
every attention masks padded keys only (``AttentionMask``) and each summary's softmax gives
padded positions no weight (``MaskedSoftmax``), so padding, whatever it holds, changes
nothing. The image summary's weights are the float32 layer ``attention`` (batch, glimpses, K)
that ``vqa.attention.attention_model`` reads. Only built-in Keras layers and the registered
``vqa.model_parts`` layers are used: the model loads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np

from vqa.box_relations import BoxPairs, BoxPlace, RelationAttention, Sinusoids
from vqa.config import ModelConfig
from vqa.errors import VQAError
from vqa.model_parts import AttentionMask, MaskedSoftmax, PaddingMask, answer_head, word_embedding
from vqa.names import QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
from vqa.visual import KINDS, VisualSpec

ATTENTION = "attention"  # the name vqa.attention.attention_model looks for
_NORM_EPSILON = 1e-6  # openvqa's LayerNorm
RELATION_UNITS = 64  # model.box_relations=bias: width of the MLP on each pair of boxes' geometry


def _add_and_norm(config: ModelConfig, sequence: keras.KerasTensor, update: keras.KerasTensor,
                  name: str) -> keras.KerasTensor:
    """LayerNorm(sequence + dropout(update)): the post-norm residual around every block."""
    update = keras.layers.Dropout(config.dropout, name=f"{name}_dropout")(update)
    summed = keras.layers.Add(name=f"{name}_residual")([sequence, update])
    return keras.layers.LayerNormalization(epsilon=_NORM_EPSILON, name=f"{name}_norm")(summed)


def _attention(config: ModelConfig, queries: keras.KerasTensor, keys: keras.KerasTensor,
               mask: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Multi-head attention of ``queries`` over ``keys`` (bool ``mask`` (batch, Tq, Tk)), then add & norm."""
    attention = keras.layers.MultiHeadAttention(config.heads, config.hidden_units // config.heads,
                                                dropout=config.dropout, name=f"{name}_heads")
    return _add_and_norm(config, queries, attention(queries, keys, attention_mask=mask), name)


def _relation_attention(config: ModelConfig, boxes: keras.KerasTensor, pairs: keras.KerasTensor,
                        mask: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """The boxes' self-attention with a learned bias per head from each pair's geometry, then add & norm.

    ``pairs``: the shared MLP's code of ``BoxPairs`` (batch, K, K, units); this layer's own
    Dense maps it to one bias per head.
    """
    bias = keras.layers.Dense(config.heads, name=f"{name}_geometry_bias")(pairs)
    bias = keras.layers.Permute((3, 1, 2), name=f"{name}_geometry_bias_heads")(bias)  # (batch, heads, K, K)
    attention = RelationAttention(config.heads, config.hidden_units // config.heads, config.hidden_units,
                                  dropout=config.dropout, name=f"{name}_heads")
    return _add_and_norm(config, boxes, attention([boxes, bias, mask]), name)


def _feed_forward(config: ModelConfig, sequence: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Dense(ff_units, relu) -> dropout -> Dense(hidden_units), then add & norm."""
    hidden = keras.layers.Dense(config.ff_units, activation="relu", name=f"{name}_hidden")(sequence)
    hidden = keras.layers.Dropout(config.dropout, name=f"{name}_hidden_dropout")(hidden)
    update = keras.layers.Dense(config.hidden_units, name=f"{name}_output")(hidden)
    return _add_and_norm(config, sequence, update, name)


def _summary(config: ModelConfig, sequence: keras.KerasTensor, mask: keras.KerasTensor, name: str,
             weights_name: str) -> keras.KerasTensor:
    """AttFlat: ``config.glimpses`` softmax maps over the real positions, their weighted sums -> Dense(flat_units).

    Args:
        sequence: float (batch, T, hidden_units).
        mask: float (batch, T), 1 = real.
        weights_name: the softmax layer's name; its output is float32 (batch, glimpses, T).

    Returns:
        float (batch, flat_units).
    """
    hidden = keras.layers.Dense(config.hidden_units, activation="relu", name=f"{name}_mlp")(sequence)
    hidden = keras.layers.Dropout(config.dropout, name=f"{name}_mlp_dropout")(hidden)
    logits = keras.layers.Dense(config.glimpses, name=f"{name}_logits")(hidden)
    logits = keras.layers.Permute((2, 1), name=f"{name}_logits_t")(logits)
    weights = MaskedSoftmax(dtype="float32", name=weights_name)([logits, mask])
    glimpses = keras.layers.Dot(axes=(2, 1), name=f"{name}_glimpses")([weights, sequence])
    glimpses = keras.layers.Flatten(name=f"{name}_glimpses_flat")(glimpses)
    return keras.layers.Dense(config.flat_units, name=f"{name}_merge")(glimpses)


def build_mcan(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
               max_length: int, output_activation: str) -> keras.Model:
    """MCAN encoder-decoder over the words and the region boxes.

    Words: embedding -> LSTM(hidden_units) (batch, L, d) -> ``config.layers`` encoder layers
    (self-attention, feed-forward). Boxes: Dense(d)(feature) + Dense(d)(geometry) (batch, K, d)
    -> ``config.layers`` decoder layers (self-attention over the boxes, attention to the encoded
    words, feed-forward). Each block: ``config.heads`` heads or the feed-forward (ff_units),
    dropout, residual, LayerNorm. AttFlat of each side (the image side's weights: layer
    ``attention``, float32 (batch, glimpses, K)) -> sum -> LayerNorm -> answer head.

    Returns:
        keras.Model: {"question_ids" int32 (batch, L), "region_features" (batch, K, D),
        "region_geometry" (batch, K, 5), "region_mask" (batch, K)} -> float32 (batch, num_answers).

    Raises:
        VQAError: for regions not given, or hidden_units not divisible by heads.
    """
    if visual.kind != "regions":
        raise VQAError(f"model.name=mcan reads regions, not {visual.kind} inputs.")
    if config.hidden_units % config.heads:
        raise VQAError(f"model.hidden_units={config.hidden_units} must be divisible by model.heads={config.heads} "
                       "for model.name=mcan, which splits hidden_units evenly among its attention heads.")

    # Layers.
    inputs = {QUESTION_IDS: keras.Input(shape=(max_length,), dtype="int32", name=QUESTION_IDS),
              **KINDS["regions"].model_inputs(visual)}
    embedding = word_embedding(config, embeddings)
    question_lstm = keras.layers.LSTM(config.hidden_units, return_sequences=True, name="question_lstm")
    word_column = keras.layers.Reshape((max_length, 1), name="word_column")
    # Zeroes the LSTM's outputs after the last word. The product also carries no Keras mask (its
    # mask input has none), so the explicit masks below are the only ones: padded words may
    # attend, as in openvqa, instead of becoming all-masked rows of the attention.
    words_only = keras.layers.Multiply(name="question_words")
    box_features = keras.layers.Dense(config.hidden_units, name="box_features")
    box_geometry = keras.layers.Dense(config.hidden_units, name="box_geometry")
    boxes_of = keras.layers.Add(name="boxes")
    fusion = keras.layers.Add(name="fusion")
    fusion_norm = keras.layers.LayerNormalization(epsilon=_NORM_EPSILON, name="fusion_norm")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    word_mask = PaddingMask(name="word_mask")(inputs[QUESTION_IDS])
    box_mask = inputs[REGION_MASK]
    words_to_words = AttentionMask(name="words_to_words")([word_mask, word_mask])
    boxes_to_boxes = AttentionMask(name="boxes_to_boxes")([box_mask, box_mask])
    boxes_to_words = AttentionMask(name="boxes_to_words")([box_mask, word_mask])

    words = words_only([question_lstm(embedding(inputs[QUESTION_IDS])), word_column(word_mask)])
    for layer in range(1, config.layers + 1):
        words = _attention(config, words, words, words_to_words, f"encoder_{layer}_self")
        words = _feed_forward(config, words, f"encoder_{layer}_ffn")
    geometry = inputs[REGION_GEOMETRY]
    if config.box_geometry == "sinusoids":
        geometry = keras.layers.Concatenate(name="box_geometry_coded")(
            [geometry, Sinusoids(name="box_place_waves")(BoxPlace(name="box_place")(geometry))])
    boxes = boxes_of([box_features(inputs[REGION_FEATURES]), box_geometry(geometry)])
    pairs = None
    if config.box_relations == "bias":
        pairs = keras.layers.Dense(RELATION_UNITS, activation="relu", name="box_relations")(
            Sinusoids(name="box_pair_waves")(BoxPairs(name="box_pairs")(inputs[REGION_GEOMETRY])))
    for layer in range(1, config.layers + 1):
        if pairs is None:
            boxes = _attention(config, boxes, boxes, boxes_to_boxes, f"decoder_{layer}_self")
        else:
            boxes = _relation_attention(config, boxes, pairs, boxes_to_boxes, f"decoder_{layer}_self")
        boxes = _attention(config, boxes, words, boxes_to_words, f"decoder_{layer}_guided")
        boxes = _feed_forward(config, boxes, f"decoder_{layer}_ffn")

    question = _summary(config, words, word_mask, "question_summary", "question_attention")
    image = _summary(config, boxes, box_mask, "image_summary", ATTENTION)
    outputs = head(fusion_norm(fusion([question, image])))
    return keras.Model(inputs, outputs, name="mcan")
