"""vqa.train: the run directory, resuming, the loss and metric, devices and backends.

Everything trains on the tiny OUT of ``test_dataset.write_tiny_out`` (60 training
questions whose image features carry the answer) with LSTMs of 6 units.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from vqa import losses
from vqa import train as vqa_train
from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
from vqa.errors import VQAError
from vqa.names import IMAGE_FEATURES, QUESTION_IDS
from vqa.registry import load_model

from helpers import ANSWERS, write_tiny_out

REPO = Path(__file__).resolve().parents[1]
TINY = Config(
    model=ModelConfig(lstm_units=6, lstm_layers=2, hidden_units=12, fusion_units=12, dropout=0.3),
    train=TrainConfig(epochs=2, batch_size=16, learning_rate=0.01, early_stopping_patience=0, seed=7),
)
TIMING_COLUMNS = {"samples_per_s", "epoch_time_s"}


def _config(**train_changes) -> Config:
    return replace(TINY, train=replace(TINY.train, **train_changes))


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    return write_tiny_out(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def finished_run(tiny_out, tmp_path_factory):
    """A 2-epoch run of the default model, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    lines: list[str] = []
    metrics = vqa_train.train(tiny_out, run_dir, TINY, log=lines.append)
    return run_dir, metrics, lines


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]


def _weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path, safe_mode=True).get_weights()


def test_soft_score_loss_by_hand():
    """Binary cross-entropy against soft scores, summed over answers and averaged over questions."""
    scores = np.array([[1.0, 0.3, 0.0], [0.0, 0.0, 0.6]], np.float32)
    predicted = np.array([[0.9, 0.2, 0.1], [0.5, 0.4, 0.7]], np.float32)
    log = math.log
    row1 = -(log(0.9) + (0.3 * log(0.2) + 0.7 * log(0.8)) + log(0.9))
    row2 = -(log(0.5) + log(0.6) + (0.6 * log(0.7) + 0.4 * log(0.3)))
    loss = float(losses.make_loss("soft")(scores, predicted))
    assert loss == pytest.approx((row1 + row2) / 2, rel=1e-5)
    assert loss == pytest.approx(1.37466, abs=1e-5)  # (0.84975 + 1.89957) / 2


def test_official_accuracy_and_training_metric():
    score_indices = np.array([[2, 0, -1], [1, -1, -1], [3, 1, -1]])
    score_values = np.array([[1.0, 0.3, 0.0], [0.6, 0.0, 0.0], [0.9, 0.3, 0.0]], np.float32)
    predicted = np.array([0, 2, 1])
    np.testing.assert_allclose(losses.official_accuracy(predicted, score_indices, score_values), [0.3, 0.0, 0.3])

    # The training metric sees the same numbers through dense targets, in percent.
    dense = np.zeros((3, 4), np.float32)
    for row in range(3):
        for index, value in zip(score_indices[row], score_values[row]):
            if index >= 0:
                dense[row, index] = value
    scores = np.eye(4, dtype=np.float32)[predicted] * 0.8 + 0.05
    metric = losses.VQAAccuracy()
    metric.update_state(dense, scores)
    assert float(metric.result()) == pytest.approx(20.0)
    exact = losses.VQAAccuracy(sparse_targets=True)
    exact.update_state(np.array([0, 1, 1]), scores)
    assert exact.name == "answer_accuracy" and float(exact.result()) == pytest.approx(200 / 3)


def test_learning_rate_schedules():
    step = vqa_train.learning_rate(replace(TINY.train, lr_schedule="step", lr_decay_epochs=2, lr_decay_rate=0.5), 10)
    assert [float(step(s)) for s in (0, 19, 20, 40)] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    cosine = vqa_train.learning_rate(replace(TINY.train, lr_schedule="cosine", epochs=4), 10)
    assert [float(cosine(s)) for s in (0, 20, 40)] == pytest.approx([0.01, 0.005, 0.0], abs=1e-7)
    assert vqa_train.learning_rate(TINY.train, 10) == 0.01
    with pytest.raises(VQAError, match="lr_schedule"):
        vqa_train.learning_rate(replace(TINY.train, lr_schedule="linear"), 10)


def test_run_directory_layout(finished_run, tiny_out):
    run_dir, metrics, lines = finished_run
    for name in ("model.keras", "config.json", "run.json", "answers.json", "vocab.json", "backbone.json",
                 "history.csv", "metrics.json", "model_summary.txt", "checkpoints/last.keras",
                 "checkpoints/state.json"):
        assert (run_dir / name).is_file(), name
    run = json.loads((run_dir / "run.json").read_text())
    assert run == {"format_version": 1, "data_dir": str(tiny_out.resolve()), "lang": "en", "max_question_length": 6,
                   "feature_dim": 12, "loss": "soft", "num_answers": len(ANSWERS), "model": "deeper-lstm-norm-i",
                   "best_epoch": metrics["best_epoch"], "completed": True, "features": "fc7", "grid_shape": None}
    assert json.loads((run_dir / "config.json").read_text())["model"]["lstm_units"] == 6
    if keras.backend.backend() == "tensorflow":  # TensorBoard event files, one folder per phase
        assert list((run_dir / "logs").rglob("events.out.tfevents.*")), "no TensorBoard logs"
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert metrics["num_train_questions"] == 60 and metrics["num_train_missing_images"] == 2
    assert metrics["num_train_without_answer"] == 2 and metrics["num_val_missing_images"] == 1
    assert {"val_vqa_accuracy", "val_vqa_accuracy_yes_no", "val_vqa_accuracy_other"} <= set(metrics)

    history = _history(run_dir)
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert {"loss", "vqa_accuracy", "val_vqa_accuracy", "learning_rate"} <= set(history[0])
    assert any("epoch 2/2" in line and "val_vqa_accuracy" in line and "samples/s" in line for line in lines)

    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and state["completed"] and state["seed"] == 7
    with zipfile.ZipFile(run_dir / "checkpoints" / "last.keras") as archive:
        assert json.loads(archive.read("vqa_state.json"))["epoch"] == 2

    # The best model loads in safe mode, without optimizer state, and answers every question.
    model = load_model(run_dir / "model.keras")
    with h5py.File(tiny_out / "val2014" / "questions.h5") as f:
        token_ids = f["token_ids"][:4]
    scores = model.predict({QUESTION_IDS: token_ids, IMAGE_FEATURES: np.zeros((4, 12), np.float16)}, verbose=0)
    assert scores.shape == (4, len(ANSWERS))
    assert (run_dir / "model.keras").stat().st_size < (run_dir / "checkpoints" / "last.keras").stat().st_size


def test_rerunning_a_complete_run_does_nothing(finished_run, tiny_out):
    run_dir, metrics, _ = finished_run
    checkpoint = run_dir / "checkpoints" / "last.keras"
    before = checkpoint.stat().st_mtime_ns
    lines: list[str] = []
    assert vqa_train.train(tiny_out, run_dir, TINY, log=lines.append) == metrics
    assert "complete" in lines[0] and checkpoint.stat().st_mtime_ns == before


def test_resume_refuses_a_different_experiment(finished_run, tiny_out):
    run_dir, _, _ = finished_run
    changed = replace(_config(epochs=3), model=replace(TINY.model, lstm_units=8))
    with pytest.raises(VQAError, match="model.lstm_units=6"):
        vqa_train.train(tiny_out, run_dir, changed, log=lambda line: None)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(finished_run, tiny_out, tmp_path):
    """1 epoch, "killed", re-run asking for 2 == 2 epochs uninterrupted (dropout and shuffle included)."""
    run_dir, metrics, _ = finished_run
    resumed = tmp_path / "resumed"
    vqa_train.train(tiny_out, resumed, _config(epochs=1), log=lambda line: None)
    lines: list[str] = []
    resumed_metrics = vqa_train.train(tiny_out, resumed, TINY, log=lines.append)
    assert any("resuming" in line and "after epoch 1" in line for line in lines)

    for mine, theirs in zip(_weights(resumed / "checkpoints" / "last.keras"),
                            _weights(run_dir / "checkpoints" / "last.keras")):
        np.testing.assert_array_equal(mine, theirs)
    assert _history(resumed) == _history(run_dir)
    drop = TIMING_COLUMNS | {"samples_per_s"}
    assert {k: v for k, v in resumed_metrics.items() if k not in drop} == {
        k: v for k, v in metrics.items() if k not in drop}


@pytest.mark.slow
def test_min_steps_makes_a_short_run_longer_and_a_killed_one_resumes(finished_run, tiny_out, tmp_path):
    """1 epoch at train.min_steps of one epoch's steps, "killed"; re-run at twice the steps: 2 epochs, the same
    weights as 2 epochs asked for, and the run's config says what it trained."""
    from vqa import config as config_lib

    run_dir, metrics, _ = finished_run
    steps = metrics["steps_per_epoch"]
    stretched = tmp_path / "stretched"
    assert vqa_train.train(tiny_out, stretched, _config(epochs=1, min_steps=steps),
                           log=lambda line: None)["epochs_done"] == 1
    lines: list[str] = []
    resumed = vqa_train.train(tiny_out, stretched, _config(epochs=1, min_steps=2 * steps), log=lines.append)
    assert any(f"train.min_steps={2 * steps}: 1 epochs of {steps} steps are only {steps}," in line
               and "2 x as many epochs (2)" in line for line in lines), lines
    assert resumed["epochs_done"] == 2 and any("after epoch 1" in line for line in lines)
    for mine, theirs in zip(_weights(stretched / "checkpoints" / "last.keras"),
                            _weights(run_dir / "checkpoints" / "last.keras")):
        np.testing.assert_array_equal(mine, theirs)
    saved = config_lib.load_config(stretched).train
    assert (saved.epochs, saved.min_steps) == (2, 2 * steps)


@pytest.mark.slow
def test_default_model_overfits_and_beats_the_blind_model(tiny_out, tmp_path):
    config = _config(epochs=20, learning_rate=0.02)
    config = replace(config, model=replace(config.model, dropout=0.0))
    image = vqa_train.train(tiny_out, tmp_path / "image", config, log=lambda line: None)
    history = _history(tmp_path / "image")
    assert float(history[-1]["loss"]) < 0.5 * float(history[0]["loss"])
    assert float(history[-1]["vqa_accuracy"]) >= 95.0  # the official metric on the training questions

    blind_config = replace(config, model=replace(config.model, name="question-only"))
    blind_lines: list[str] = []
    blind = vqa_train.train(tiny_out, tmp_path / "blind", blind_config, log=blind_lines.append)
    assert image["val_vqa_accuracy"] > blind["val_vqa_accuracy"] + 20
    # A blind run reads no image, so no question misses one: only the two without a vocabulary answer are left out.
    assert blind_lines[0] == "question-only reads no image"
    assert json.loads((tmp_path / "blind" / "run.json").read_text())["features"] == "none"
    assert (blind["num_train_questions"], blind["num_train_missing_images"]) == (62, 0)


def test_softmax_loss_and_early_stopping(tiny_out, tmp_path):
    """A learning rate too small to change the top answers: validation never improves, so
    patience 1 stops the 5-epoch run after epoch 2, and a re-run says it is complete."""
    config = _config(loss="softmax", epochs=5, learning_rate=1e-9, early_stopping_patience=1,
                     early_stopping_min_steps=0)  # the tiny split's 8 steps an epoch would never reach the default
    # question-only: no BatchNormalization, whose moving statistics would change the answers at any rate
    config = replace(config, model=replace(config.model, name="question-only"))
    metrics = vqa_train.train(tiny_out, tmp_path / "run", config, log=lambda line: None)
    assert metrics["stopped_early"] and metrics["epochs_done"] == 2 and metrics["best_epoch"] == 1
    assert "answer_accuracy" in _history(tmp_path / "run")[0]
    model = load_model(tmp_path / "run" / "model.keras")
    scores = model.predict({QUESTION_IDS: np.ones((2, 6), np.int32), IMAGE_FEATURES: np.ones((2, 12))},
                           verbose=0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    lines: list[str] = []
    vqa_train.train(tiny_out, tmp_path / "run", replace(config, train=replace(config.train, epochs=9)),
                    log=lines.append)
    assert "stopped early" in lines[0]


def test_mixed_precision_keeps_float32_scores(tiny_out, tmp_path):
    config = _config(epochs=1, mixed_precision=True)
    vqa_train.train(tiny_out, tmp_path / "run", config, log=lambda line: None)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    model = load_model(tmp_path / "run" / "model.keras")
    assert model.get_layer("question_lstm_1").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("answer_scores").dtype_policy.name == "float32"
    scores = model.predict({QUESTION_IDS: np.ones((2, 6), np.int32), IMAGE_FEATURES: np.ones((2, 12))},
                           verbose=0)
    assert scores.dtype == np.float32


def test_user_errors(tmp_path, tiny_out):
    with pytest.raises(VQAError, match="vqa preprocess"):
        vqa_train.train(tmp_path / "not_preprocessed", tmp_path / "run", TINY, log=lambda line: None)
    unknown = replace(TINY, model=replace(TINY.model, name="transformer"))
    with pytest.raises(VQAError, match="unknown model 'transformer'.*deeper-lstm-norm-i"):
        vqa_train.train(tiny_out, tmp_path / "run", unknown, log=lambda line: None)
    with pytest.raises(VQAError, match="split 'val2017'"):
        vqa_train.train(tiny_out, tmp_path / "run", replace(TINY, data=DataConfig(val_split="val2017")),
                        log=lambda line: None)


def _run_python(script: str, env_changes: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "VQA_NO_PROGRESS": "1", "PYTHONPATH": str(REPO), **env_changes}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
@pytest.mark.heavy
def test_data_parallel_over_two_logical_cpus(tiny_out, tmp_path):
    """devices=all mirrors the model over two logical CPU devices (set before TensorFlow starts)."""
    script = f"""
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from dataclasses import replace
        from vqa.config import Config, ModelConfig, TrainConfig
        from vqa.registry import load_model
        from vqa.train import train
        config = Config(model=ModelConfig(lstm_units=6, hidden_units=12, fusion_units=12, dropout=0.0),
                        train=TrainConfig(epochs=4, batch_size=16, learning_rate=0.02, devices="all",
                                          early_stopping_patience=0))
        lines = []
        metrics = train({str(tiny_out)!r}, {str(tmp_path / "run")!r}, config, log=lines.append)
        model = load_model({str(tmp_path / "run" / "model.keras")!r})
        scores = model.predict({{{QUESTION_IDS!r}: np.ones((3, 6), np.int32),
                                 {IMAGE_FEATURES!r}: np.ones((3, 12), np.float32)}}, verbose=0)
        print(json.dumps({{"lines": lines, "metrics": metrics, "shape": list(scores.shape),
                           "finite": bool(np.isfinite(scores).all())}}))
    """
    result = _run_python(script, {"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert any("MirroredStrategy over 2 CPU replicas" in line for line in report["lines"])
    assert report["shape"] == [3, len(ANSWERS)] and report["finite"]
    history = _history(tmp_path / "run")
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    assert report["metrics"]["train_accuracy"] > 40.0


@pytest.mark.slow
@pytest.mark.heavy
def test_trains_and_predicts_on_jax(tiny_out, tmp_path):
    pytest.importorskip("jax")
    script = f"""
        import json, keras, numpy as np
        from vqa.config import Config, ModelConfig, TrainConfig
        from vqa.registry import load_model
        from vqa.train import train
        config = Config(model=ModelConfig(lstm_units=6, hidden_units=12, fusion_units=12, dropout=0.2),
                        train=TrainConfig(epochs=2, batch_size=16, learning_rate=0.02))
        metrics = train({str(tiny_out)!r}, {str(tmp_path / "run")!r}, config, log=lambda line: None)
        model = load_model({str(tmp_path / "run" / "model.keras")!r})
        scores = model.predict({{{QUESTION_IDS!r}: np.ones((3, 6), np.int32),
                                 {IMAGE_FEATURES!r}: np.ones((3, 12), np.float16)}}, verbose=0)
        print(json.dumps({{"backend": keras.backend.backend(), "shape": list(scores.shape),
                           "val": metrics["val_vqa_accuracy"]}}))
    """
    result = _run_python(script, {"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["shape"] == [3, len(ANSWERS)]
