"""vqa.attention: the attention models on a grid and on regions: safe-mode loading, attention maps,
masked boxes, and that they attend. Every registered model's I/O contract is in test_model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vqa import attention, registry
from vqa.config import ModelConfig, resolve
from vqa.errors import VQAError
from vqa.losses import make_loss
from vqa.names import IMAGE_GRID, QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
from vqa.visual import VisualSpec
from vqa.visual.region import grid_as_regions

VOCABULARY, DIM, LENGTH = 9, 5, 6
GRID = (4, 4, 6)  # H, W, C: channel 0 flags one cell, channels 1..5 one-hot its colour
COLOURS = GRID[2] - 1
ANSWERS = COLOURS + 1  # the colours, then "none" for an image with no flagged cell
TINY = ModelConfig(lstm_units=8, lstm_layers=1, hidden_units=16, fusion_units=16, dropout=0.2)
NAMES = sorted(name for name, entry in registry.MODELS.items() if "grid" in entry.reads)
GRID_SPEC, REGION_SPEC = VisualSpec("grid", GRID), VisualSpec("regions", (GRID[2],))


def _embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(VOCABULARY, DIM)).astype(np.float32)
    vectors[:2] = 0.0
    return vectors


def _build(name: str, activation: str = "sigmoid", visual: VisualSpec = GRID_SPEC, **changes) -> keras.Model:
    config = ModelConfig(**{**TINY.__dict__, "name": name, **changes})
    return registry.build_model(config, _embeddings(), ANSWERS, visual, LENGTH, activation)


def _one_question(count: int) -> np.ndarray:
    """The same padded question ``count`` times: the image alone decides the answer."""
    return np.tile(np.array([[3, 4, 5, 2, 0, 0]], np.int32), (count, 1))


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
    ids = _one_question(count)
    # float16 as stored on disk: the model must accept it.
    answers = np.where(flagged, colours[np.arange(count), rows, cols], COLOURS)
    return {QUESTION_IDS: ids, IMAGE_GRID: grid.astype(np.float16)}, answers, np.where(flagged, marked, -1)


def _as_regions(inputs: dict[str, np.ndarray], extra_boxes: int = 0) -> dict[str, np.ndarray]:
    """The grid inputs read as regions (one box per cell, ``vqa.visual.region.grid_as_regions``), with
    ``extra_boxes`` padded boxes of random features after them: what a batch of varying box counts holds."""
    regions = grid_as_regions(inputs[IMAGE_GRID])
    if extra_boxes:
        rng = np.random.default_rng(2)
        count = len(inputs[IMAGE_GRID])
        padding = {REGION_FEATURES: rng.normal(size=(count, extra_boxes, GRID[2])).astype(np.float16),
                   REGION_GEOMETRY: rng.uniform(size=(count, extra_boxes, 5)).astype(np.float32),
                   REGION_MASK: np.zeros((count, extra_boxes), np.float32)}
        regions = {key: np.concatenate([regions[key], padding[key]], axis=1) for key in regions}
    return {QUESTION_IDS: inputs[QUESTION_IDS], **regions}


@pytest.mark.parametrize("name", NAMES)
def test_builds_saves_and_loads_in_safe_mode_with_the_attention_maps(tmp_path, name):
    model = _build(name)
    assert {tensor.name for tensor in model.inputs} == {QUESTION_IDS, IMAGE_GRID}
    inputs, _, _ = _marked_cell_data(3, seed=1)
    scores = np.asarray(model.predict(inputs, verbose=0))
    assert scores.shape == (3, ANSWERS) and scores.dtype == np.float32
    assert ((scores > 0) & (scores < 1)).all()

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = registry.load_model(path)
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


@pytest.mark.parametrize("name", NAMES)
def test_maps_over_regions_give_padded_boxes_no_weight(tmp_path, name):
    """Over regions the maps are (batch, G, K), sum to 1 over the real boxes, and padded boxes, whatever
    they hold, change neither the maps nor the answers; the model saves and loads in safe mode."""
    model = _build(name, visual=REGION_SPEC)
    assert {tensor.name for tensor in model.inputs} == {QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK}
    grid_inputs, _, _ = _marked_cell_data(3, seed=1)
    cells = GRID[0] * GRID[1]
    exact, padded = _as_regions(grid_inputs), _as_regions(grid_inputs, extra_boxes=3)
    maps_model = attention.attention_model(model)
    maps = np.asarray(maps_model.predict(padded, verbose=0))
    assert maps.shape == (3, 2, cells + 3) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps[..., cells:], 0.0)
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(maps[..., :cells], maps_model.predict(exact, verbose=0), rtol=1e-5, atol=1e-7)
    scores = np.asarray(model.predict(padded, verbose=0))
    np.testing.assert_allclose(scores, model.predict(exact, verbose=0), rtol=1e-5, atol=1e-7)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = registry.load_model(path)
    np.testing.assert_array_equal(loaded.predict(padded, verbose=0), scores)
    np.testing.assert_array_equal(attention.attention_model(loaded).predict(padded, verbose=0), maps)


def test_attention_models_need_a_grid_or_regions_and_global_models_have_no_maps():
    config = ModelConfig(**{**TINY.__dict__, "name": "san"})
    with pytest.raises(VQAError, match="model.name=san reads regions or grid inputs, not no image input"):
        registry.build_model(config, _embeddings(), COLOURS, None, LENGTH, "sigmoid")
    with pytest.raises(VQAError, match="model.name=san reads regions or grid inputs, not vector inputs"):
        registry.build_model(config, _embeddings(), COLOURS, VisualSpec("vector", (12,)), LENGTH, "sigmoid")
    with pytest.raises(VQAError, match="bow-mlp.*san.*multi-glimpse"):
        registry.build_model(ModelConfig(name="nope"), _embeddings(), COLOURS, VisualSpec("vector", (12,)), LENGTH,
                             "sigmoid")
    with pytest.raises(VQAError, match="model.glimpses must be at least 1"):
        resolve(overrides=["model.glimpses=0"])
    global_model = registry.build_model(TINY, _embeddings(), COLOURS, VisualSpec("vector", (12,)), LENGTH, "sigmoid")
    with pytest.raises(VQAError, match="no attention over the parts of an image"):
        attention.attention_model(global_model)


@pytest.mark.parametrize("name, loss, kind", [("san", "soft", "grid"), ("multi-glimpse", "softmax", "grid"),
                                              ("san", "soft", "regions")])
def test_attention_finds_the_flagged_cell(name, loss, kind):
    """Trained with the project's losses, the model answers and its top cell (or box, the grid's cells
    read as regions) is the flagged one."""
    keras.utils.set_random_seed(0)
    inputs, answers, marked = _marked_cell_data(256, seed=0)
    model = _build(name, activation="sigmoid" if loss == "soft" else "softmax", dropout=0.0,
                   hidden_units=32, fusion_units=32, visual=GRID_SPEC if kind == "grid" else REGION_SPEC)
    if kind == "regions":
        inputs = _as_regions(inputs)
    targets = np.eye(ANSWERS, dtype=np.float32)[answers] if loss == "soft" else answers
    model.compile(keras.optimizers.Adam(0.02), make_loss(loss))
    model.fit(inputs, targets, batch_size=32, epochs=8, verbose=0)

    # The 256 training images, then 128 it never saw; the top cell is checked where there is a flag.
    fresh, fresh_answers, fresh_marked = _marked_cell_data(128, seed=1)
    fresh = _as_regions(fresh) if kind == "regions" else fresh
    both = {key: np.concatenate([inputs[key], fresh[key]]) for key in inputs}
    marked = np.concatenate([marked, fresh_marked])
    correct = model.predict(both, verbose=0).argmax(axis=1) == np.concatenate([answers, fresh_answers])
    maps = attention.attention_model(model).predict(both, verbose=0)
    on_flag = maps.mean(axis=1).reshape(len(marked), -1).argmax(axis=1) == marked
    for part, what in ((slice(0, 256), "train"), (slice(256, None), "unseen")):
        accuracy, attended = correct[part].mean(), on_flag[part][marked[part] >= 0].mean()
        assert accuracy >= 0.9, f"{name} on a {kind}: {what} accuracy {accuracy:.2f}"
        assert attended >= 0.8, f"{name} on a {kind}: the top cell is the flagged one for {attended:.2f} ({what})"


def _counting_data(count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every cell has a random colour; 0 to 4 cells are flagged and the answer is how many."""
    height, width, channels = GRID
    rng = np.random.default_rng(seed)
    flags = rng.integers(0, 5, size=count)
    grid = np.zeros((count, height * width, channels), np.float32)
    grid[..., 1:] = np.eye(COLOURS, dtype=np.float32)[rng.integers(0, COLOURS, size=(count, height * width))]
    for image, flagged in enumerate(flags):
        grid[image, rng.permutation(height * width)[:flagged], 0] = 1.0
    ids = _one_question(count)
    return {QUESTION_IDS: ids, IMAGE_GRID: grid.reshape(count, height, width, channels)}, flags


def test_san_counts_the_flagged_cells():
    """Softmax attention averages the parts, so a count reaches san only as the share of flagged cells
    in its attended code; its answer layers must decode that share (the paper's linear layer alone
    reached 0.58 here)."""
    keras.utils.set_random_seed(0)
    inputs, flags = _counting_data(512, seed=0)
    model = _build("san", dropout=0.0, hidden_units=32, fusion_units=32)
    model.compile(keras.optimizers.Adam(0.01), make_loss("soft"))
    model.fit(inputs, np.eye(ANSWERS, dtype=np.float32)[flags], batch_size=32, epochs=12, verbose=0)

    fresh, fresh_flags = _counting_data(256, seed=1)
    accuracy = (model.predict(fresh, verbose=0).argmax(axis=1) == fresh_flags).mean()
    assert accuracy >= 0.9, f"san counts {accuracy:.2f} of unseen images right"
