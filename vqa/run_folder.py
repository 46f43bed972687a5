"""The run folder RUN that ``vqa train --out`` fills and evaluate, predict and report read.

The one module that knows RUN's layout (the training checkpoints are ``vqa.checkpoints``',
the configuration ``vqa.config``'s, the environment record ``vqa.environment``'s, the vocabularies
and backbone their owners'):

- ``run.json``: what evaluate and predict need to know about the run (``RunInfo``);
- ``model.keras``: the best epoch by validation VQA accuracy, inference only (no optimizer);
- ``metrics.json``: the final training metrics; ``history.csv``: one row per epoch;
- ``model_summary.txt`` (+ ``model.png`` when pydot and graphviz are installed);
- ``logs/``: TensorBoard event files;
- ``eval/<split>/``: an evaluation of one split: its ``metrics.json``, ``report.html``
  and the results file.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa import answers as answers_lib
from vqa import backbone as backbone_lib
from vqa import text as text_lib
from vqa.errors import VQAError, brief
from vqa.records import record_from_dict
from vqa.storage import atomic_path, read_json, write_json, write_text

RUN_FORMAT_VERSION = 1  # of run.json and of the training checkpoints
RUN_INFO_FILE = "run.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "model_summary.txt"
PLOT_FILE = "model.png"
LOGS_FOLDER = "logs"
EVAL_FOLDER = "eval"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class RunInfo:
    """``run.json``: the facts about a run that evaluate and predict rely on.

    Attributes:
        format_version: ``RUN_FORMAT_VERSION`` of the vqa that trained it.
        data_dir: the preprocessed folder it was trained on (absolute).
        lang: the spaCy language of its tokenizer.
        max_question_length: tokens per question the model reads.
        feature_dim: width of the image features it reads.
        loss: "soft" or "softmax".
        num_answers: size of its answer vocabulary.
        model: the architecture name (``model.name``).
        best_epoch: the epoch the inference model is from (0 before the first).
        completed: whether training finished and wrote its final metrics.
        features: the ``vqa.visual`` source it reads as its image ("fc7", "grid", "grid-mean",
            "regions", "region-mean", "grid-regions"), or ``NO_IMAGE`` for a blind run.
        grid_shape: (H, W, C) of the grid behind its input (grid, grid-mean, grid-regions), else None.
    """

    format_version: int
    data_dir: str
    lang: str
    max_question_length: int
    feature_dim: int
    loss: str
    num_answers: int
    model: str
    best_epoch: int = 0
    completed: bool = False
    features: str = "fc7"
    grid_shape: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = RUN_INFO_FILE) -> "RunInfo":
        """The run description in ``data``, read from ``path`` (named in the error).

        Raises:
            VQAError: ``data`` is not an object, is of another format version, or lacks a field.
        """
        if not isinstance(data, dict):
            raise VQAError(f"{path} is not a run description (a JSON object); train the run again.")
        if data.get("format_version") != RUN_FORMAT_VERSION:
            raise VQAError(f"{path} was written by another version of vqa (run format {data.get('format_version')}, "
                           f"this one reads {RUN_FORMAT_VERSION}); train the run again.")
        return record_from_dict(cls, data, str(path), "train the run again")


NO_IMAGE = "none"  # RunInfo.features of a run that reads no image


def run_info_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_INFO_FILE


def model_path(run_dir: str | Path) -> Path:
    """The run's best model, inference only."""
    return Path(run_dir) / MODEL_FILE


def write_run_info(run_dir: str | Path, info: RunInfo) -> None:
    write_json(run_info_path(run_dir), info.to_dict())


def read_run_info(run_dir: str | Path) -> RunInfo | None:
    """The run description, or None when RUN has none yet.

    Raises:
        VQAError: it is not JSON, not a run description, or of another format version.
    """
    path = run_info_path(run_dir)
    if not path.exists():
        return None
    return RunInfo.from_dict(read_json(path, "run description"), path)


def check_run_dir(run_dir: str | Path) -> RunInfo:
    """The run description, saying in one sentence what is wrong when ``run_dir`` is not a usable run.

    Raises:
        VQAError: the folder is missing, is not a run, is from another format version, or is incomplete.
    """
    run_dir = Path(run_dir)
    path = run_info_path(run_dir)
    if not run_dir.is_dir():
        raise VQAError(f"--run {run_dir} does not exist; pass a run folder made by `vqa train --out`.")
    if not path.exists():
        raise VQAError(f"--run {run_dir} is not a run folder (no {RUN_INFO_FILE}); "
                       "pass a folder made by `vqa train --out`.")
    data = read_json(path, "run description")
    if isinstance(data, dict) and data.get("format_version") != RUN_FORMAT_VERSION:
        raise VQAError(
            f"{run_dir} was trained by another version of vqa (run format {data.get('format_version')}, "
            f"this one reads {RUN_FORMAT_VERSION}); train it again."
        )
    info = RunInfo.from_dict(data, path)
    for required in (model_path(run_dir), answers_lib.answers_path(run_dir), text_lib.vocabulary_path(run_dir)):
        if not required.exists():
            raise VQAError(f"{required} is missing: the run has not finished an epoch yet, or was copied partly.")
    return info


def load_run_model(run_dir: str | Path):
    """The run's best model, loaded in Keras safe mode (no arbitrary code), not compiled.

    Raises:
        VQAError: the model cannot be loaded (truncated copy, another Keras, ...).
    """
    import keras

    import vqa.model_parts  # noqa: F401  registers the project's custom layers

    path = model_path(run_dir)
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # zipfile, h5py and Keras all raise their own types
        raise VQAError(f"{path} could not be loaded ({type(error).__name__}: {brief(error)}); "
                       "it may be a partial copy: copy or train the run again.") from None


def save_inference_model(model, run_dir: str | Path) -> None:
    """Save ``model``'s weights without optimizer state (a third of the size) as the run's model, atomically."""
    import keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    with atomic_path(model_path(run_dir), suffix=".keras") as tmp:
        copy.save(tmp)


def write_metrics(run_dir: str | Path, metrics: dict) -> None:
    write_json(Path(run_dir) / METRICS_FILE, metrics)


def read_metrics(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / METRICS_FILE, "run metrics")


def write_history(run_dir: str | Path, rows: list[dict]) -> None:
    """One CSV row per epoch; the columns are every key any row has, in order of appearance."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(run_dir) / HISTORY_FILE, buffer.getvalue())


def write_summary(model, run_dir: str | Path) -> None:
    """Keras's model summary as text, and a diagram of the model where pydot and graphviz are installed."""
    import keras

    run_dir = Path(run_dir)
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=110)
    write_text(run_dir / SUMMARY_FILE, "\n".join(lines) + "\n")
    with contextlib.suppress(ImportError):
        import pydot  # noqa: F401  (plot_model needs it and graphviz's dot)

        if shutil.which("dot"):
            with contextlib.suppress(Exception), atomic_path(run_dir / PLOT_FILE) as tmp:
                keras.utils.plot_model(model, to_file=str(tmp), show_shapes=True, show_layer_names=True)


def logs_dir(run_dir: str | Path) -> Path:
    """Where TensorBoard writes the run's event files."""
    return Path(run_dir) / LOGS_FOLDER


def is_finished(run_dir: str | Path) -> bool:
    """Whether RUN's final files were written (the run description says completed, the metrics exist)."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        return False
    try:
        info = read_run_info(run_dir)
    except VQAError:  # a damaged description is rewritten when training finishes again
        return False
    return info is not None and info.completed is True


def copy_preprocessed(data_dir: str | Path, run_dir: str | Path) -> None:
    """Give RUN what it needs of OUT to answer new questions: answers, vocabulary, tokenizer, backbone."""
    answers_lib.copy_answers(data_dir, run_dir)
    text_lib.copy_vocabulary(data_dir, run_dir)
    if text_lib.tokenizer_path(data_dir).is_file():
        text_lib.copy_tokenizer(data_dir, run_dir)
    backbone_lib.copy_backbone(data_dir, run_dir)


def eval_dir(run_dir: str | Path, split: str) -> Path:
    """The folder of the run's evaluation of ``split`` (metrics, report, default results file)."""
    return Path(run_dir) / EVAL_FOLDER / split


def eval_metrics_path(run_dir: str | Path, split: str) -> Path:
    return eval_dir(run_dir, split) / METRICS_FILE


def write_eval_metrics(run_dir: str | Path, split: str, metrics: dict) -> None:
    write_json(eval_metrics_path(run_dir, split), metrics)


def report_path(run_dir: str | Path, split: str) -> Path:
    """Where the HTML report of the run's evaluation of ``split`` goes (``vqa.report`` writes it)."""
    return eval_dir(run_dir, split) / REPORT_FILE
