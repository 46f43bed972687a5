"""vqa.attention: the grid models' I/O contract, safe-mode loading, attention maps, and that they attend."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vqa import attention
from vqa import model as vqa_model
from vqa.config import ModelConfig, resolve
from vqa.errors import VQAError
from vqa.losses import make_loss

VOCABULARY, DIM, LENGTH = 9, 5, 6
GRID = (4, 4, 6)  # H, W, C: channel 0 flags one cell, channels 1..5 one-hot its colour
COLOURS = GRID[2] - 1
ANSWERS = COLOURS + 1  # the colours, then "none" for an image with no flagged cell
TINY = ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=16, fusion_units=16, dropout=0.2)
NAMES = sorted(vqa_model.GRID_MODELS)


def _embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(VOCABULARY, DIM)).astype(np.float32)
    vectors[:2] = 0.0
    return vectors


def _build(name: str, activation: str = "sigmoid", **changes) -> keras.Model:
    config = ModelConfig(**{**TINY.__dict__, "name": name, **changes})
    return vqa_model.build_model(config, _embeddings(), ANSWERS, None, LENGTH, activation, grid_shape=GRID)


def _marked_cell_data(count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every cell has a random colour; the answer is the colour of the one flagged cell.

    One fixed question, so only attention to the flagged cell (whose position varies) answers it.
    Every colour also appears on unflagged cells, so the mean over the cells says nothing. Every
    sixth image has no flagged cell (answer "none"): without them a model can answer one colour
    by elimination, attending to unflagged cells whenever no other colour is flagged.

    Returns:
        inputs, answer classes int (count,), flagged cell index int (count,) in 0 .. H * W - 1
        or -1 for no flag.
    """
    height, width, channels = GRID
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, COLOURS, size=(count, height * width))
    order = rng.permuted(np.tile(np.arange(height * width), (count, 1)), axis=1)
    marked = order[:, 0]
    np.put_along_axis(colours, order[:, 1:COLOURS + 1], np.arange(COLOURS)[None], axis=1)
    colours = colours.reshape(count, height, width)
    grid = np.zeros((count, height, width, channels), np.float32)
    grid[..., 1:] = np.eye(COLOURS, dtype=np.float32)[colours]
    rows, cols = np.divmod(marked, width)
    flagged = np.arange(count) % 6 != 5
    grid[np.arange(count)[flagged], rows[flagged], cols[flagged], 0] = 1.0
    ids = np.tile(np.array([[3, 4, 5, 2, 0, 0]], np.int32), (count, 1))
    # float16 as stored on disk: the model must accept it.
    answers = np.where(flagged, colours[np.arange(count), rows, cols], COLOURS)
    return {"question_ids": ids, "image_grid": grid.astype(np.float16)}, answers, np.where(flagged, marked, -1)


@pytest.mark.parametrize("name", NAMES)
def test_builds_saves_and_loads_in_safe_mode_with_the_attention_maps(tmp_path, name):
    model = _build(name)
    assert {tensor.name for tensor in model.inputs} == {"question_ids", "image_grid"}
    inputs, _, _ = _marked_cell_data(3, seed=1)
    scores = np.asarray(model.predict(inputs, verbose=0))
    assert scores.shape == (3, ANSWERS) and scores.dtype == np.float32
    assert ((scores > 0) & (scores < 1)).all()

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = vqa_model.load_model(path)
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), scores)

    maps = np.asarray(attention.attention_model(loaded).predict(inputs, verbose=0))
    assert maps.shape == (3, 2, GRID[0], GRID[1]) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(maps, attention.attention_model(model).predict(inputs, verbose=0))


def test_glimpses_and_hops_set_the_number_of_maps():
    inputs, _, _ = _marked_cell_data(2, seed=1)
    for name, changes in (("multi-glimpse", {"glimpses": 3}), ("san", {"attention_hops": 1})):
        model = _build(name, activation="softmax", **changes)
        np.testing.assert_allclose(model.predict(inputs, verbose=0).sum(axis=1), 1.0, rtol=1e-5)
        maps = attention.attention_model(model).predict(inputs, verbose=0)
        assert maps.shape == (2, next(iter(changes.values())), GRID[0], GRID[1])


def test_mixed_precision_keeps_scores_and_maps_float32():
    inputs, _, _ = _marked_cell_data(2, seed=1)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for name in NAMES:
            model = _build(name)
            assert np.asarray(model.predict(inputs, verbose=0)).dtype == np.float32
            maps = np.asarray(attention.attention_model(model).predict(inputs, verbose=0))
            assert maps.dtype == np.float32
            np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_grid_models_need_a_grid_and_global_models_have_no_maps():
    config = ModelConfig(**{**TINY.__dict__, "name": "san"})
    with pytest.raises(VQAError, match="model.name=san needs grid features: preprocess with grid features"):
        vqa_model.build_model(config, _embeddings(), COLOURS, 12, LENGTH, "sigmoid")
    with pytest.raises(VQAError, match="bow-mlp.*san.*multi-glimpse"):
        vqa_model.build_model(ModelConfig(name="nope"), _embeddings(), COLOURS, 12, LENGTH, "sigmoid")
    with pytest.raises(VQAError, match="model.glimpses must be at least 1"):
        resolve(overrides=["model.glimpses=0"])
    global_model = vqa_model.build_model(TINY, _embeddings(), COLOURS, 12, LENGTH, "sigmoid")
    with pytest.raises(VQAError, match="no attention over an image grid"):
        attention.attention_model(global_model)


@pytest.mark.parametrize("name, loss", [("san", "soft"), ("multi-glimpse", "softmax")])
def test_attention_finds_the_flagged_cell(name, loss):
    """Trained with the project's losses, the model answers and its top cell is the flagged one."""
    keras.utils.set_random_seed(0)
    inputs, answers, marked = _marked_cell_data(256, seed=0)
    model = _build(name, activation="sigmoid" if loss == "soft" else "softmax", dropout=0.0,
                   hidden_units=32, fusion_units=32)
    targets = np.eye(ANSWERS, dtype=np.float32)[answers] if loss == "soft" else answers
    model.compile(keras.optimizers.Adam(0.02), make_loss(loss))
    model.fit(inputs, targets, batch_size=32, epochs=6, verbose=0)

    # The 256 training images, then 128 it never saw; the top cell is checked where there is a flag.
    fresh, fresh_answers, fresh_marked = _marked_cell_data(128, seed=1)
    both = {key: np.concatenate([inputs[key], fresh[key]]) for key in inputs}
    marked = np.concatenate([marked, fresh_marked])
    correct = model.predict(both, verbose=0).argmax(axis=1) == np.concatenate([answers, fresh_answers])
    maps = attention.attention_model(model).predict(both, verbose=0)
    on_flag = maps.mean(axis=1).reshape(len(marked), -1).argmax(axis=1) == marked
    for part, what in ((slice(0, 256), "train"), (slice(256, None), "unseen")):
        accuracy, attended = correct[part].mean(), on_flag[part][marked[part] >= 0].mean()
        assert accuracy >= 0.9, f"{name}: {what} accuracy {accuracy:.2f}"
        assert attended >= 0.8, f"{name}: the top cell is the flagged one for {attended:.2f} ({what})"
