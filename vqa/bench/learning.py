"""Section ``learning``: does every registered model learn, with its own recipe, what a simple recipe learns?

For each dataset of ``vqa.bench.learning_data`` (demo scenes with regions, fc7-like vectors,
grids of shapes) at 1x and 4x the train questions, every model of ``vqa.registry`` whose
input kinds the dataset gives trains through ``vqa.train.train`` with
``registry.recipe_config(name)`` unchanged: its default widths, epochs, loss and early
stopping; the run reads what ``data.features=auto`` picks (region-mean, fc7 or grid-mean for
the global models, regions or the grid for the attention models, nothing for a blind one).

Beside it, in the same run, a reference recipe in plain Keras on the same arrays, read from the
same source: a learned 64-d embedding and an LSTM of 128; for a vector, the L2-normalised image
-> Dense 256 tanh times the question -> Dense 256 tanh; for a grid or regions, two glimpses
(the question tiled over the parts beside each, Dense 256 relu, Dense 2, a softmax over the
parts; the weighted sums beside the question -> Dense 256 relu); for no image, the question ->
Dense 256 tanh; then a softmax over the answers, cross-entropy on the most common answer,
Adam 1e-3, batch 128, 20 epochs. Both are scored with the official VQA accuracy on all of
val2014 after every epoch (``vqa.losses.official_accuracy``), and each reports its best epoch,
as ``vqa train`` keeps its best epoch's model.

Figures per (dataset, size, model): both accuracies, their ratio (target
``TARGETS["learning"]``), and the optimizer steps each took to reach 90% of its final
accuracy (epochs x steps per epoch, from the per-epoch history).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import ops

from vqa.bench.learning_data import KINDS, LearningData, write_learning_data
from vqa.bench.learning_rows import LearningRows
from vqa.bench.report import summary_row
from vqa.bench.settings import TARGETS, Sizes
from vqa.names import IMAGE_FEATURES, IMAGE_GRID, QUESTION_IDS, REGION_FEATURES, REGION_MASK

REACHED = 0.9  # "steps to learn": the first epoch at this share of the final accuracy
REFERENCE_RECIPE = {"embedding_dim": 64, "lstm_units": 128, "hidden_units": 256, "glimpses": 2,
                    "optimizer": "Adam", "learning_rate": 1e-3, "batch_size": 128,
                    "loss": "softmax cross-entropy on the most common answer"}
TRAIN_SPLIT, VAL_SPLIT = "train2014", "val2014"


def run(sizes: Sizes, work: Path, log: Callable[[str], None], keep: Path | None = None) -> dict:
    """Every registered model against the reference, on each dataset at each size.

    Args:
        sizes: the section's settings (``learning_*``).
        work: a scratch folder (datasets and runs are deleted when measured).
        log: one line per run.
        keep: where finished runs are kept (``vqa.bench.learning_rows``), so a rerun reuses them and
            trains only what is missing; None trains everything.
    """
    rows = LearningRows(keep) if keep is not None else None
    runs, datasets = [], {}
    for name, models in sizes.learning_datasets:
        for factor in sizes.learning_factors:
            size = f"{factor}x"
            folder = work / "learning" / f"{name}_{size}"
            data_key = {"dataset": name, "train_questions": factor * sizes.learning_train_questions,
                        "val_questions": sizes.learning_val_questions, "small": sizes.learning_small_features}
            data: LearningData | None = None
            references: dict[str, dict] = {}
            for model_name in models or fitting_models(KINDS[name]):
                config = recipe(model_name, sizes)
                project_key = {**data_key, "model": model_name, "recipe": dataclasses.asdict(config)}
                kept = rows.get((name, size, model_name), project_key) if rows else None
                if kept is not None:
                    runs.append(kept["row"])
                    datasets.setdefault(name, {"note": kept["data"]["note"]})[size] = kept["data"]["sizes"]
                    log(f"bench: learning: {name} {size} {model_name}: {_row_line(kept['row'])}, kept from "
                        f"{rows.path(name, size, model_name)}")
                    continue
                try:
                    if data is None:
                        data = write_learning_data(name, folder, data_key["train_questions"],
                                                   data_key["val_questions"], quick=data_key["small"], log=_quiet)
                        datasets.setdefault(name, {"note": data.note})[size] = _data_sizes(data)
                    project = train_project(model_name, config, data, folder / "runs" / model_name)
                    reference = references.get(project["source"]) or _reference(
                        rows, (name, size), data, data_key, project["source"], sizes.learning_reference_epochs)
                    references[project["source"]] = reference
                except Exception as error:  # one model that cannot train must not hide the others' figures
                    runs.append({"dataset": name, "size": size, "model": model_name, "ratio": None, "met": None,
                                 "target": TARGETS["learning"], "error": f"{type(error).__name__}: {error}"})
                    log(f"bench: learning: {name} {size} {model_name} failed: {runs[-1]['error']}")
                    continue
                runs.append(_compare(name, size, model_name, project, reference))
                if rows:
                    rows.put((name, size, model_name), project_key,
                             {"row": runs[-1], "data": {"note": data.note, "sizes": _data_sizes(data)}})
                log(f"bench: learning: {name} {size} {model_name}: {_row_line(runs[-1])} ({project['seconds']:.0f} s "
                    f"and {reference['seconds']:.0f} s)")
            shutil.rmtree(folder, ignore_errors=True)
    ratios = [row["ratio"] for row in runs if row["ratio"] is not None]
    overridden = bool(sizes.learning_model or sizes.learning_epochs)
    chosen = any(models for _, models in sizes.learning_datasets)
    return {
        "runs": runs,
        "datasets": datasets,
        "target": TARGETS["learning"],
        "min_ratio": min(ratios) if ratios else None,
        "runs_meeting_target": sum(row["met"] is True for row in runs),
        "reference_recipe": {**REFERENCE_RECIPE, "epochs": sizes.learning_reference_epochs},
        "recipe_overrides": {"model": dict(sizes.learning_model), "epochs": sizes.learning_epochs} if overridden
        else None,
        "note": ("each model with registry.recipe_config(name) unchanged, through vqa.train.train (best epoch's val "
                 "accuracy); the reference in plain Keras on the same arrays of the same source; both scored with the "
                 "official VQA accuracy on all val questions after every epoch; steps to 90% = first epoch at 90% of "
                 "the final (best) accuracy x steps per epoch"
                 + ("; only the models named per dataset" if chosen else "")
                 + ("; QUICK run: the recipes' widths and epochs are overridden "
                    f"({dict(sizes.learning_model)}, {sizes.learning_epochs} epochs) and the datasets are tiny, so "
                    "the ratios only show that the models train, not what they learn" if overridden else "")),
    }


def fitting_models(kinds: tuple[str, ...]) -> list[str]:
    """The registered models that read one of ``kinds`` (``vqa.visual`` input kinds), or no image."""
    from vqa import registry

    return [name for name, entry in registry.MODELS.items() if not entry.reads or set(entry.reads) & set(kinds)]


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for row in result["runs"]:
        what = f"{row['dataset']} {row['size']} {row['model']}"
        if "error" in row:
            rows.append(summary_row("learning", f"{what}: FAILED: {row['error'][:40]}", None, None, None,
                                    row["target"]))
        else:
            rows.append(summary_row("learning", f"{what}: val acc", row["val_vqa_accuracy"],
                                    row["reference_val_vqa_accuracy"], row["ratio"], row["target"]))
    return rows


def _row_line(row: dict) -> str:
    return f"{row['val_vqa_accuracy']:.2f} ({row['source']}) against {row['reference_val_vqa_accuracy']:.2f}"


def _data_sizes(data: LearningData) -> dict:
    return {"train_questions": data.train_questions, "val_questions": data.val_questions, "images": data.images,
            "truncated_questions": data.truncated_questions}


def _reference(rows: LearningRows | None, dataset: tuple[str, str], data: LearningData, data_key: dict,
               source: str, epochs: int) -> dict:
    """The reference on ``data`` read from ``source``: kept from an earlier run with the same key, or trained now."""
    key = {**data_key, "source": source, "reference": {**REFERENCE_RECIPE, "epochs": epochs}}
    names = (*dataset, "reference", source)
    kept = rows.get(names, key) if rows else None
    if kept is not None:
        return kept
    reference = train_reference(data, source, epochs)
    if rows:
        rows.put(names, key, reference)
    return reference


def _quiet(line: str) -> None:
    """Training's and preprocessing's own lines: the section logs one line a run instead."""


def _compare(dataset: str, size: str, model: str, project: dict, reference: dict) -> dict:
    accuracy, reference_accuracy = project["val_vqa_accuracy"], reference["val_vqa_accuracy"]
    ratio = round(accuracy / reference_accuracy, 3) if reference_accuracy > 0 else None
    target = TARGETS["learning"]
    return {"dataset": dataset, "size": size, "model": model, "source": project["source"],
            "val_vqa_accuracy": accuracy, "reference_val_vqa_accuracy": reference_accuracy,
            "ratio": ratio, "target": target, "met": None if ratio is None else ratio >= target,
            "steps_to_90_percent": project["steps_to_90_percent"],
            "reference_steps_to_90_percent": reference["steps_to_90_percent"],
            "train_questions": project["train_questions"], "reference_train_questions": reference["train_questions"],
            "val_questions": project["val_questions"],
            "epochs": project["epochs"], "best_epoch": project["best_epoch"],
            "reference_epochs": reference["epochs"], "reference_best_epoch": reference["best_epoch"],
            "batch_size": project["batch_size"], "reference_batch_size": REFERENCE_RECIPE["batch_size"],
            "steps_per_epoch": project["steps_per_epoch"], "reference_steps_per_epoch": reference["steps_per_epoch"],
            "seconds": project["seconds"], "reference_seconds": reference["seconds"],
            "val_vqa_accuracy_each_epoch": project["accuracies"],
            "reference_val_vqa_accuracy_each_epoch": reference["accuracies"], "recipe": project["recipe"]}


def steps_to_reach(accuracies: list[float], final: float, steps_per_epoch: int, share: float = REACHED) -> int:
    """Optimizer steps until the first epoch whose accuracy is at least ``share`` of ``final``."""
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy >= share * final:
            return epoch * steps_per_epoch
    return len(accuracies) * steps_per_epoch


# --- the project's model, its own recipe -------------------------------------------------------------


def recipe(model_name: str, sizes: Sizes):
    """``registry.recipe_config(model_name)``; only the smoke test's sizes override widths and epochs."""
    from vqa import registry

    config = registry.recipe_config(model_name)
    if sizes.learning_model:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **dict(sizes.learning_model)))
    if sizes.learning_epochs:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=sizes.learning_epochs,
                                                                       min_steps=0))
    return config


def train_project(model_name: str, config, data: LearningData, run_dir: Path) -> dict:
    """Train ``model_name`` with ``config`` (its ``recipe``) on ``data`` through ``vqa.train.train``; its figures,
    RUN deleted."""
    from vqa import checkpoints, run_folder
    from vqa.train import train

    keras.backend.clear_session()
    started = time.perf_counter()
    metrics = train(data.out_dir, run_dir, config, resume=False, log=_quiet)
    seconds = time.perf_counter() - started
    history = checkpoints.read_state(run_dir).history
    source = run_folder.read_run_info(run_dir).features
    shutil.rmtree(run_dir, ignore_errors=True)
    accuracies = [float(row["val_vqa_accuracy"]) for row in history]
    # The batch train used: the recipe's, or smaller where train.min_batches asks for more steps an epoch.
    batch_size = int(metrics.get("batch_size", config.train.batch_size))
    steps_per_epoch = int(metrics.get("steps_per_epoch") or math.ceil(metrics["num_train_questions"] / batch_size))
    final = float(metrics["val_vqa_accuracy"])
    return {"source": source, "val_vqa_accuracy": final, "accuracies": accuracies,
            "epochs": metrics["epochs_done"], "best_epoch": metrics["best_epoch"],
            "train_questions": metrics["num_train_questions"], "val_questions": metrics["num_val_questions"],
            "batch_size": batch_size, "steps_per_epoch": steps_per_epoch,
            "steps_to_90_percent": steps_to_reach(accuracies, final, steps_per_epoch),
            "seconds": round(seconds, 1),
            "recipe": {"model": dataclasses.asdict(config.model), "train": dataclasses.asdict(config.train)}}


# --- the reference recipe, plain Keras -------------------------------------------------------------


def train_reference(data: LearningData, source: str, epochs: int, seed: int = 0) -> dict:
    """The reference recipe on ``data`` read from ``source`` (a ``vqa.visual`` source, or "none")."""
    from vqa import dataset as vqa_dataset
    from vqa import text, visual
    from vqa.answers import read_answers
    from vqa.run_folder import NO_IMAGE

    read_from = None if source == NO_IMAGE else source
    train_data = vqa_dataset.load_split(data.out_dir, TRAIN_SPLIT, read_from)
    val_data = vqa_dataset.load_split(data.out_dir, VAL_SPLIT, read_from)
    try:
        # What vqa train trains on with a softmax loss: questions with an image and a vocabulary answer.
        keep = np.flatnonzero((train_data.image_index >= 0) & (train_data.answer_index >= 0))
        train_inputs = _inputs(train_data, keep)
        val_inputs = _inputs(val_data, np.arange(val_data.num_questions))
    finally:
        train_data.close()
        val_data.close()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    kind = None if read_from is None else visual.source(read_from).kind
    model = build_reference(kind, train_data.spec, len(text.read_vocabulary(data.out_dir)), train_data.max_length,
                            len(read_answers(data.out_dir)))
    model.compile(optimizer=keras.optimizers.Adam(REFERENCE_RECIPE["learning_rate"]),
                  loss="sparse_categorical_crossentropy")
    names = [tensor.name for tensor in model.inputs]
    scorer = _OfficialAccuracy({name: val_inputs[name] for name in names}, val_data.score_indices,
                               val_data.score_values)
    started = time.perf_counter()
    model.fit({name: train_inputs[name] for name in names}, train_data.answer_index[keep],
              batch_size=REFERENCE_RECIPE["batch_size"], epochs=epochs, shuffle=True, verbose=0, callbacks=[scorer])
    seconds = time.perf_counter() - started
    final = max(scorer.accuracies)
    steps_per_epoch = math.ceil(len(keep) / REFERENCE_RECIPE["batch_size"])
    return {"val_vqa_accuracy": final, "accuracies": scorer.accuracies, "epochs": epochs,
            "best_epoch": scorer.accuracies.index(final) + 1, "train_questions": int(len(keep)),
            "steps_per_epoch": steps_per_epoch, "steps_to_90_percent": steps_to_reach(scorer.accuracies, final,
                                                                                       steps_per_epoch),
            "seconds": round(seconds, 1)}


def _inputs(data, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The question ids and, when the split has an image input, its arrays (float32) of ``rows``."""
    inputs = {QUESTION_IDS: data.token_ids[rows]}
    if data.visual is not None:
        image = data.visual.read(data.image_index[rows])
        inputs.update({name: np.asarray(array, np.float32) for name, array in image.items()})
    return inputs


class _OfficialAccuracy(keras.callbacks.Callback):
    """After every epoch: the official VQA accuracy (x 100) of the top answer on all val questions."""

    def __init__(self, inputs: dict, score_indices: np.ndarray, score_values: np.ndarray):
        super().__init__()
        self.inputs, self.score_indices, self.score_values = inputs, score_indices, score_values
        self.accuracies: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        from vqa.losses import official_accuracy

        predicted = np.argmax(self.model.predict(self.inputs, batch_size=512, verbose=0), axis=-1)
        per_question = official_accuracy(predicted, self.score_indices, self.score_values)
        self.accuracies.append(round(float(per_question.mean()) * 100, 2))


def build_reference(kind: str | None, spec, vocabulary_size: int, max_length: int, num_answers: int) -> keras.Model:
    """The reference model for an input ``kind`` ("vector", "grid", "regions", None) of ``spec`` (a ``VisualSpec``).

    Inputs are named as the project's (``vqa.names``), so the same arrays feed both.
    """
    units, hidden = REFERENCE_RECIPE["lstm_units"], REFERENCE_RECIPE["hidden_units"]
    question_ids = keras.Input((max_length,), dtype="int32", name=QUESTION_IDS)
    inputs = {QUESTION_IDS: question_ids}
    words = keras.layers.Embedding(vocabulary_size, REFERENCE_RECIPE["embedding_dim"], mask_zero=True)(question_ids)
    question = keras.layers.LSTM(units)(words)
    if kind is None:
        joint = keras.layers.Dense(hidden, activation="tanh")(question)
    elif kind == "vector":
        image = inputs[IMAGE_FEATURES] = keras.Input((spec.feature_dim,), name=IMAGE_FEATURES)
        image_code = keras.layers.Dense(hidden, activation="tanh")(keras.layers.UnitNormalization()(image))
        question_code = keras.layers.Dense(hidden, activation="tanh")(question)
        joint = keras.layers.Dense(hidden, activation="tanh")(keras.layers.Multiply()([image_code, question_code]))
    else:
        parts, mask = _reference_parts(kind, spec, inputs)
        parts = keras.layers.UnitNormalization(axis=-1)(parts)
        tiled = ops.expand_dims(question, 1) * ops.ones_like(parts[..., :1])  # the question beside every part
        attention = keras.layers.Dense(hidden, activation="relu")(keras.layers.Concatenate()([parts, tiled]))
        logits = keras.layers.Dense(REFERENCE_RECIPE["glimpses"])(attention)  # (batch, parts, glimpses)
        if mask is not None:
            logits = logits + (ops.expand_dims(mask, -1) - 1.0) * 1e9  # padding boxes get no weight
        weights = ops.softmax(logits, axis=1)
        glimpses = ops.einsum("bng,bnd->bgd", weights, parts)
        seen = keras.layers.Reshape((REFERENCE_RECIPE["glimpses"] * spec.feature_dim,))(glimpses)
        joint = keras.layers.Dense(hidden, activation="relu")(keras.layers.Concatenate()([seen, question]))
    answers = keras.layers.Dense(num_answers, activation="softmax")(joint)
    return keras.Model(inputs, answers, name=f"reference_{kind or 'blind'}")


def _reference_parts(kind: str, spec, inputs: dict):
    """The parts attended over, (batch, N, D), and the mask of real ones (None for a grid's cells)."""
    if kind == "grid":
        height, width, channels = spec.shape
        grid = inputs[IMAGE_GRID] = keras.Input(tuple(spec.shape), name=IMAGE_GRID)
        return keras.layers.Reshape((height * width, channels))(grid), None
    features = inputs[REGION_FEATURES] = keras.Input((None, spec.feature_dim), name=REGION_FEATURES)
    mask = inputs[REGION_MASK] = keras.Input((None,), name=REGION_MASK)
    return features, mask
