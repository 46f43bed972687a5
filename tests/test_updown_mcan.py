"""vqa.updown and vqa.mcan, the region-only models: padding changes nothing, safe-mode loading with the
attention maps, mixed precision, that they learn which box a question asks about, their settings, and
that "auto" reads a grid as regions for them. Every registered model's I/O contract is in test_model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vqa import attention, grid_features, registry
from vqa.config import ModelConfig, check_config, resolve
from vqa.errors import VQAError
from vqa.losses import make_loss
from vqa.names import QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
from vqa.visual import VisualSpec, resolve_source

from helpers import TINY_BACKBONE

NAMES = ("updown", "mcan")
VOCABULARY, DIM, LENGTH = 9, 5, 6
BOXES, PADDED = 6, 2  # real boxes per image, then padded ones with random features
COLOURS = 3
CHANNELS = 2 + COLOURS  # channels 0 and 1 flag one box each, the rest one-hot its colour
TINY = ModelConfig(lstm_units=4, hidden_units=8, heads=2, layers=2, ff_units=16, flat_units=8, fusion_units=6,
                   dropout=0.2)
SPEC = VisualSpec("regions", (CHANNELS,))
# "bias": the box-relations bias and the sinusoid box code, mcan's recipe (vqa.box_relations).
BOX_GEOMETRY = {"none": {"box_relations": "none"}, "bias": {"box_relations": "bias", "box_geometry": "sinusoids"}}
ASKS_FLAG_0, ASKS_FLAG_1 = [3, 4, 0, 0, 0, 0], [3, 5, 6, 0, 0, 0]  # two questions of different lengths


def _embeddings() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(VOCABULARY, DIM)).astype(np.float32)
    vectors[:2] = 0.0
    return vectors


def _build(name: str, length: int = LENGTH, **changes) -> keras.Model:
    config = ModelConfig(**{**TINY.__dict__, "name": name, **changes})
    return registry.build_model(config, _embeddings(), COLOURS, SPEC, length, "sigmoid")


def _run(model: keras.Model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One eager forward pass (inference): cheaper than predict's tracing for a handful of rows."""
    return np.asarray(model(inputs, training=False))


def _maps(model: keras.Model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return _run(attention.attention_model(model), inputs)


def _flagged_boxes(count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Each image has two flagged boxes; the question asks for the colour of one of them.

    Every colour also appears on unflagged boxes, so only attending to the asked box (whose
    position varies) answers; ``PADDED`` padded boxes of random features follow the real ones.

    Returns:
        inputs (features float16, as on disk), answer classes int (count,), asked box int (count,).
    """
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, COLOURS, size=(count, BOXES))
    order = rng.permuted(np.tile(np.arange(BOXES), (count, 1)), axis=1)
    np.put_along_axis(colours, order[:, 2:2 + COLOURS], np.arange(COLOURS)[None], axis=1)
    features = rng.normal(size=(count, BOXES + PADDED, CHANNELS)).astype(np.float32)
    features[:, :BOXES] = 0.0
    features[:, :BOXES, 2:] = np.eye(COLOURS, dtype=np.float32)[colours]
    features[np.arange(count), order[:, 0], 0] = 1.0
    features[np.arange(count), order[:, 1], 1] = 1.0
    mask = np.zeros((count, BOXES + PADDED), np.float32)
    mask[:, :BOXES] = 1.0
    asks_second = rng.integers(0, 2, size=count).astype(bool)
    ids = np.where(asks_second[:, None], np.array([ASKS_FLAG_1]), np.array([ASKS_FLAG_0])).astype(np.int32)
    asked = np.where(asks_second, order[:, 1], order[:, 0])
    inputs = {QUESTION_IDS: ids, REGION_FEATURES: features.astype(np.float16),
              REGION_GEOMETRY: rng.uniform(size=(count, BOXES + PADDED, 5)).astype(np.float32),
              REGION_MASK: mask}
    return inputs, colours[np.arange(count), asked], asked


def _without_padded_boxes(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value if key == QUESTION_IDS else value[:, :BOXES] for key, value in inputs.items()}


@pytest.mark.parametrize("name, dropout, relations", [("updown", 0.2, "none"), ("mcan", 0.2, "none"),
                                                     ("mcan", 0.0, "none"), ("mcan", 0.2, "bias")],
                         ids=["updown", "mcan", "mcan-fused-attention", "mcan-box-relations"])
def test_padded_boxes_and_words_change_nothing(name, dropout, relations):
    """Scores in (0, 1), maps summing to 1 over the real boxes; padded boxes and words, whatever they hold,
    change neither. (Without attention dropout MultiHeadAttention takes the fused dot-product path.)"""
    model = _build(name, dropout=dropout, **BOX_GEOMETRY[relations])
    padded, _, _ = _flagged_boxes(4, seed=1)
    padded[REGION_MASK][0, 3:] = 0.0  # the first image has 3 real boxes and 5 padded ones
    scores = _run(model, padded)
    assert scores.shape == (4, COLOURS) and scores.dtype == np.float32
    assert ((scores > 0) & (scores < 1)).all()
    maps = _maps(model, padded)
    assert maps.shape == (4, 1 if name == "updown" else TINY.glimpses, BOXES + PADDED) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps * (padded[REGION_MASK][:, None, :] == 0), 0.0)
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, rtol=1e-5)
    exact = _without_padded_boxes(padded)
    np.testing.assert_allclose(scores, _run(model, exact), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[..., :BOXES], _maps(model, exact), rtol=1e-5, atol=1e-6)

    # The same weights at a longer padded length, with a padding row that has drifted.
    longer = _build(name, length=LENGTH + 3, dropout=dropout, **BOX_GEOMETRY[relations])
    longer.set_weights(model.get_weights())
    vectors = longer.get_layer("word_embedding").get_weights()[0]
    vectors[0] = 5.0
    longer.get_layer("word_embedding").set_weights([vectors])
    more_words = {**padded, QUESTION_IDS: np.pad(padded[QUESTION_IDS], ((0, 0), (0, 3)))}
    np.testing.assert_allclose(_run(longer, more_words), scores, rtol=1e-5, atol=1e-6)
    if name == "mcan":
        words = keras.Model(longer.inputs, longer.get_layer("question_attention").output)
        word_maps = _run(words, more_words)
        np.testing.assert_array_equal(word_maps * (more_words[QUESTION_IDS][:, None, :] == 0), 0.0)
        np.testing.assert_allclose(word_maps.sum(axis=-1), 1.0, rtol=1e-5)

    # An image without any box (all padding) gets finite scores and an all-zero map.
    empty = {**exact, REGION_MASK: np.zeros_like(exact[REGION_MASK])}
    assert np.isfinite(_run(model, empty)).all()
    np.testing.assert_array_equal(_maps(model, empty), 0.0)


@pytest.mark.parametrize("name, relations", [("updown", "none"), ("mcan", "none"), ("mcan", "bias")])
def test_save_and_load_in_safe_mode_gives_identical_scores_and_maps(tmp_path, name, relations):
    model = _build(name, **BOX_GEOMETRY[relations])
    inputs, _, _ = _flagged_boxes(3, seed=2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = registry.load_model(path)
    assert loaded.name == name
    np.testing.assert_array_equal(_run(loaded, inputs), _run(model, inputs))
    np.testing.assert_array_equal(_maps(loaded, inputs), _maps(model, inputs))


def test_a_fresh_process_loads_mcan_with_its_box_layers(tmp_path):
    """`vqa predict`, `vqa serve` and a resumed run load a model in a process that never built one: every loader
    must register the box layers (vqa.box_relations) itself."""
    import subprocess
    import sys

    path = tmp_path / "model.keras"
    _build("mcan", **BOX_GEOMETRY["bias"]).save(path)
    script = ("import sys; from pathlib import Path; from vqa import registry, run_folder; "
              "run_folder.load_run_model(Path(sys.argv[1]).parent); model = registry.load_model(sys.argv[1]); "
              "print(model.name, sorted({type(layer).__name__ for layer in model.layers} & "
              "{'BoxPairs', 'BoxPlace', 'Sinusoids', 'RelationAttention'}))")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "mcan ['BoxPairs', 'BoxPlace', 'RelationAttention', 'Sinusoids']"


def test_mixed_precision_keeps_scores_and_maps_float32():
    inputs, _, _ = _flagged_boxes(2, seed=3)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for name, relations in (("updown", "none"), ("mcan", "none"), ("mcan", "bias")):
            model = _build(name, **BOX_GEOMETRY[relations])
            scores, maps = _run(model, inputs), _maps(model, inputs)
            assert scores.dtype == np.float32 and maps.dtype == np.float32, name
            assert np.isfinite(scores).all(), name
            np.testing.assert_array_equal(maps[..., BOXES:], 0.0)
            np.testing.assert_allclose(maps.sum(axis=-1), 1.0, rtol=1e-3)
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.slow  # one tiny training each: ~7 s (updown) and ~12 s (mcan) on 2 busy cores
@pytest.mark.parametrize("name", NAMES)
def test_learns_the_colour_of_the_box_the_question_asks_about(name):
    """Trained with the project's soft-score loss, either model answers (chance is 1/3) on images it never
    saw; updown's single map also points at the asked box."""
    keras.utils.set_random_seed(0)
    inputs, answers, asked = _flagged_boxes(512, seed=0)
    model = _build(name, hidden_units=16, layers=1, ff_units=32, flat_units=16, glimpses=1, dropout=0.0,
                   train_embeddings=True, question_rnn="gru")
    model.compile(keras.optimizers.Adam(0.005), make_loss("soft"))
    model.fit(inputs, np.eye(COLOURS, dtype=np.float32)[answers], batch_size=32, epochs=8, verbose=0)

    fresh, fresh_answers, fresh_asked = _flagged_boxes(256, seed=1)
    accuracy = (_run(model, fresh).argmax(axis=1) == fresh_answers).mean()
    assert accuracy >= 0.9, f"{name}: accuracy {accuracy:.2f} on unseen images"
    if name == "updown":
        on_asked = (_maps(model, fresh)[:, 0].argmax(axis=1) == fresh_asked).mean()
        assert on_asked >= 0.8, f"updown: the top box is the asked one for {on_asked:.2f}"


def test_the_settings_are_checked_in_one_sentence():
    with pytest.raises(VQAError, match=r"model.hidden_units=10 must be divisible by model.heads=4 for model.name=mcan"):
        _build("mcan", hidden_units=10, heads=4)
    with pytest.raises(VQAError, match="model.question_rnn must be one of gru, lstm"):
        resolve(overrides=["model.question_rnn=rnn"])
    for setting in ("layers", "heads", "ff_units", "flat_units"):
        with pytest.raises(VQAError, match=f"model.{setting} must be at least 1"):
            resolve(overrides=[f"model.{setting}=0"])
    with pytest.raises(VQAError, match="layers, heads, ff_units and flat_units must all be at least 1"):
        _build("mcan", layers=0)
    for name in NAMES:  # the recipes resolve, pass every rule, and mcan's widths split among its heads
        config = registry.recipe_config(name)
        check_config(config)
        assert config.model.name == name and config.model.hidden_units % config.model.heads == 0


def test_auto_reads_a_lone_grid_as_regions_for_the_region_only_models(tmp_path):
    split = tmp_path / "train2014"
    split.mkdir()
    with pytest.raises(VQAError, match="region_features.h5.*grid_features.h5"):
        resolve_source("auto", "mcan", registry.entry("mcan").reads, split)
    grids = np.random.default_rng(0).normal(size=(2, 3, 3, CHANNELS)).astype(np.float16)
    grid_features.write_grids(grid_features.grid_path(split), [11, 12], grids, TINY_BACKBONE, "test")
    for name in NAMES:
        assert registry.entry(name).reads == ("regions",)
        assert resolve_source("auto", name, registry.entry(name).reads, split) == "grid-regions"
    # A model that reads a grid still reads it as a grid; grid-regions stays a choice by name.
    assert resolve_source("auto", "san", registry.entry("san").reads, split) == "grid"
    assert resolve_source("grid-regions", "san", registry.entry("san").reads, split) == "grid-regions"
