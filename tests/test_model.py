"""vqa.model: every architecture's I/O contract, save/load in safe mode, name lookup."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from vqa import model as vqa_model
from vqa.config import ModelConfig
from vqa.errors import VQAError

VOCABULARY, DIM, ANSWERS, FEATURES, LENGTH = 9, 5, 7, 12, 6
TINY = ModelConfig(lstm_units=4, lstm_layers=2, hidden_units=8, fusion_units=6, dropout=0.2)


def _embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(VOCABULARY, DIM)).astype(np.float32)
    vectors[:2] = 0.0
    return vectors


def _inputs(batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCABULARY, size=(batch, LENGTH)).astype(np.int32)
    ids[:, 4:] = 0  # post-padding
    # float16 as stored on disk: the model must accept it.
    return {"question_ids": ids, "image_features": rng.normal(size=(batch, FEATURES)).astype(np.float16)}


def _build(name: str, activation: str = "sigmoid", **changes) -> keras.Model:
    config = ModelConfig(**{**TINY.__dict__, "name": name, **changes})
    return vqa_model.build_model(config, _embeddings(), ANSWERS, FEATURES, LENGTH, activation)


@pytest.mark.parametrize("name", sorted(vqa_model.MODELS))
def test_every_model_follows_the_io_contract(name):
    model = _build(name)
    expected_inputs = {"question_ids"} if name == "question-only" else {"question_ids", "image_features"}
    assert {tensor.name for tensor in model.inputs} == expected_inputs
    inputs = {key: value for key, value in _inputs().items() if key in expected_inputs}
    scores = np.asarray(model.predict(inputs, verbose=0))
    assert scores.shape == (3, ANSWERS) and scores.dtype == np.float32
    assert ((scores > 0) & (scores < 1)).all()
    # The word vectors are the initial (frozen) embedding.
    np.testing.assert_array_equal(model.get_layer("word_embedding").get_weights()[0], _embeddings())
    assert not model.get_layer("word_embedding").trainable


def test_softmax_head_and_trainable_embeddings():
    model = _build("deeper-lstm-norm-i", activation="softmax", train_embeddings=True)
    scores = np.asarray(model.predict(_inputs(), verbose=0))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("word_embedding").trainable


def test_padding_is_masked():
    """The padding row's vector never reaches the answer (it can drift when embeddings train)."""
    for name in ("deeper-lstm-norm-i", "bow-mlp", "seed-concat"):
        model = _build(name)
        before = model.predict(_inputs(), verbose=0)
        embedding = model.get_layer("word_embedding")
        vectors = embedding.get_weights()[0]
        vectors[0] = 5.0
        embedding.set_weights([vectors])
        np.testing.assert_allclose(model.predict(_inputs(), verbose=0), before, rtol=1e-6, err_msg=name)


def test_masked_sum_ignores_padding():
    embedded = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    mask = np.array([[True, True, False]])
    np.testing.assert_allclose(vqa_model.MaskedSum()(embedded, mask=mask), [[4, 6, 8, 10]])


@pytest.mark.parametrize("name", ["deeper-lstm-norm-i", "bow-mlp"])
def test_save_and_load_in_safe_mode_gives_identical_predictions(tmp_path, name):
    model = _build(name)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = vqa_model.load_model(path)
    np.testing.assert_array_equal(model.predict(_inputs(), verbose=0), loaded.predict(_inputs(), verbose=0))


def test_word_vectors_are_weights_not_config():
    """A real vocabulary (tens of thousands of rows) must not be inlined into the model's JSON."""
    big = np.ones((5000, DIM), np.float32)
    model = vqa_model.build_model(TINY, big, ANSWERS, FEATURES, LENGTH, "sigmoid")
    assert len(json.dumps(model.get_config())) < 30_000


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(VQAError, match="deeper-lstm-norm-i.*question-only.*seed-concat.*bow-mlp"):
        _build("resnet-transformer")
    with pytest.raises(VQAError, match="does not exist"):
        vqa_model.load_model("/nowhere/model.keras")
