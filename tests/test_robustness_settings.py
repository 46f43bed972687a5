"""Robustness (issue #11): settings out of range, a non-finite loss, strict JSON, path errors, log noise.

Every bad setting is refused in one sentence before TensorFlow loads; a loss that becomes NaN
stops training in one sentence; every JSON file is strict JSON; an OSError names the user's
path (never a hidden temporary file) and says what to do; TensorFlow's C++ start-up lines stay
off the screen unless ``--debug``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest

from helpers import write_official_split, write_tiny_out
from vqa import config as config_lib
from vqa import storage, text
from vqa.cli import main
from vqa.config import Config, ModelConfig, TrainConfig
from vqa.errors import VQAError
from vqa.layout import annotations_filename, questions_filename

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.lstm_units=6", "--set", "model.hidden_units=12", "--set", "model.fusion_units=12",
        "--set", "train.batch_size=16", "--set", "train.early_stopping_patience=0", "--seed", "7"]
TINY_CONFIG = Config(model=ModelConfig(lstm_units=6, hidden_units=12, fusion_units=12),
                     train=TrainConfig(epochs=1, batch_size=16, learning_rate=0.01, early_stopping_patience=0))
# What TensorFlow's C++ code prints at start-up (issue #11): none of it may reach a user without --debug.
TF_START_LINES = ("absl::InitializeLog", "cudart_stub", "cuInit", "port.cc", "cpu_feature_guard")


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def _strict_json(text_: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: bare {constant}")

    return json.loads(text_, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    return write_tiny_out(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def tiny_run(tiny_out, tmp_path_factory) -> Path:
    from vqa.train import train

    run_dir = tmp_path_factory.mktemp("run") / "run"
    train(tiny_out, run_dir, TINY_CONFIG, log=lambda message: None)
    return run_dir


@pytest.fixture
def no_backend(monkeypatch):
    """Importing vqa.train, vqa.evaluate's model loading or the backend fails: what passes ran without them."""
    for name in ("vqa.train", "keras", "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)


# ---------------------------------------------------------------------------------------------
# Ranges

def test_every_numeric_setting_has_a_range():
    missing = []
    for section, cls in (("preprocess", config_lib.PreprocessConfig), ("data", config_lib.DataConfig),
                         ("model", ModelConfig), ("train", TrainConfig)):
        hints = typing.get_type_hints(cls)
        missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls)
                    if hints[f.name] in (int, float) and f"{section}.{f.name}" not in config_lib.RULES]
    assert not missing, f"settings without a range: {missing}"
    config_lib.check_config(Config())  # the defaults are in range
    config_lib.check_config(config_lib.PreprocessSettings())


@pytest.mark.parametrize("item, rule", [
    ("train.learning_rate=nan", "a finite number above 0"),
    ("train.learning_rate=inf", "a finite number above 0"),
    ("train.learning_rate=-0.001", "a finite number above 0"),
    ("train.clipnorm=-1", "a finite number above 0"),
    ("train.clipnorm=nan", "a finite number above 0"),
    ("train.val_limit=-50", "at least 0"),
    ("train.epochs=0", "at least 1"),
    ("train.batch_size=0", "at least 1"),
    ("train.workers=0", "at least 1"),
    ("train.lr_decay_rate=0", "a number in (0, 1]"),
    ("train.lr_decay_rate=1.5", "a number in (0, 1]"),
    ("train.lr_decay_epochs=0", "at least 1"),
    ("train.early_stopping_patience=-1", "at least 0"),
    ("train.seed=-1", "from 0 to 4294967295"),
    ("train.loss=mse", "one of soft, softmax"),
    ("train.lr_schedule=linear", "one of constant, cosine, step, warmup-step"),
    ("train.devices=0", "auto, all, cpu or a number of devices (1 or more)"),
    ("train.devices=gpu", "auto, all, cpu or a number of devices (1 or more)"),
    ("model.dropout=1", "a number in [0, 1)"),
    ("model.dropout=nan", "a number in [0, 1)"),
    ("model.lstm_units=0", "at least 1"),
    ("model.lstm_layers=0", "at least 1"),
    ("data.features=pool5", "one of auto, fc7, grid-mean, region-mean, grid, regions, grid-regions"),
])
def test_out_of_range_settings_are_refused_in_one_sentence(item, rule):
    key = item.partition("=")[0]
    with pytest.raises(VQAError) as caught:
        config_lib.resolve(None, [item])
    assert str(caught.value) == f"--set {item}: {key} must be {rule}."


@pytest.mark.parametrize("item, rule", [
    ("preprocess.limit=-1", "at least 0"), ("preprocess.top_answers=0", "at least 1"),
    ("preprocess.max_question_length=0", "at least 1"), ("preprocess.batch_size=0", "at least 1"),
    ("preprocess.feature_dtype=float64", "one of float16, float32"),
])
def test_out_of_range_preprocess_settings(item, rule):
    with pytest.raises(VQAError) as caught:
        config_lib.resolve(None, [item], base=config_lib.PreprocessSettings())
    assert str(caught.value) == f"--set {item}: {item.partition('=')[0]} must be {rule}."


def test_a_config_file_and_flags_are_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"val_limit": -50}}))
    with pytest.raises(VQAError) as caught:
        config_lib.resolve(path)
    assert str(caught.value) == f"{path}: train.val_limit must be at least 0, not -50."
    with pytest.raises(VQAError) as caught:
        config_lib.from_dict({"train": {"epochs": 0}}, source="--epochs")
    assert str(caught.value) == "--epochs must be at least 1, not 0."


def test_train_refuses_a_config_built_in_code(tiny_out, tmp_path):
    from vqa.train import train

    config = dataclasses.replace(TINY_CONFIG, train=dataclasses.replace(TINY_CONFIG.train, clipnorm=-1.0))
    with pytest.raises(VQAError, match=r"^train.clipnorm must be a finite number above 0, not -1.0.$"):
        train(tiny_out, tmp_path / "run", config, log=lambda message: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("item", ["train.learning_rate=nan", "train.val_limit=-50", "train.clipnorm=-1"])
def test_vqa_train_checks_settings_before_tensorflow_loads(item, tiny_out, tmp_path, no_backend, capsys):
    code, err = _cli(["train", "--data", tiny_out, "--out", tmp_path / "run", "--set", item], capsys)
    assert code == 1
    assert _error_line(err).startswith(f"error: --set {item}: ")
    assert not (tmp_path / "run").exists()


def test_vqa_train_flags_are_checked_before_tensorflow_loads(tiny_out, tmp_path, no_backend, capsys):
    code, err = _cli(["train", "--data", tiny_out, "--out", tmp_path / "run", "--epochs", "0"], capsys)
    assert (code, _error_line(err)) == (1, "error: --epochs must be at least 1, not 0.")
    code, err = _cli(["train", "--data", tiny_out, "--out", tmp_path / "run", "--devices", "-2"], capsys)
    assert (code, _error_line(err)) == (
        1, "error: --devices must be auto, all, cpu or a number of devices (1 or more), not -2.")


def test_evaluate_batch_size_and_predict_top_k_are_checked_first(tmp_path, no_backend, capsys):
    # A run that does not exist: the option is what the user typed wrong first, and nothing is loaded for it.
    code, err = _cli(["evaluate", "--run", tmp_path / "nowhere", "--batch-size", "0"], capsys)
    assert (code, _error_line(err)) == (1, "error: --batch-size must be at least 1, not 0.")
    code, err = _cli(["predict", "--run", tmp_path / "nowhere", "--question", "what?", "--top-k", "0"], capsys)
    assert (code, _error_line(err)) == (1, "error: --top-k must be at least 1, not 0.")


def test_evaluate_batch_size_0_of_a_real_run_never_loads_tensorflow(tiny_run):
    code = ("import sys; from vqa.cli import main; code = main(sys.argv[1:]); "
            "print('tensorflow loaded:', 'tensorflow' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "evaluate", "--run", str(tiny_run), "--batch-size", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == "tensorflow loaded: False"
    assert _error_line(done.stderr) == "error: --batch-size must be at least 1, not 0."


# ---------------------------------------------------------------------------------------------
# A loss that becomes NaN

def test_a_nan_loss_stops_training_in_one_sentence(tmp_path, capsys):
    out = write_tiny_out(tmp_path / "out")
    vectors = text.read_embeddings(out)
    vectors[:] = np.nan  # every question embeds to NaN: the first batch's loss is NaN
    text.write_embeddings(out, vectors)
    run = tmp_path / "run"
    code, err = _cli(["train", "--data", out, "--out", run, "--epochs", "2", *TINY], capsys)
    assert code == 1
    assert _error_line(err) == (f"error: training stopped at epoch 1 batch 1: the loss became nan; lower "
                                f"train.learning_rate or check the data; {run} holds no checkpoint yet.")
    assert not (run / "metrics.json").exists() and not (run / "model.keras").exists()
    assert not list(run.rglob("*.keras"))


# ---------------------------------------------------------------------------------------------
# Strict JSON

def test_write_json_writes_strict_json(tmp_path):
    path = tmp_path / "m.json"
    storage.write_json(path, {"loss": float("nan"), "rows": [1.5, float("inf"), {"x": -float("inf")}],
                              "pair": (np.float64("nan"), 2)})
    assert _strict_json(path.read_text()) == {"loss": None, "rows": [1.5, None, {"x": None}], "pair": [None, 2]}
    assert storage.json_text({"a": float("nan")}) == '{"a": null}'


def test_every_json_of_train_and_evaluate_is_strict(tiny_out, tiny_run, capsys):
    code, _ = _cli(["evaluate", "--run", tiny_run, "--batch-size", "8"], capsys)
    assert code == 0
    files = sorted([*tiny_run.rglob("*.json"), *tiny_out.rglob("*.json")])
    assert {"config.json", "metrics.json", "run.json", "preprocess.json"} <= {path.name for path in files}
    assert any("eval" in path.parts for path in files)
    for path in files:
        _strict_json(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Permission and path errors

def test_atomic_writes_name_the_final_file_not_the_temporary_one(tmp_path, monkeypatch):
    folder = tmp_path / "a folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        storage.write_json(folder, {"a": 1})
    assert caught.value.filename == str(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["a folder"]  # no temporary file left behind

    def refused(prefix="", suffix="", dir=None):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as caught:
        storage.write_json(tmp_path / "backbone.json", {"a": 1})
    assert caught.value.filename == str(tmp_path / "backbone.json")


@pytest.fixture
def score_files(tmp_path) -> list:
    write_official_split(tmp_path / "raw", "val2014", [{"image_id": 1, "question": "what?", "answers": ["a"] * 10}],
                         images=False)
    questions = tmp_path / "raw" / questions_filename("val2014")
    annotations = tmp_path / "raw" / annotations_filename("val2014")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": 1000, "answer": "a"}]))
    return ["score", "--questions", questions, "--annotations", annotations, "--results", results]


def test_score_per_question_into_a_folder_or_without_permission(score_files, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "scores"
    folder.mkdir()
    code, err = _cli([*score_files, "--per-question", folder], capsys)
    assert (code, _error_line(err)) == (1, f"error: {folder} is a folder: pass a file name.")

    # Tests run as root, where chmod stops nothing: refuse the temporary file as a read-only folder would.
    def refused(prefix="", suffix="", dir=None):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    target = tmp_path / "locked" / "per_question.json"
    code, err = _cli([*score_files, "--per-question", target], capsys)
    assert code == 1
    assert _error_line(err) == (f"error: Permission denied ({target}): you cannot write there: choose a folder "
                                "you can write to or fix its permissions.")


def test_train_out_that_is_a_file(tiny_out, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "run"):
        code, err = _cli(["train", "--data", tiny_out, "--out", out, "--epochs", "1", *TINY], capsys)
        assert (code, _error_line(err)) == (1, f"error: {afile} exists and is not a folder: pass a folder path.")
    assert afile.read_text() == "mine"


def test_evaluate_results_into_a_folder(tiny_run, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    code, err = _cli(["evaluate", "--run", tiny_run, "--results", folder], capsys)
    assert (code, _error_line(err)) == (1, f"error: {folder} is a folder: pass a file name.")
    assert list(folder.iterdir()) == []


def test_read_only_file_system_gets_advice(monkeypatch, capsys, tmp_path):
    import vqa.metric

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/scores.json")

    monkeypatch.setattr(vqa.metric, "score_files", read_only)
    code, err = _cli(["score", "--questions", "q", "--annotations", "a", "--results", "r"], capsys)
    assert (code, _error_line(err)) == (
        1, "error: Read-only file system (/mnt/ro/scores.json): that file system is read-only: "
           "choose a folder on another one.")


# ---------------------------------------------------------------------------------------------
# Log noise

def test_no_tensorflow_start_up_lines_unless_debug(tiny_run):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # the issue: the lines came even with level 2
    command = [sys.executable, "-m", "vqa", "evaluate", "--run", str(tiny_run), "--batch-size", "8"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "answers written to" in done.stderr  # our own lines still come
    noise = [line for line in done.stderr.splitlines() if any(mark in line for mark in TF_START_LINES)]
    assert not noise, noise
    assert not [line for line in done.stderr.splitlines() if line[:1] in "IWEF" and line[1:5] == "0000"]

    debug = subprocess.run([sys.executable, "-m", "vqa", "--debug", *command[3:]], capture_output=True, text=True,
                           cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=300)
    assert debug.returncode == 0, debug.stderr
    assert "answers written to" in debug.stderr
    assert any(mark in debug.stderr for mark in TF_START_LINES), "--debug should let TensorFlow's lines through"


def test_tensorflow_warnings_after_the_quiet_start_still_reach_stderr():
    """TensorFlow's Python logger is made while its import runs with stderr redirected; its later warnings
    (a retracing notice, say) must reach the user's stderr, not a closed file descriptor ("Logging error")."""
    script = ("from vqa import cli\n"
              "cli._quiet_backends(False)\n"
              "import tensorflow as tf\n"
              "tf.get_logger().warning('a later TensorFlow warning')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "a later TensorFlow warning" in done.stderr
    assert "Logging error" not in done.stderr and "Bad file descriptor" not in done.stderr
