"""RUN/environment.json (vqa.environment): what a run was trained with, one record per session."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import keras
import pytest

from vqa import environment
from vqa import train as vqa_train
from vqa.config import Config, ModelConfig, TrainConfig
from vqa.errors import VQAError

from helpers import write_tiny_out

REPO = Path(__file__).resolve().parents[1]
TINY = Config(model=ModelConfig(name="bow-mlp", hidden_units=8, dropout=0.0),
              train=TrainConfig(epochs=1, batch_size=16, early_stopping_patience=0))


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _repo_commit() -> str | None:
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_each_training_session_records_its_environment(tmp_path):
    out = write_tiny_out(tmp_path / "out")
    run = tmp_path / "run"
    vqa_train.train(out, run, TINY, log=lambda line: None)
    vqa_train.train(out, run, replace(TINY, train=replace(TINY.train, epochs=2)), log=lambda line: None)

    data = json.loads((run / "environment.json").read_text(encoding="utf-8"))
    assert data["format_version"] == 1
    first, resumed = data["sessions"]
    assert (first["started_after_epoch"], resumed["started_after_epoch"]) == (0, 1)
    assert first["packages"] == {name: _installed(name) for name in
                                 ("tensorflow", "keras", "jax", "jaxlib", "numpy", "h5py", "spacy")}
    assert first["packages"]["keras"] == keras.__version__
    assert first["backend"] == keras.backend.backend() and first["num_processes"] == 1
    assert first["devices"] and all(":" in device for device in first["devices"])
    assert first["python"] == platform.python_version() and first["platform"] == platform.platform()
    assert first["git_commit"] == _repo_commit()
    assert isinstance(first["git_dirty"], bool) == (first["git_commit"] is not None)
    assert environment.read_environment(run).sessions[1].started_after_epoch == 1


def test_code_outside_a_git_checkout_records_no_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "CODE_DIR", tmp_path)  # a folder no git repository tracks
    assert environment.git_state() == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
    monkeypatch.setattr(environment, "CODE_DIR", REPO / "vqa")
    assert environment.git_state() == (None, None)
    assert environment.current_session(0).git_commit is None


def test_a_damaged_record_is_named_and_replaced(tmp_path):
    assert environment.read_environment(tmp_path).sessions == []  # a run from before the record existed
    (tmp_path / "environment.json").write_text('{"format_version": 1, "sessions": [{"backend": 3}]}')
    with pytest.raises(VQAError, match="environment.json"):
        environment.read_environment(tmp_path)
    environment.record_session(tmp_path, environment.current_session(2))
    assert [s.started_after_epoch for s in environment.read_environment(tmp_path).sessions] == [2]
