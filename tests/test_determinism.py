"""Bit-identical reruns (train.deterministic): the same seed and data give the same bits on CPU.

The runs train the tiny OUT of ``helpers.write_tiny_out`` with dropout, so the seed drives the
initial weights, the (seed, epoch) shuffle and the dropout masks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from vqa import checkpoints, config as config_lib
from vqa import train as vqa_train
from vqa.config import Config, ModelConfig, TrainConfig
from vqa.demo import backbone as demo_backbone
from vqa.demo import data as demo_data
from vqa.errors import VQAError
from vqa.run_folder import load_run_model

from helpers import write_tiny_out

TINY = Config(
    model=ModelConfig(lstm_units=6, lstm_layers=2, hidden_units=12, fusion_units=12, dropout=0.3),
    train=TrainConfig(epochs=2, batch_size=16, learning_rate=0.01, early_stopping_patience=0, seed=3),
)


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    return write_tiny_out(tmp_path_factory.mktemp("out"))


def _all_weights(run: Path) -> list[np.ndarray]:
    """The best model's weights, then the checkpoint's (last epoch's) weights and optimizer state."""
    last = checkpoints.load_checkpoint_model(run)
    return (load_run_model(run).get_weights() + last.get_weights()
            + [np.asarray(v) for v in last.optimizer.variables])


def _assert_identical(run: Path, other: Path) -> None:
    assert (run / "metrics.json").read_bytes() == (other / "metrics.json").read_bytes()
    mine, theirs = _all_weights(run), _all_weights(other)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # bit for bit, not within a tolerance


@pytest.mark.slow
def test_same_seed_and_data_give_identical_bits_even_when_resumed(tiny_out, tmp_path):
    first, second, resumed, other_seed = (tmp_path / name for name in ("first", "second", "resumed", "other"))
    quiet = lambda line: None  # noqa: E731
    vqa_train.train(tiny_out, first, TINY, log=quiet)
    vqa_train.train(tiny_out, second, TINY, log=quiet)
    _assert_identical(first, second)

    # Killed after epoch 1 and resumed: the same bits as the uninterrupted run.
    vqa_train.train(tiny_out, resumed, replace(TINY, train=replace(TINY.train, epochs=1)), log=quiet)
    vqa_train.train(tiny_out, resumed, TINY, log=quiet)
    _assert_identical(first, resumed)

    # The comparison can fail: another seed gives other weights.
    vqa_train.train(tiny_out, other_seed, replace(TINY, train=replace(TINY.train, seed=4, epochs=1)), log=quiet)
    differ = [not np.array_equal(a, b) for a, b in zip(load_run_model(first).get_weights(),
                                                          load_run_model(other_seed).get_weights())]
    assert sum(differ) >= len(differ) - 1  # all but the frozen word vectors


def test_deterministic_setting():
    assert TrainConfig().deterministic is True
    config = config_lib.resolve(None, ["train.deterministic=false"])
    assert config.train.deterministic is False
    with pytest.raises(VQAError, match="train.deterministic must be bool"):
        config_lib.resolve(None, ["train.deterministic=sometimes"])
    # Changing it does not make a killed run a different experiment: it only trades bits for speed.
    assert ("train", "deterministic") in vqa_train.RESUMABLE_CHANGES


@pytest.mark.heavy
def test_demo_backbone_trains_to_identical_bits(tmp_path):
    """The demo's stand-in CNN (batch normalisation, dropout, augmented batches) is repeatable too."""
    data = tmp_path / "demo"
    demo_data.write_demo_dataset(data, train_images=24, val_images=4, seed=1)
    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    for path in paths:
        demo_backbone.train_demo_backbone(data, path, seed=5, epochs=2, batch_size=8, verbose=False)
    mine, theirs = (keras.saving.load_model(path, safe_mode=True).get_weights() for path in paths)
    assert [a.tobytes() for a in mine] == [b.tobytes() for b in theirs]
