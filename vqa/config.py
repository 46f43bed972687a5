"""Configuration: one frozen dataclass per concern.

Values come from the code defaults, then an optional JSON config file, then
``--set section.key=value`` overrides, each checked against the field's type.
Two roots use the same mechanics: ``Config`` (sections data, model, train) for a
training run, saved with every run as ``config.json`` so that evaluate and predict
rebuild exactly what was trained, and ``PreprocessSettings`` (section preprocess),
recorded in the preprocessing manifest. ``preprocessing/*.json`` are shipped
preprocessing configs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vqa.errors import VQAError
from vqa.storage import read_json, write_json

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class PreprocessConfig:
    """What ``vqa preprocess`` reads and how it turns it into OUT.

    Paths left empty mean: ``images_dir`` = ``data_dir``; no ``features_mat`` (extract
    features from the images with ``weights``). ``features`` "grid" or "both" also writes
    each split's grid file (``grid_layer`` of the backbone, at ``image_size``); with only
    imports (``grid_features``, ``regions``) nothing is extracted and no image is needed.
    """

    data_dir: str = "data/raw"
    splits: str = "train2014,val2014"  # comma-separated; the first defines the vocabularies
    images_dir: str = ""
    vectors: str = "en_core_web_lg"  # spaCy pipeline name or path, with word vectors
    weights: str = "imagenet"  # imagenet | none | a VGG-16 .h5 file | a .keras feature model
    features_mat: str = ""  # neuraltalk vgg_feats.mat to import instead of extracting
    id_map: str = ""  # image id -> column (--features-mat) or row (--regions HDF5): text, JSON or a peer's .pkl
    limit: int = 0  # keep only the first N questions of each split; 0 = all
    top_answers: int = 1000
    max_question_length: int = 25
    batch_size: int = 32  # images per feature-extraction batch
    feature_dtype: str = "float16"  # float16 | float32
    seed: int = 0  # seeds the random VGG-16 weights of weights=none
    grid_features: str = ""  # pytorch-vqa HDF5 (features (N, C, H, W), ids (N,)) to import as grid features
    shard: str = ""  # INDEX/COUNT: extract only this share of the images; a run without it merges the shards
    # auto | fc7 | grid | both | none: what extraction from the images keeps (the feature vector, a layer's
    # grid, both, or nothing); auto is fc7, or none when grids or regions are imported.
    features: str = "auto"
    regions: str = ""  # bottom-up-attention region features to import (a file, folder or glob in any layout)
    image_size: int = 0  # images resized to N x N for extraction; 0 = the backbone's own (VGG-16: 224; 448: grid only)
    grid_layer: str = ""  # the grid's layer; "" = block5_pool for VGG-16, the last 4-D layer of a .keras model

    @property
    def split_list(self) -> list[str]:
        return [split.strip() for split in self.splits.split(",") if split.strip()]


@dataclass(frozen=True)
class DataConfig:
    """Which preprocessed data a run trains and validates on."""

    data_dir: str = "data/processed"
    train_split: str = "train2014"
    val_split: str = "val2014"
    # What the model reads of each image, a vqa.visual source: "fc7", "grid-mean", "region-mean"
    # (vectors), "grid", "regions", "grid-regions"; "auto" takes the first the model reads that the
    # train split holds (vqa.visual.resolve_source).
    features: str = "auto"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and widths; ``name`` picks an entry of ``vqa.registry``."""

    name: str = "deeper-lstm-norm-i"
    lstm_units: int = 512
    lstm_layers: int = 2
    hidden_units: int = 1024
    fusion_units: int = 1000
    dropout: float = 0.5
    train_embeddings: bool = False
    glimpses: int = 2  # multi-glimpse: softmax attention maps over the grid cells
    attention_hops: int = 2  # san: stacked attention layers
    # The deeper-LSTM question code: every layer's final hidden state ("hidden"), or hidden and cell
    # states as VQA_LSTM_CNN concatenates them ("hidden-and-cell"). The unbounded cell states kept
    # deeper-lstm-norm-i from binding a question word to the image on the learning bench's fc7-like
    # data ("Is there a {animal}?": 71.65 yes/no from epoch 2 on; hidden only: 100 by epoch 6).
    question_states: str = "hidden"
    question_rnn: str = "lstm"  # updown: gru | lstm, the question encoder
    layers: int = 6  # mcan: encoder and decoder depth (each)
    heads: int = 8  # mcan: attention heads; must divide hidden_units
    ff_units: int = 2048  # mcan: width of each layer's feed-forward block
    flat_units: int = 1024  # mcan: width of each side's attended summary before fusion
    # mcan: "bias" adds a learned bias per head, from each pair of boxes' relative geometry, to the
    # boxes' self-attention (vqa.box_relations); "none" is openvqa's plain dot-product attention.
    box_relations: str = "none"
    # mcan: how each box's own geometry is coded before it is added to its features: "linear" is a
    # Dense layer of the 5 numbers (openvqa's); "sinusoids" adds sines of its centre and log size.
    box_geometry: str = "linear"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, feeding and checkpointing."""

    epochs: int = 20
    batch_size: int = 256  # questions per batch, at most (see min_batches)
    # Batches per epoch at the least: a split too small for that many batches of batch_size gets
    # smaller ones (down to 32), so a short run on a small subset still takes enough steps; 0 = off.
    min_batches: int = 100
    optimizer: str = "adam"  # adam | adamax
    learning_rate: float = 1e-3
    adam_beta_2: float = 0.999  # also Adamax's
    adam_epsilon: float = 1e-7  # also Adamax's
    lr_schedule: str = "constant"  # constant | cosine | step | warmup-step
    warmup_epochs: int = 0  # cosine: linear warmup over these epochs; warmup-step: x k/(w+1) in epoch k
    lr_decay_rate: float = 0.5  # step: factor every lr_decay_epochs; warmup-step: factor at each lr_decay_at
    lr_decay_epochs: int = 5
    lr_decay_at: str = ""  # warmup-step: comma-separated epochs after which the rate is multiplied
    clipnorm: float = 10.0  # global-norm gradient clipping
    early_stopping_patience: int = 5  # epochs without a better val accuracy; 0 turns it off
    early_stopping_min_steps: int = 2000  # optimizer steps before early stopping may end a run (plateaus end late)
    # Optimizer steps a run takes at the least: where `epochs` epochs of a small split take fewer,
    # the run and the epoch counts its schedule reads (warmup_epochs, lr_decay_at, lr_decay_epochs)
    # are multiplied by the smallest whole number that reaches it; 0 = off.
    # An explicit --epochs (or a train.epochs the user sets) turns it off unless it is set too.
    min_steps: int = 0
    loss: str = "soft"  # soft (sigmoid + BCE on VQA soft scores) | softmax (CE on the MC answer)
    seed: int = 0
    mixed_precision: bool = False
    devices: str = "auto"  # auto | all | cpu | a number of devices
    val_limit: int = 0  # validate on the first N questions only; 0 = all
    workers: int = 1  # threads gathering batches (keras.utils.PyDataset workers); 1 = tf.data prefetch on one thread
    deterministic: bool = True  # Keras' global seed + deterministic backend ops: bit-identical reruns on CPU


@dataclass(frozen=True)
class Config:
    """The resolved configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class PreprocessSettings:
    """The resolved configuration of a preprocessing run."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}


def _sections(root: Any) -> dict[str, type]:
    """Section name -> dataclass of a config root (``Config`` or ``PreprocessSettings``)."""
    hints = typing.get_type_hints(type(root) if not isinstance(root, type) else root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root)}


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
    cls = type(base)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise VQAError(
                f"{source}: {name}.{key} is not a setting; known {name} settings: {', '.join(sorted(known))}."
            )
        changes[key] = _coerce(value, hints[key], f"{source}: {name}.{key}")
        _check_range(name, key, changes[key], value, source)
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class _Rule:
    ok: Callable[[Any], bool]
    text: str | Callable[[], str]  # "at least 1": completes "train.epochs must be ..."


def _at_least(low: int) -> _Rule:
    return _Rule(lambda value: value >= low, f"at least {low}")


def _one_of(*choices: str) -> _Rule:
    return _Rule(lambda value: value in choices, "one of " + ", ".join(choices))


def _visual_sources() -> tuple[str, ...]:
    from vqa.visual import SOURCE_CHOICES  # the registry of inputs owns the names

    return SOURCE_CHOICES


_POSITIVE = _Rule(lambda value: math.isfinite(value) and value > 0, "a finite number above 0")
_SEED = _Rule(lambda value: 0 <= value < 2**32, "from 0 to 4294967295")
_DEVICES = _Rule(lambda value: value in ("auto", "all", "cpu") or (value.isdigit() and int(value) >= 1),
                 "auto, all, cpu or a number of devices (1 or more)")

# The valid values of every numeric setting and of the settings with a fixed set of choices.
# NaN fails every comparison, so it is refused wherever a range applies.
RULES: dict[str, _Rule] = {
    "preprocess.limit": _at_least(0), "preprocess.top_answers": _at_least(1),
    "preprocess.max_question_length": _at_least(1), "preprocess.batch_size": _at_least(1),
    "preprocess.feature_dtype": _one_of("float16", "float32"), "preprocess.seed": _SEED,
    "preprocess.features": _one_of("auto", "fc7", "grid", "both", "none"),
    "preprocess.image_size": _Rule(lambda value: value == 0 or 32 <= value <= 4096,
                                   "0 (the backbone's own size) or from 32 to 4096"),
    "data.features": _Rule(lambda value: value in _visual_sources(),
                           lambda: "one of " + ", ".join(_visual_sources())),
    "model.lstm_units": _at_least(1), "model.lstm_layers": _at_least(1), "model.hidden_units": _at_least(1),
    "model.fusion_units": _at_least(1), "model.dropout": _Rule(lambda value: 0 <= value < 1, "a number in [0, 1)"),
    "model.glimpses": _at_least(1), "model.attention_hops": _at_least(1),
    "model.question_rnn": _one_of("gru", "lstm"), "model.question_states": _one_of("hidden", "hidden-and-cell"),
    "model.layers": _at_least(1), "model.heads": _at_least(1),
    "model.ff_units": _at_least(1), "model.flat_units": _at_least(1),
    "model.box_relations": _one_of("bias", "none"), "model.box_geometry": _one_of("linear", "sinusoids"),
    "train.epochs": _at_least(1), "train.batch_size": _at_least(1), "train.learning_rate": _POSITIVE,
    "train.lr_schedule": _one_of("constant", "cosine", "step", "warmup-step"),
    "train.optimizer": _one_of("adam", "adamax"), "train.min_batches": _at_least(0),
    "train.adam_beta_2": _Rule(lambda value: 0 <= value < 1, "a number in [0, 1)"),
    "train.adam_epsilon": _POSITIVE, "train.warmup_epochs": _at_least(0),
    "train.early_stopping_min_steps": _at_least(0), "train.min_steps": _at_least(0),
    "train.lr_decay_at": _Rule(lambda value: all(part.strip().isdigit() and int(part) >= 1
                                                 for part in value.split(",")) if value.strip() else True,
                               "comma-separated epoch numbers (1 or more), e.g. 10,12"),
    "train.lr_decay_rate": _Rule(lambda value: 0 < value <= 1, "a number in (0, 1]"),
    "train.lr_decay_epochs": _at_least(1), "train.clipnorm": _POSITIVE, "train.early_stopping_patience": _at_least(0),
    "train.loss": _one_of("soft", "softmax"), "train.seed": _SEED, "train.devices": _DEVICES,
    "train.val_limit": _at_least(0), "train.workers": _at_least(1),
    "train.deterministic": _Rule(lambda value: isinstance(value, bool), "true or false"),
}


def _check_range(name: str, key: str, value: Any, given: Any, source: str) -> None:
    """Refuse a value outside its rule, in words naming where it came from.

    ``source`` "--set" names the override as typed; another "--flag" source is a command-line
    flag; anything else (a file name) is named before the setting.
    """
    rule = RULES.get(f"{name}.{key}")
    if rule is None or rule.ok(value):
        return
    text = rule.text() if callable(rule.text) else rule.text
    if source == "--set":
        raise VQAError(f"--set {name}.{key}={given}: {name}.{key} must be {text}.")
    if source.startswith("--"):
        raise VQAError(f"{source} must be {text}, not {given}.")
    where = f"{source}: " if source else ""
    raise VQAError(f"{where}{name}.{key} must be {text}, not {given!r}.")


def check_config(config: Any, source: str = "") -> None:
    """Check every setting of a resolved config (``Config`` or ``PreprocessSettings``) against ``RULES``.

    ``from_dict`` and ``resolve`` check what they are given; this is for configs built in code.
    """
    for name in _sections(config):
        section = getattr(config, name)
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            _check_range(name, item.name, value, value, source)


def from_dict(data: dict[str, Any], base: Any = None, source: str = "config") -> Any:
    """Apply a nested ``{"section": {"key": value}}`` mapping on top of ``base`` (default ``Config()``)."""
    config = base if base is not None else Config()
    sections = _sections(config)
    parts = {}
    for name, values in data.items():
        if name == "format_version":
            continue
        if name not in sections:
            raise VQAError(f"{source}: unknown section {name!r}; sections are {', '.join(sections)}.")
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


def resolve(config_file: str | Path | None = None, overrides: list[str] | None = None, base: Any = None) -> Any:
    """Defaults (``base``, default ``Config()``), then ``config_file`` (JSON), then ``--set`` overrides."""
    config = base if base is not None else Config()
    if config_file:
        path = Path(config_file)
        data = read_json(path, "config file")
        if not isinstance(data, dict):
            raise VQAError(f"config file {path} must hold a JSON object with sections "
                           f"{', '.join(_sections(config))}.")
        config = from_dict(data, config, source=str(path))
    if overrides:
        config = from_dict(parse_overrides(overrides), config, source="--set")
    return config


def write_config(run_dir: str | Path, config: Config) -> None:
    """Save a run's resolved configuration into its run folder."""
    write_json(Path(run_dir) / CONFIG_FILE, config.to_dict())


def load_config(run_dir: str | Path) -> Config:
    """The configuration a run was trained with.

    Raises:
        VQAError: the file is missing, not JSON, of another format version, or holds unknown settings.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise VQAError(f"{path} does not exist: is {run_dir} a run folder made by `vqa train`?")
    data = read_json(path, "run configuration")
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise VQAError(
            f"{path} has format version {version}, this vqa reads version {FORMAT_VERSION}: "
            "train the run again with this version."
        )
    return from_dict(data, source=str(path))
