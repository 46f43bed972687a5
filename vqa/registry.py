"""The model registry: every architecture once, with the visual input it reads and its recipe.

An entry names the builder (``build(config, embeddings, num_answers, visual, max_length,
output_activation) -> keras.Model``), the input kinds it reads in order of preference
(``vqa.visual``: "vector", "grid", "regions"; none for a blind model), and its recipe:
the settings its runs start from, under the code defaults and above a config file and
``--set``. The ``vqa train --model`` help, the config checks, train, evaluate, predict and
serve all read this table; a new model is its builder module plus one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vqa.config import Config, ModelConfig, from_dict
from vqa.errors import VQAError
from vqa.visual import VisualSpec


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: ``model.name``, e.g. "deeper-lstm-norm-i".
        build: the builder, as "module:function" (imported on use, so reading the table,
            for ``--help`` or the config checks, loads no deep-learning framework).
        reads: the visual input kinds it reads, preferred first; () for a question-only model.
        summary: one line for ``vqa train --help``.
        recipe: section -> setting -> value: the defaults its runs start from.
    """

    name: str
    build: str
    reads: tuple[str, ...]
    summary: str
    recipe: dict[str, dict[str, Any]] = field(default_factory=dict)

    def builder(self):
        module, function = self.build.split(":")
        return getattr(importlib.import_module(module), function)


_SPATIAL = ("regions", "grid")

# The recipes: what a run of each model starts from (README "Recipes" has the table and the reasons).
# Common to all: learned word vectors (the spaCy vectors start them), Adam, and the code defaults for
# the rest (train.min_batches=100 batches an epoch at the least, early stopping after 1000 steps at
# the earliest). The published widths are kept; dropout is lower than the papers' 0.5, which under-fits
# the small subsets people start on and costs nothing measurable at full scale with soft scores.
_GLOBAL_RECIPE = {"model": {"train_embeddings": True, "dropout": 0.2},
                  "train": {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 256, "lr_schedule": "constant",
                            "epochs": 20}}
_ATTENTION_RECIPE = {"model": {"train_embeddings": True, "dropout": 0.1},
                     "train": {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 128,
                               "lr_schedule": "constant", "epochs": 20}}

# Up-Down as hengyuan-hu/bottom-up-attention-vqa trains it: Adamax 2e-3, global-norm clip 0.25, batch 512,
# GRU 1024, learned GloVe; its loss is soft-score BCE mean x K, our reduction, so the clip carries over.
# (Its dropout: 0.2 in the attention, 0.5 in the classifier; 0.2 here for the reason above.)
_UPDOWN_RECIPE = {"model": {"train_embeddings": True, "question_rnn": "gru", "hidden_units": 1024, "dropout": 0.2},
                  "train": {"optimizer": "adamax", "learning_rate": 2e-3, "clipnorm": 0.25, "batch_size": 512,
                            "lr_schedule": "constant", "epochs": 20}}
# MCAN as MILVLG/openvqa trains it: hidden 512, 8 heads, 6 + 6 layers, FF 2048, AttFlat MLP 512 with 1 glimpse to
# 1024, dropout 0.1; Adam(0.9, 0.98, eps 1e-9) 1e-4, x 1/4, 2/4, 3/4 over the 3 warmup epochs, x 0.2 after
# epochs 10 and 12, 13 epochs, batch 64, no clipping (ours stays at the default). Its BCE is summed over the
# batch too; Adam's step does not change when the loss is scaled by a constant (up to epsilon), so 1e-4 carries over.
# (MCAN-large: hidden 1024, FF 4096, AttFlat to 2048, still 8 heads, 7e-5.) Ours adds the box-relations bias and
# the sinusoid box code (vqa.box_relations), which openvqa has not: README "Recipes" has what each did on the
# relational scenes. Its 13 epochs are 90K steps on VQA v2; on a small split they are stretched to at least 4,000
# (train.min_steps): on the relational scenes 2,379 steps reached 85.45, twice as many (26 epochs) 97.7+.
_MCAN_RECIPE = {"model": {"train_embeddings": True, "hidden_units": 512, "heads": 8, "layers": 6, "ff_units": 2048,
                          "flat_units": 1024, "glimpses": 1, "dropout": 0.1, "box_relations": "bias",
                          "box_geometry": "sinusoids"},
                "train": {"optimizer": "adam", "learning_rate": 1e-4, "adam_beta_2": 0.98, "adam_epsilon": 1e-9,
                          "lr_schedule": "warmup-step", "warmup_epochs": 3, "lr_decay_at": "10,12",
                          "lr_decay_rate": 0.2, "batch_size": 64, "epochs": 13, "min_steps": 4000}}

MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in (
    ModelEntry("deeper-lstm-norm-i", "vqa.model:build_deeper_lstm_norm_i", ("vector",),
               "deeper LSTM Q + norm I (VQA v2 baseline), global image vector", _GLOBAL_RECIPE),
    ModelEntry("question-only", "vqa.model:build_question_only", (), "the blind baseline: the question alone",
               _GLOBAL_RECIPE),
    ModelEntry("seed-concat", "vqa.model:build_seed_concat", ("vector",),
               "the blog post's LSTM + image concatenation", _GLOBAL_RECIPE),
    ModelEntry("bow-mlp", "vqa.model:build_bow_mlp", ("vector",), "bag of words + image, MLP", _GLOBAL_RECIPE),
    ModelEntry("san", "vqa.attention:build_san", _SPATIAL, "stacked attention networks over regions or a grid",
               _ATTENTION_RECIPE),
    ModelEntry("multi-glimpse", "vqa.attention:build_multi_glimpse", _SPATIAL,
               "multi-glimpse soft attention over regions or a grid", _ATTENTION_RECIPE),
    # A grid is read by these as regions, one box per cell (data.features=grid-regions, or auto on a grid alone).
    ModelEntry("updown", "vqa.updown:build_updown", ("regions",),
               "bottom-up top-down attention over regions (Anderson et al. 2018)", _UPDOWN_RECIPE),
    ModelEntry("mcan", "vqa.mcan:build_mcan", ("regions",),
               "modular co-attention encoder-decoder over regions (Yu et al. 2019)", _MCAN_RECIPE),
)}


def entry(name: str) -> ModelEntry:
    """The registered model ``name``, or one sentence listing them."""
    if name not in MODELS:
        raise VQAError(f"unknown model {name!r} (model.name); choose one of {', '.join(MODELS)}.")
    return MODELS[name]


def recipe_config(name: str, base: Config | None = None) -> Config:
    """``base`` (default: the code defaults) with model ``name``'s recipe applied, named in any error."""
    chosen = entry(name)
    config = replace(base if base is not None else Config(), model=replace((base or Config()).model, name=name))
    if not chosen.recipe:
        return config
    return from_dict(chosen.recipe, config, source=f"the {name} recipe (vqa.registry)")


def help_text() -> str:
    """The models for ``vqa train --model``'s help: name (inputs it reads): summary."""
    return "; ".join(f"{item.name} ({' or '.join(item.reads) or 'no image'})" for item in MODELS.values())


def build_model(config: ModelConfig, embeddings: np.ndarray, num_answers: int, visual: VisualSpec | None,
                max_length: int, output_activation: str):
    """Build the architecture named by ``config.name``.

    Args:
        config: the model section of the run configuration.
        embeddings: float32 (vocabulary, dim) word vectors aligned with the question vocabulary.
        num_answers: K, the size of the answer vocabulary.
        visual: what the model reads of each image (None for a question-only model).
        max_length: L, the padded question length.
        output_activation: "sigmoid" (soft-score loss) or "softmax".

    Returns:
        An uncompiled keras.Model following the I/O contract of ``vqa.model``.

    Raises:
        VQAError: for an unknown model name, impossible widths or an input the model does not read.
    """
    chosen = entry(config.name)
    if min(config.lstm_units, config.lstm_layers, config.hidden_units, config.fusion_units, config.glimpses,
           config.attention_hops, config.layers, config.heads, config.ff_units, config.flat_units) < 1:
        raise VQAError("model.lstm_units, lstm_layers, hidden_units, fusion_units, glimpses, attention_hops, layers, "
                       "heads, ff_units and flat_units must all be at least 1.")
    if not 0.0 <= config.dropout < 1.0:
        raise VQAError(f"model.dropout must be in [0, 1), got {config.dropout}.")
    if output_activation not in ("sigmoid", "softmax"):
        raise VQAError(f"output activation must be sigmoid or softmax, got {output_activation!r}.")
    if chosen.reads:
        if visual is None or visual.kind not in chosen.reads:
            given = "no image input" if visual is None else f"{visual.kind} inputs"
            raise VQAError(f"model.name={config.name} reads {' or '.join(chosen.reads)} inputs, not {given}; "
                           "preprocess or import features it reads (see data.features).")
        if min(visual.shape) < 1:
            raise VQAError(f"image inputs must have sizes of at least 1, got {visual.shape}.")
    return chosen.builder()(config, embeddings, num_answers, visual, max_length, output_activation)


def load_model(path: str | Path):
    """Load a trained model (a .keras file) for inference (safe mode, not compiled).

    Raises:
        VQAError: when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"model file {path} does not exist: train a run first with `vqa train`.")
    import keras

    import vqa.model_parts  # noqa: F401  registers the project's custom layers

    return keras.saving.load_model(path, compile=False, safe_mode=True)
