"""Run configuration: one frozen dataclass per concern.

Values come from the code defaults, then an optional JSON config file, then
``--set section.key=value`` overrides, each checked against the field's type.
The resolved configuration is saved with every run as ``config.json`` so that
evaluate and predict rebuild exactly what was trained.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa.errors import VQAError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    """Which preprocessed data a run trains and validates on."""

    data_dir: str = "data/processed"
    train_split: str = "train2014"
    val_split: str = "val2014"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and widths; ``name`` picks a ``build_*`` function in ``vqa.model``."""

    name: str = "deeper-lstm-norm-i"
    lstm_units: int = 512
    lstm_layers: int = 2
    hidden_units: int = 1024
    fusion_units: int = 1000
    dropout: float = 0.5
    train_embeddings: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, feeding and checkpointing."""

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine | step
    lr_decay_rate: float = 0.5  # step schedule: factor applied every lr_decay_epochs
    lr_decay_epochs: int = 5
    clipnorm: float = 10.0
    early_stopping_patience: int = 5  # epochs without a better val accuracy; 0 turns it off
    loss: str = "soft"  # soft (sigmoid + BCE on VQA soft scores) | softmax (CE on the MC answer)
    seed: int = 0
    mixed_precision: bool = False
    devices: str = "auto"  # auto | all | cpu | a number of devices
    val_limit: int = 0  # validate on the first N questions only; 0 = all
    workers: int = 1  # threads gathering batches (keras.utils.PyDataset workers); 1 = tf.data prefetch on one thread


@dataclass(frozen=True)
class Config:
    """The resolved configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against a field type, converting strings from the command line."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise VQAError(f"{where} must be {kind.__name__}, got {value!r}.")


def _section(name: str, values: dict[str, Any], base: Any, source: str) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise VQAError(
                f"{source}: {name}.{key} is not a setting; known {name} settings: {', '.join(sorted(known))}."
            )
        changes[key] = _coerce(value, hints[key], f"{source}: {name}.{key}")
    return dataclasses.replace(base, **changes)


def from_dict(data: dict[str, Any], base: Config | None = None, source: str = "config") -> Config:
    """Apply a nested ``{"section": {"key": value}}`` mapping on top of ``base``."""
    config = base or Config()
    parts = {}
    for name, values in data.items():
        if name == "format_version":
            continue
        if name not in SECTIONS:
            raise VQAError(f"{source}: unknown section {name!r}; sections are {', '.join(SECTIONS)}.")
        if not isinstance(values, dict):
            raise VQAError(f"{source}: section {name!r} must be an object of settings.")
        parts[name] = _section(name, values, getattr(config, name), source)
    return dataclasses.replace(config, **parts)


def parse_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """Turn ``["train.epochs=3", ...]`` into ``{"train": {"epochs": "3"}}``."""
    nested: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise VQAError(f"--set {item!r} must look like section.key=value, e.g. train.epochs=5.")
        nested.setdefault(section, {})[name] = value.strip()
    return nested


def resolve(config_file: str | Path | None = None, overrides: list[str] | None = None,
            base: Config | None = None) -> Config:
    """Defaults, then ``config_file`` (JSON), then ``--set`` overrides."""
    config = base or Config()
    if config_file:
        path = Path(config_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VQAError(f"config file {path} does not exist.") from None
        except json.JSONDecodeError as e:
            raise VQAError(f"config file {path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
        if not isinstance(data, dict):
            raise VQAError(f"config file {path} must hold a JSON object with sections data, model, train.")
        config = from_dict(data, config, source=str(path))
    if overrides:
        config = from_dict(parse_overrides(overrides), config, source="--set")
    return config


def load(path: str | Path) -> Config:
    """Read a run's saved ``config.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VQAError(f"{path} does not exist: is {path.parent} a run directory made by `vqa train`?") from None
    except json.JSONDecodeError as e:
        raise VQAError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise VQAError(
            f"{path} has format version {version}, this vqa reads version {FORMAT_VERSION}: "
            "train the run again with this version."
        )
    return from_dict(data, source=str(path))
