"""The training checkpoint of a run folder: what a killed ``vqa train`` resumes from.

RUN/checkpoints/ holds ``last.keras`` (weights + optimizer state, with the resume state
embedded as ``vqa_state.json`` so weights and state can never disagree) and
``state.json`` (a readable copy: epochs done, best epoch, history, dropout RNG states,
seed), both rewritten atomically after every epoch. The resume state is a ``TrainState``.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqa.errors import VQAError
from vqa.run_folder import RUN_FORMAT_VERSION
from vqa.storage import atomic_path, json_text, write_json

FOLDER = "checkpoints"
CHECKPOINT_FILE = "last.keras"
STATE_FILE = "state.json"
STATE_ENTRY = "vqa_state.json"  # the resume state stored inside the checkpoint's zip
RESTART = "pass --restart to start the run over"


@dataclass(frozen=True)
class TrainState:
    """Where a run's training stands after an epoch.

    Attributes:
        format_version: the run format (``vqa.run_folder.RUN_FORMAT_VERSION``).
        epoch: epochs done.
        best_epoch: the epoch of the inference model (best validation VQA accuracy; 0 before the first).
        best_val_vqa_accuracy: its validation score, None without validation or before the first epoch.
        stopped_early: whether early stopping ended the run.
        seed: ``train.seed``.
        history: one dict of logged numbers per epoch done.
        seed_states: the dropout seed generators' states, by layer name (``seed_states``).
    """

    format_version: int = RUN_FORMAT_VERSION
    epoch: int = 0
    best_epoch: int = 0
    best_val_vqa_accuracy: float | None = None
    stopped_early: bool = False
    seed: int = 0
    history: list[dict] = field(default_factory=list)
    seed_states: dict[str, list] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "TrainState":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, checkpoint: str | Path) -> "TrainState":
        """The state read from ``checkpoint`` (named in the error).

        Raises:
            VQAError: ``data`` is not a state of this run format.
        """
        if not isinstance(data, dict):
            raise VQAError(f"checkpoint {checkpoint} holds no resume state (a JSON object), so it was not written "
                           f"by `vqa train`: {RESTART}.")
        version = data.get("format_version")
        if version != RUN_FORMAT_VERSION:
            raise VQAError(
                f"checkpoint {checkpoint} was written by another version of vqa (run format {version}, this one "
                f"writes {RUN_FORMAT_VERSION}): train into a new run directory, or pass --restart to start this "
                "one over."
            )
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise VQAError(f"checkpoint {checkpoint}'s resume state lacks {', '.join(missing)}, so it was not "
                           f"written by this `vqa train`: {RESTART}.")
        return cls(**{name: data[name] for name in names})


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FOLDER / CHECKPOINT_FILE


def _state_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / FOLDER / STATE_FILE


def save_checkpoint(run_dir: str | Path, model, state: TrainState) -> None:
    """Save weights + optimizer with ``state`` inside the same .keras zip, atomically, and the readable copy."""
    data = state.to_dict()
    with atomic_path(checkpoint_path(run_dir), suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(STATE_ENTRY, json_text(data))
    write_json(_state_path(run_dir), data)


def write_final_state(run_dir: str | Path, state: TrainState) -> None:
    """The readable copy of the last state, marked completed, once training has written its final files."""
    write_json(_state_path(run_dir), state.to_dict() | {"completed": True})


def read_state(run_dir: str | Path) -> TrainState | None:
    """The resume state of RUN, or None when it has no checkpoint yet.

    Raises:
        VQAError: the checkpoint is unreadable, not from `vqa train`, or of another run format.
    """
    checkpoint = checkpoint_path(run_dir)
    if not checkpoint.is_file():
        return None
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            data = json.loads(archive.read(STATE_ENTRY))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise VQAError(
            f"checkpoint {checkpoint} is unreadable or was not written by `vqa train`: "
            "delete the run directory or pass --restart to start it over."
        ) from None
    return TrainState.from_dict(data, checkpoint)


def load_checkpoint_model(run_dir: str | Path):
    """The checkpointed model, compiled, with its optimizer state, loaded in Keras safe mode.

    Raises:
        VQAError: naming the checkpoint and saying --restart starts over, when Keras cannot load it.
    """
    import keras

    import vqa.losses  # noqa: F401  registers the training metric the model was compiled with
    import vqa.model_parts  # noqa: F401  registers the project's custom layers

    path = checkpoint_path(run_dir)
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # zipfile, h5py and Keras all raise their own types
        if "Lambda" in str(error):
            raise VQAError(f"checkpoint {path} holds a Lambda layer, which Keras's safe mode does not load "
                           f"(it could run any code); {RESTART}.") from None
        brief = " ".join(str(error).split())[:160]
        raise VQAError(f"checkpoint {path} cannot be loaded ({type(error).__name__}: {brief}); {RESTART}.") from None


def _seed_variables(layer) -> list:
    weight_ids = {id(w) for w in layer.weights}
    return [v for v in layer.variables if id(v) not in weight_ids]


def seed_states(model) -> dict[str, list[list[int]]]:
    """The RNG states of each layer's seed generators (dropout masks), by layer name.

    Keras saves weights and optimizer variables but not seed-generator states, and
    their variable paths carry process-wide counters, so they are keyed by layer name
    (stable across save/load) and stored in the resume state instead.
    """
    from keras import ops

    states = {}
    for layer in model.layers:
        seeds = _seed_variables(layer)
        if seeds:
            states[layer.name] = [np.asarray(ops.convert_to_numpy(v)).tolist() for v in seeds]
    return states


def restore_seed_states(model, states: dict[str, list[list[int]]]) -> None:
    """Put back the seed-generator states saved by ``seed_states``."""
    for layer in model.layers:
        if layer.name not in states:
            continue
        for variable, value in zip(_seed_variables(layer), states[layer.name]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
