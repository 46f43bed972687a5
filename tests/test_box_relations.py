"""The box-to-box attention of ``vqa.box_relations``: pair geometry by hand, the bias steering the heads."""

from __future__ import annotations

import math

import numpy as np

from vqa.box_relations import BoxPairs, BoxPlace, RelationAttention, Sinusoids

# x1, y1, x2, y2, area as fractions of the image: A on the left, B on the right, a padded row of zeros.
A = [0.1, 0.2, 0.3, 0.6, 0.08]
B = [0.5, 0.3, 0.9, 0.5, 0.08]


def test_pairs_hold_signed_offsets_size_ratios_and_overlaps():
    pairs = np.asarray(BoxPairs()(np.array([[A, B]], np.float32)))
    assert pairs.shape == (1, 2, 2, 6) and pairs.dtype == np.float32
    # Query A, key B: B's centre is 0.5 right of A's, level with it; twice as wide, half as tall;
    # a gap of 0.2 between their x extents, an overlap of 0.2 of their y extents.
    np.testing.assert_allclose(pairs[0, 0, 1], [0.5, 0.0, math.log(2), -math.log(2), -0.2, 0.2], atol=1e-6)
    # Query B, key A: the offsets and log ratios change sign (A is left of B), the overlaps do not.
    np.testing.assert_allclose(pairs[0, 1, 0], [-0.5, 0.0, -math.log(2), math.log(2), -0.2, 0.2], atol=1e-6)
    # A box against itself: no offset, ratios of 1, overlaps of its own width and height.
    np.testing.assert_allclose(pairs[0, 0, 0], [0, 0, 0, 0, 0.2, 0.4], atol=1e-6)


def test_place_is_centre_and_log_size():
    place = np.asarray(BoxPlace()(np.array([[A, B]], np.float32)))
    assert place.shape == (1, 2, 4) and place.dtype == np.float32
    np.testing.assert_allclose(place[0], [[0.2, 0.4, math.log(0.2), math.log(0.4)],
                                          [0.7, 0.4, math.log(0.4), math.log(0.2)]], rtol=1e-6)


def test_sinusoids_by_hand_feature_by_feature():
    """Two frequencies, 100 and 100 / 1000^(1/2): each feature's two sines, then its two cosines."""
    waves = np.asarray(Sinusoids(frequencies=2)(np.array([[0.5, -0.02]], np.float32)))
    slow = 100 / math.sqrt(1000)
    expected = [math.sin(50), math.sin(0.5 * slow), math.cos(50), math.cos(0.5 * slow),
                math.sin(-2), math.sin(-0.02 * slow), math.cos(-2), math.cos(-0.02 * slow)]
    assert waves.shape == (1, 8)
    np.testing.assert_allclose(waves[0], expected, rtol=1e-4, atol=1e-5)
    # A difference of 0.02 moves the fastest sine by 2 radians: of order one, where the feature moved by 0.02.
    assert abs(waves[0, 4] - np.asarray(Sinusoids(frequencies=2)(np.zeros((1, 2), np.float32)))[0, 4]) > 0.9


def test_a_large_bias_makes_every_query_read_that_key():
    """With a bias of +50 on key 1 for head 0 and on key 2 for head 1, each head's output is that key's value,
    computed here from the layer's own weights; a masked key gets no weight whatever its bias."""
    rng = np.random.default_rng(0)
    heads, key_dim, width, boxes = 2, 3, 4, 4
    sequence = rng.normal(size=(1, boxes, width)).astype(np.float32)
    bias = np.zeros((1, heads, boxes, boxes), np.float32)
    bias[0, 0, :, 1] = 50.0
    bias[0, 1, :, 2] = 50.0
    mask = np.ones((1, boxes, boxes), bool)
    layer = RelationAttention(heads, key_dim, width)
    out = np.asarray(layer([sequence, bias, mask]))

    value_kernel, value_bias = (np.asarray(w) for w in layer.value.weights)
    merge_kernel, merge_bias = (np.asarray(w) for w in layer.merge.weights)
    values = np.einsum("bkc,chd->bkhd", sequence, value_kernel) + value_bias  # (1, K, heads, key_dim)
    read = np.stack([values[:, 1, 0], values[:, 2, 1]], axis=1)  # head 0 reads key 1, head 1 key 2
    expected = np.einsum("bhd,hde->be", read, merge_kernel) + merge_bias
    np.testing.assert_allclose(out, np.repeat(expected[:, None], boxes, axis=1), rtol=1e-4, atol=1e-5)

    # Mask key 1 out: head 0 no longer reads it, though its bias still favours it.
    mask[..., 1] = False
    changed = np.asarray(layer([sequence, bias, mask]))
    assert not np.allclose(changed, out, atol=1e-3)
    moved = sequence.copy()
    moved[0, 1] = 100.0  # whatever the masked box holds, the other boxes' outputs do not change
    np.testing.assert_allclose(np.asarray(layer([moved, bias, mask]))[:, [0, 2, 3]], changed[:, [0, 2, 3]],
                               rtol=1e-5, atol=1e-5)
