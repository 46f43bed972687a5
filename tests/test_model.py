"""vqa.registry and vqa.model: every registered architecture's I/O contract on every input kind it
reads, save/load in safe mode, and name lookup."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from vqa import registry
from vqa.config import ModelConfig
from vqa.errors import VQAError
from vqa.model_parts import MaskedSum
from vqa.names import (IMAGE_FEATURES, IMAGE_GRID, QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY,
                       REGION_MASK)
from vqa.visual import VisualSpec

VOCABULARY, DIM, ANSWERS, FEATURES, LENGTH = 9, 5, 7, 12, 6
GRID, BOXES = (3, 2, FEATURES), 5
TINY = ModelConfig(lstm_units=4, lstm_layers=2, hidden_units=8, fusion_units=6, dropout=0.2)
SPECS = {"vector": VisualSpec("vector", (FEATURES,)), "grid": VisualSpec("grid", GRID),
         "regions": VisualSpec("regions", (FEATURES,))}
INPUT_NAMES = {None: {QUESTION_IDS}, "vector": {QUESTION_IDS, IMAGE_FEATURES}, "grid": {QUESTION_IDS, IMAGE_GRID},
               "regions": {QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK}}
# Every registered model on every input kind it reads (None: a question-only model).
MODEL_KINDS = [(name, kind) for name, entry in sorted(registry.MODELS.items()) for kind in (entry.reads or (None,))]


def _embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(VOCABULARY, DIM)).astype(np.float32)
    vectors[:2] = 0.0
    return vectors


def _inputs(kind: str | None = "vector", batch: int = 3) -> dict[str, np.ndarray]:
    """Inputs of ``kind`` in the dtypes stored on disk (float16 features): the model must accept them."""
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCABULARY, size=(batch, LENGTH)).astype(np.int32)
    ids[:, 4:] = 0  # post-padding
    inputs = {QUESTION_IDS: ids}
    if kind == "vector":
        inputs[IMAGE_FEATURES] = rng.normal(size=(batch, FEATURES)).astype(np.float16)
    elif kind == "grid":
        inputs[IMAGE_GRID] = rng.normal(size=(batch, *GRID)).astype(np.float16)
    elif kind == "regions":
        mask = np.ones((batch, BOXES), np.float32)
        mask[0, 3:] = 0.0  # the first image has 3 boxes, the others 5
        inputs[REGION_FEATURES] = (rng.normal(size=(batch, BOXES, FEATURES)) * mask[..., None]).astype(np.float16)
        inputs[REGION_GEOMETRY] = (rng.uniform(size=(batch, BOXES, 5)) * mask[..., None]).astype(np.float32)
        inputs[REGION_MASK] = mask
    return inputs


def _build(name: str, kind: str | None = "vector", activation: str = "sigmoid", **changes) -> keras.Model:
    config = ModelConfig(**{**TINY.__dict__, "name": name, **changes})
    return registry.build_model(config, _embeddings(), ANSWERS, SPECS.get(kind), LENGTH, activation)


@pytest.mark.parametrize("name, kind", MODEL_KINDS)
def test_every_model_follows_the_io_contract(name, kind):
    model = _build(name, kind)
    assert {tensor.name for tensor in model.inputs} == INPUT_NAMES[kind]
    scores = np.asarray(model.predict(_inputs(kind), verbose=0))
    assert scores.shape == (3, ANSWERS) and scores.dtype == np.float32
    assert ((scores > 0) & (scores < 1)).all()
    # The word vectors are the initial (frozen) embedding.
    np.testing.assert_array_equal(model.get_layer("word_embedding").get_weights()[0], _embeddings())
    assert not model.get_layer("word_embedding").trainable


@pytest.mark.parametrize("name, kind", MODEL_KINDS)
def test_save_and_load_in_safe_mode_gives_identical_predictions(tmp_path, name, kind):
    model = _build(name, kind)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = registry.load_model(path)
    inputs = _inputs(kind)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0))


def test_the_question_only_model_ignores_any_visual_spec():
    model = registry.build_model(ModelConfig(**{**TINY.__dict__, "name": "question-only"}), _embeddings(), ANSWERS,
                                 SPECS["vector"], LENGTH, "sigmoid")
    assert {tensor.name for tensor in model.inputs} == {QUESTION_IDS}


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
    np.testing.assert_allclose(MaskedSum()(embedded, mask=mask), [[4, 6, 8, 10]])


def test_word_vectors_are_weights_not_config():
    """A real vocabulary (tens of thousands of rows) must not be inlined into the model's JSON."""
    big = np.ones((5000, DIM), np.float32)
    model = registry.build_model(TINY, big, ANSWERS, SPECS["vector"], LENGTH, "sigmoid")
    assert len(json.dumps(model.get_config())) < 30_000


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(VQAError, match="deeper-lstm-norm-i.*question-only.*seed-concat.*bow-mlp.*san.*multi-glimpse"):
        _build("resnet-transformer")
    with pytest.raises(VQAError, match="deeper-lstm-norm-i.*question-only"):
        registry.entry("resnet-transformer")
    with pytest.raises(VQAError, match="does not exist"):
        registry.load_model("/nowhere/model.keras")


def test_an_input_the_model_does_not_read_is_refused_in_one_sentence():
    with pytest.raises(VQAError, match="model.name=deeper-lstm-norm-i reads vector inputs, not grid inputs"):
        _build("deeper-lstm-norm-i", "grid")
    with pytest.raises(VQAError, match="model.name=bow-mlp reads vector inputs, not no image input"):
        _build("bow-mlp", None)


def test_the_registry_says_what_each_model_reads():
    assert registry.entry("question-only").reads == ()
    assert {name for name, entry in registry.MODELS.items() if entry.reads == ("vector",)} == {
        "deeper-lstm-norm-i", "seed-concat", "bow-mlp"}
    assert set(registry.entry("san").reads) == set(registry.entry("multi-glimpse").reads) == {"grid", "regions"}
    assert "question-only (no image)" in registry.help_text()


@pytest.mark.parametrize("states, width", [("hidden", 2 * 4), ("hidden-and-cell", 2 * 2 * 4)])
def test_the_question_code_reads_the_hidden_states_unless_asked_for_the_cells_too(states, width):
    model = _build("deeper-lstm-norm-i", question_states=states)  # TINY: 2 layers of 4 units
    assert model.get_layer("question_projection").get_weights()[0].shape == (width, TINY.hidden_units)


def test_the_image_code_starts_near_a_positive_constant_so_the_product_passes_the_question_on():
    # fc7-like features whose images differ only by noise around a large shared part: standardised, the
    # projection is that noise at unit scale. Centred at 0, its tanh would flip the question code's signs at
    # random in the product, and the model fell below the blind one (17 against 49 on such data).
    rng = np.random.default_rng(0)
    batch = 64
    model = _build("deeper-lstm-norm-i", hidden_units=32)
    inputs = _inputs("vector", batch)
    inputs[IMAGE_FEATURES] = np.maximum(5 + rng.normal(size=(batch, FEATURES)), 0).astype(np.float32)
    codes = keras.Model(model.inputs, [model.get_layer("image_code").output,
                                       model.get_layer("question_projection").output,
                                       model.get_layer("fusion_product").output])
    image, question, product = (np.asarray(array) for array in codes(inputs, training=True))
    assert (image.mean(axis=0) > 0.4).all()  # tanh(1 + N(0, 1)) averages 0.6
    same_sign = np.sign(product) == np.sign(question)
    assert same_sign.mean() > 0.8
