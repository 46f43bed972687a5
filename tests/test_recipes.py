"""Recipes: the learning-rate schedules at their boundaries, batch sizes and early stopping, computed by hand,
and each model's registry recipe reaching the resolved config (under a config file, flags and --set)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vqa import registry
from vqa.callbacks import early_stop
from vqa.cli import build_parser
from vqa.config import TrainConfig
from vqa.errors import VQAError
from vqa.train_settings import train_config
from vqa.train import batch_size_for, learning_rate, make_optimizer, stretch_factor, stretched


def _rate(schedule, step: int) -> float:
    return float(np.asarray(schedule(step))) if callable(schedule) else float(schedule)


def test_warmup_step_gives_mcans_rate_at_every_boundary():
    """MCAN: x0.25, 0.5, 0.75 in epochs 1-3, then the rate, x0.2 after epochs 10 and 12 (7 steps an epoch)."""
    config = TrainConfig(learning_rate=1e-4, lr_schedule="warmup-step", warmup_epochs=3, lr_decay_rate=0.2,
                         lr_decay_at="10,12", epochs=13)
    schedule = learning_rate(config, steps_per_epoch=7)
    expected = {0: 0.25e-4, 6: 0.25e-4, 7: 0.5e-4, 13: 0.5e-4, 14: 0.75e-4, 20: 0.75e-4, 21: 1e-4, 69: 1e-4,
                70: 0.2e-4, 83: 0.2e-4, 84: 0.04e-4, 90: 0.04e-4}
    for step, rate in expected.items():
        assert _rate(schedule, step) == pytest.approx(rate, rel=1e-6), step


def test_cosine_warms_up_linearly_then_decays_to_zero():
    config = TrainConfig(learning_rate=1e-3, lr_schedule="cosine", warmup_epochs=2, epochs=10)
    schedule = learning_rate(config, steps_per_epoch=5)  # 10 warmup steps of 50
    assert _rate(schedule, 0) == pytest.approx(0.0, abs=1e-12)
    assert _rate(schedule, 5) == pytest.approx(0.5e-3, rel=1e-5)
    assert _rate(schedule, 10) == pytest.approx(1e-3, rel=1e-5)
    assert _rate(schedule, 30) == pytest.approx(0.5e-3, rel=1e-4)  # half way through the 40 decay steps
    assert _rate(schedule, 50) == pytest.approx(0.0, abs=1e-9)
    assert _rate(learning_rate(TrainConfig(learning_rate=2e-3), 5), 123) == 2e-3


def test_step_decay_and_decay_inside_the_warmup():
    schedule = learning_rate(TrainConfig(learning_rate=1.0, lr_schedule="step", lr_decay_epochs=2,
                                         lr_decay_rate=0.5), steps_per_epoch=4)
    assert [_rate(schedule, step) for step in (0, 7, 8, 15, 16)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(VQAError, match="decays during the warmup"):
        learning_rate(TrainConfig(lr_schedule="warmup-step", warmup_epochs=3, lr_decay_at="2"), 4)


def test_batches_shrink_so_a_small_split_still_takes_enough_steps():
    config = TrainConfig(batch_size=256, min_batches=100)
    assert batch_size_for(config, 443_757) == 256  # full train2014: the recipe's batch
    assert batch_size_for(config, 25_600) == 256
    assert batch_size_for(config, 8_000) == 80  # 100 batches of 80
    assert batch_size_for(config, 1_000) == 32  # never below 32
    assert batch_size_for(TrainConfig(batch_size=16, min_batches=100), 1_000) == 16  # never above batch_size
    assert batch_size_for(TrainConfig(batch_size=256, min_batches=0), 1_000) == 256


def test_min_steps_stretches_the_run_and_its_schedule_by_a_whole_factor():
    mcan = registry.recipe_config("mcan").train  # 13 epochs, warmup 3, decay after 10 and 12, 4,000 steps
    assert stretch_factor(mcan, steps_per_epoch=6_934) == 1  # VQA v2 train at 64: the paper's schedule
    assert stretch_factor(mcan, steps_per_epoch=308) == 1  # 13 x 308 = 4,004 steps
    assert stretch_factor(mcan, steps_per_epoch=307) == 2  # 3,991: one whole factor more
    assert stretch_factor(mcan, steps_per_epoch=183) == 2  # the relational scenes: 2,379 steps -> 4,758
    assert stretch_factor(mcan, steps_per_epoch=100) == 4  # 1,300 -> 5,200
    assert stretch_factor(TrainConfig(epochs=5, min_steps=0), steps_per_epoch=1) == 1  # 0: off
    double = stretched(mcan, 2)
    assert (double.epochs, double.warmup_epochs, double.lr_decay_at) == (26, 6, "20,24")
    assert double.lr_decay_epochs == mcan.lr_decay_epochs  # only what its schedule reads
    assert stretched(mcan, 1) is mcan
    steps = stretched(TrainConfig(epochs=4, lr_schedule="step", lr_decay_epochs=3, warmup_epochs=1), 3)
    assert (steps.epochs, steps.lr_decay_epochs, steps.warmup_epochs) == (12, 9, 1)
    cosine = stretched(TrainConfig(epochs=4, lr_schedule="cosine", warmup_epochs=1, lr_decay_at="2"), 2)
    assert (cosine.epochs, cosine.warmup_epochs, cosine.lr_decay_at) == (8, 2, "2")
    # MCAN's rate, by hand, at 7 steps an epoch: x k/7 in epochs 1-6, then 1e-4, x0.2 after 20, x0.04 after 24.
    schedule = learning_rate(double, steps_per_epoch=7)
    expected = {0: 1e-4 / 7, 6: 1e-4 / 7, 7: 2e-4 / 7, 35: 6e-4 / 7, 41: 6e-4 / 7, 42: 1e-4, 139: 1e-4,
                140: 0.2e-4, 167: 0.2e-4, 168: 0.04e-4, 181: 0.04e-4}
    for step, rate in expected.items():
        assert _rate(schedule, step) == pytest.approx(rate, rel=1e-6), step


def test_explicit_epochs_are_trained_exactly_unless_min_steps_is_set_too(tmp_path):
    assert _resolved("--model", "mcan").train.min_steps == 4000
    assert _resolved("--model", "mcan", "--epochs", "2").train.min_steps == 0
    assert _resolved("--model", "mcan", "--set", "train.epochs=2").train.min_steps == 0
    assert _resolved("--model", "mcan", "--epochs", "2", "--set", "train.min_steps=50").train.min_steps == 50
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"train": {"epochs": 2}}))
    assert _resolved("--model", "mcan", "--config", str(config_file)).train.min_steps == 0
    assert _resolved("--model", "mcan", "--set", "train.batch_size=32").train.min_steps == 4000


def test_early_stopping_waits_for_patience_and_the_minimum_steps():
    assert not early_stop(epoch=8, best_epoch=3, patience=5, steps=999, min_steps=1000)  # too few steps yet
    assert early_stop(epoch=8, best_epoch=3, patience=5, steps=1000, min_steps=1000)
    assert not early_stop(epoch=7, best_epoch=3, patience=5, steps=5000, min_steps=1000)  # 4 epochs only
    assert not early_stop(epoch=30, best_epoch=1, patience=0, steps=5000, min_steps=0)  # patience 0: never


def test_optimizers_take_the_recipes_settings():
    adamax = make_optimizer(TrainConfig(optimizer="adamax", learning_rate=2e-3, clipnorm=0.25,
                                        adam_beta_2=0.98, adam_epsilon=1e-9), steps_per_epoch=10)
    assert type(adamax).__name__ == "Adamax"
    assert (adamax.global_clipnorm, adamax.beta_2, adamax.epsilon) == (0.25, 0.98, 1e-9)


def _resolved(*argv: str):
    return train_config(build_parser().parse_args(["train", "--data", "OUT", "--out", "RUN", *argv]))


def test_each_models_recipe_is_its_runs_starting_point(tmp_path):
    for name, entry in registry.MODELS.items():
        config = _resolved("--model", name)
        for section, settings in entry.recipe.items():
            for key, value in settings.items():
                assert getattr(getattr(config, section), key) == value, (name, section, key)
    assert _resolved("--model", "san").model.dropout == registry.MODELS["san"].recipe["model"]["dropout"]
    # A config file, the flags and --set all stand above the recipe.
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"model": {"name": "multi-glimpse"}, "train": {"batch_size": 64}}))
    config = _resolved("--config", str(config_file), "--epochs", "3", "--set", "model.dropout=0.3")
    assert (config.model.name, config.train.batch_size, config.train.epochs, config.model.dropout) == (
        "multi-glimpse", 64, 3, 0.3)
    assert config.model.train_embeddings == registry.MODELS["multi-glimpse"].recipe["model"]["train_embeddings"]
