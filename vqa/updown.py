"""Bottom-up top-down attention ("updown"): question token ids + region boxes -> answer scores.

Anderson et al., CVPR 2018, with the layout of Teney et al., "Tips and Tricks for Visual
Question Answering" (CVPR 2018), as hengyuan-hu/bottom-up-attention-vqa arranges it: one
recurrent question code, one top-down attention map over the detector's boxes, gated tanh
layers throughout. The map is the float32 layer ``attention`` (batch, 1, K) that
``vqa.attention.attention_model`` reads. Only built-in Keras layers and the registered
``vqa.model_parts`` layers are used: the model loads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np

from vqa.config import ModelConfig
from vqa.errors import VQAError
from vqa.model_parts import MaskedSoftmax, answer_head, word_embedding
from vqa.names import QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
from vqa.visual import KINDS, VisualSpec

ATTENTION = "attention"  # the name vqa.attention.attention_model looks for
_RNNS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}


def gated_tanh(inputs: list[keras.KerasTensor], units: int, name: str) -> keras.KerasTensor:
    """y = tanh(W x + b) * sigmoid(W' x + b') of the concatenation x of ``inputs``.

    Each input is projected on its own and the projections summed, the same function as one
    projection of their concatenation, so a (batch, 1, d) input broadcasts over (batch, K, d').

    Returns:
        float (..., units).
    """

    def projection(role: str) -> keras.KerasTensor:
        if len(inputs) == 1:
            return keras.layers.Dense(units, name=f"{name}_{role}")(inputs[0])
        parts = [keras.layers.Dense(units, use_bias=index == 0, name=f"{name}_{role}_{index + 1}")(tensor)
                 for index, tensor in enumerate(inputs)]
        return keras.layers.Add(name=f"{name}_{role}_sum")(parts)

    values = keras.layers.Activation("tanh", name=f"{name}_tanh_act")(projection("tanh"))
    gates = keras.layers.Activation("sigmoid", name=f"{name}_gate_act")(projection("gate"))
    return keras.layers.Multiply(name=name)([values, gates])


def build_updown(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec,
                 max_length: int, output_activation: str) -> keras.Model:
    """Bottom-up top-down attention over region boxes.

    q = last state of a GRU or LSTM (``config.question_rnn``, hidden_units) over the words;
    parts v_k = [feature ; geometry] (batch, K, D + 5), not normalised. Attention: gated tanh
    of [v_k ; q] (hidden_units) -> dropout -> Dense(1) -> softmax over the real boxes (layer
    ``attention``, float32 (batch, 1, K)); v = sum_k a_k v_k. Fusion: gated tanh(q) * gated
    tanh(v) (hidden_units each); classifier: gated tanh (2 * hidden_units) -> dropout -> answer head.

    Returns:
        keras.Model: {"question_ids" int32 (batch, L), "region_features" (batch, K, D),
        "region_geometry" (batch, K, 5), "region_mask" (batch, K)} -> float32 (batch, num_answers).

    Raises:
        VQAError: for regions not given or an unknown ``question_rnn``.
    """
    if visual.kind != "regions":
        raise VQAError(f"model.name=updown reads regions, not {visual.kind} inputs.")
    if config.question_rnn not in _RNNS:
        raise VQAError(f"model.question_rnn must be one of {', '.join(_RNNS)}, not {config.question_rnn!r}.")

    # Layers.
    inputs = {QUESTION_IDS: keras.Input(shape=(max_length,), dtype="int32", name=QUESTION_IDS),
              **KINDS["regions"].model_inputs(visual)}
    embedding = word_embedding(config, embeddings)
    # The Embedding's mask makes the RNN's state the one after the last word, not after the padding.
    question_rnn = _RNNS[config.question_rnn](config.hidden_units, name="question_rnn")
    parts_of = keras.layers.Concatenate(axis=-1, name="region_parts")
    question_beside_parts = keras.layers.Reshape((1, config.hidden_units), name="question_beside_parts")
    attention_dropout = keras.layers.Dropout(config.dropout, name="attention_dropout")
    attention_logits = keras.layers.Dense(1, name="attention_logits")
    maps_first = keras.layers.Permute((2, 1), name="attention_logits_t")
    attention = MaskedSoftmax(dtype="float32", name=ATTENTION)
    attend = keras.layers.Dot(axes=(2, 1), name="attended")
    attended_flat = keras.layers.Flatten(name="attended_flat")
    joint_of = keras.layers.Multiply(name="joint")
    classifier_dropout = keras.layers.Dropout(config.dropout, name="classifier_dropout")
    head = answer_head(num_answers, output_activation)

    # Wiring.
    question = question_rnn(embedding(inputs[QUESTION_IDS]))
    parts = parts_of([inputs[REGION_FEATURES], inputs[REGION_GEOMETRY]])
    hidden = gated_tanh([parts, question_beside_parts(question)], config.hidden_units, "attention_hidden")
    logits = attention_logits(attention_dropout(hidden))
    weights = attention([maps_first(logits), inputs[REGION_MASK]])
    image = attended_flat(attend([weights, parts]))
    joint = joint_of([gated_tanh([question], config.hidden_units, "question_code"),
                      gated_tanh([image], config.hidden_units, "image_code")])
    hidden = gated_tanh([joint], 2 * config.hidden_units, "classifier_hidden")
    outputs = head(classifier_dropout(hidden))
    return keras.Model(inputs, outputs, name="updown")
