"""Box-to-box attention that sees where the boxes are relative to each other.

A box embedding added to each region (``mcan``'s ``box_geometry``) tells a box where it is,
but dot-product attention between two boxes can only compare their positions through a
product of separate codes, which a question like "what is just left of the circle?" (same
row, nearest on the left) needs many heads to approximate. Here each pair's relative geometry
(``BoxPairs``) goes through a small MLP to one learned bias per head, added to the attention
logits (``RelationAttention``), as Hu et al. (CVPR 2018, "Relation Networks for Object
Detection") weight attention by box geometry; the sign of the offsets is kept, so left and
right differ. As there, the geometry reaches the MLP as sines at several frequencies
(``Sinusoids``): raw, its differences are hundredths of the image, which a Dense layer can
only sharpen with weights that Adam at MCAN's 1e-4 grows too slowly on a small dataset.
``BoxPlace`` gives each box's own centre and log size for the same coding of a single box.
Every layer is registered: a model using them loads with ``safe_mode=True``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

PAIR_FEATURES = 6  # dx, dy, log width ratio, log height ratio, x overlap, y overlap
_SIZE_FLOOR = 1e-3  # a box's width or height below this (in image fractions) counts as this, for the log ratios
_MASKED = -1e9  # the logit of a padded key (softmax in float32)
PLACE_FEATURES = 4  # centre x, centre y, log width, log height
FREQUENCIES = 8  # Sinusoids: frequencies per feature, 100 / 1000^(k / 8) for k = 0..7 (Hu et al. 2018)


@keras.saving.register_keras_serializable(package="vqa")
class BoxPairs(keras.layers.Layer):
    """Every ordered pair of boxes' relative geometry.

    Call args:
        inputs: float (batch, K, 5): x1, y1, x2, y2 as fractions of the image's width and
            height, and the area (``vqa.regions.geometry``).

    Returns:
        float32 (batch, K, K, 6): for query box i and key box j, cx_j - cx_i and cy_j - cy_i
        (centres, image fractions: negative dx = j lies left of i), log(w_j / w_i),
        log(h_j / h_i), and the overlap of their x and of their y extents (negative: the
        gap between them).
    """

    def call(self, inputs):
        geometry = ops.cast(inputs, "float32")
        x1, y1, x2, y2 = (geometry[..., index] for index in range(4))
        width = ops.maximum(x2 - x1, _SIZE_FLOOR)
        height = ops.maximum(y2 - y1, _SIZE_FLOOR)

        def key_minus_query(values):
            return ops.expand_dims(values, 1) - ops.expand_dims(values, 2)

        def overlap(low, high):
            return (ops.minimum(ops.expand_dims(high, 1), ops.expand_dims(high, 2))
                    - ops.maximum(ops.expand_dims(low, 1), ops.expand_dims(low, 2)))

        return ops.stack([key_minus_query((x1 + x2) / 2), key_minus_query((y1 + y2) / 2),
                          key_minus_query(ops.log(width)), key_minus_query(ops.log(height)),
                          overlap(x1, x2), overlap(y1, y2)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[1], PAIR_FEATURES)


@keras.saving.register_keras_serializable(package="vqa")
class BoxPlace(keras.layers.Layer):
    """Each box's place and size: centre x, centre y (image fractions), log width, log height.

    Call args:
        inputs: float (batch, K, 5), as ``BoxPairs`` reads.

    Returns:
        float32 (batch, K, 4). On the log scale a box 25% larger differs by 0.22 whatever its
        size; its area (an input) differs by a quarter of itself, 0.005 for a box of 2%.
    """

    def call(self, inputs):
        geometry = ops.cast(inputs, "float32")
        x1, y1, x2, y2 = (geometry[..., index] for index in range(4))
        return ops.stack([(x1 + x2) / 2, (y1 + y2) / 2, ops.log(ops.maximum(x2 - x1, _SIZE_FLOOR)),
                          ops.log(ops.maximum(y2 - y1, _SIZE_FLOOR))], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], PLACE_FEATURES)


@keras.saving.register_keras_serializable(package="vqa")
class Sinusoids(keras.layers.Layer):
    """Each feature x -> sin(s_k x), cos(s_k x) for s_k = 100 / 1000^(k / n), k = 0..n-1.

    The embedding of box geometry of Hu et al. (2018): the fast frequencies turn small
    differences (a box 0.05 of the image further left, 25% larger) into differences of order
    one, the slow ones stay close to linear, so the Dense layer after it can draw a sharp
    function of the geometry with weights of ordinary size, learnable at a small rate.

    Call args:
        inputs: float (..., F).

    Returns:
        float32 (..., F * 2n): feature-major, sines then cosines.
    """

    def __init__(self, frequencies: int = FREQUENCIES, **kwargs):
        super().__init__(**kwargs)
        self.frequencies = frequencies

    def call(self, inputs):
        scales = (100.0 / 1000.0 ** (np.arange(self.frequencies) / self.frequencies)).astype("float32")
        angles = ops.expand_dims(ops.cast(inputs, "float32"), -1) * scales  # (..., F, n)
        waves = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)  # (..., F, 2n)
        return ops.reshape(waves, (*ops.shape(inputs)[:-1], inputs.shape[-1] * 2 * self.frequencies))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] * 2 * self.frequencies)

    def get_config(self):
        return {**super().get_config(), "frequencies": self.frequencies}


@keras.saving.register_keras_serializable(package="vqa")
class RelationAttention(keras.layers.Layer):
    """Multi-head self-attention with an additive bias per head and pair (scaled dot product + bias).

    ``keras.layers.MultiHeadAttention`` takes only a boolean mask, so the bias needs this layer;
    its projections are the same ``EinsumDense`` shapes.

    Args:
        heads: attention heads.
        key_dim: width of each head's queries, keys and values.
        output_dim: width of the output (the sequence's own, for a residual).
        dropout: dropout on the attention weights.

    Call args:
        inputs: list of the sequence float (batch, K, d), the bias float (batch, heads, K, K)
            and the mask bool (batch, K, K), True where a query may attend a key
            (``vqa.model_parts.AttentionMask``).

    Returns:
        float (batch, K, output_dim).
    """

    def __init__(self, heads: int, key_dim: int, output_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.key_dim, self.output_dim, self.dropout = heads, key_dim, output_dim, dropout
        projection = {"output_shape": (None, heads, key_dim), "bias_axes": "de", "dtype": self.dtype_policy}
        self.query = keras.layers.EinsumDense("abc,cde->abde", name="query", **projection)
        self.key = keras.layers.EinsumDense("abc,cde->abde", name="key", **projection)
        self.value = keras.layers.EinsumDense("abc,cde->abde", name="value", **projection)
        self.merge = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, output_dim), bias_axes="e",
                                              name="merge", dtype=self.dtype_policy)
        self.weights_dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        sequence_shape = input_shape[0]
        for projection in (self.query, self.key, self.value):
            projection.build(sequence_shape)
        self.merge.build((sequence_shape[0], sequence_shape[1], self.heads, self.key_dim))

    def call(self, inputs, training=None):
        sequence, bias, mask = inputs
        queries, keys, values = self.query(sequence), self.key(sequence), self.value(sequence)
        logits = ops.einsum("bqhd,bkhd->bhqk", queries, keys)
        logits = ops.cast(logits, "float32") / math.sqrt(self.key_dim) + ops.cast(bias, "float32")
        logits = ops.where(ops.expand_dims(mask, 1), logits, _MASKED)
        weights = self.weights_dropout(ops.softmax(logits, axis=-1), training=training)
        attended = ops.einsum("bhqk,bkhd->bqhd", ops.cast(weights, values.dtype), values)
        return self.merge(attended)

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "key_dim": self.key_dim,
                "output_dim": self.output_dim, "dropout": self.dropout}
