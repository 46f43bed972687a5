"""The Keras callbacks ``vqa.train`` fits with: the run recorder, the progress display, the NaN stop.

``RunRecorder`` is what makes a run folder out of ``model.fit``: after every epoch it validates,
keeps the best model, writes the checkpoint, the history and the run description. In a cluster of
processes (``vqa.distributed``) process 0 alone validates and writes; it shares the epoch's row so
every process keeps the same state and stops at the same epoch, and all meet at a barrier.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from vqa import checkpoints, distributed, run_folder
from vqa import dataset as vqa_dataset
from vqa.checkpoints import TrainState
from vqa.errors import VQAError
from vqa.losses import argmax_model, predict_classes, score_split
from vqa.progress import progress
from vqa.run_folder import RunInfo


class Validation:
    """The official VQA accuracy of a model on the validation batches, for ``RunRecorder``.

    With ``local`` (a cluster of processes, where predicting on the global devices would give
    arrays no single process can read), it predicts with a copy of the model on this process's
    own first device, its weights refreshed from the trained model on every call.
    """

    def __init__(self, model: keras.Model, batches: vqa_dataset.QuestionBatches, local: bool = False):
        self.batches = batches
        self.local = local
        self._copy: keras.Model | None = None
        self._predictor = None if local else argmax_model(model)

    def scores(self, model: keras.Model) -> dict[str, float]:
        """``val_vqa_accuracy`` and one entry per answer type (``vqa.losses.score_split``)."""
        if not self.local:
            return score_split(predict_classes(self._predictor, self.batches), self.batches.data, self.batches.rows)
        with distributed.local_only():
            if self._copy is None:
                self._copy = keras.Model.from_config(model.get_config())
                self._predictor = argmax_model(self._copy)
            self._copy.set_weights(model.get_weights())
            predicted = predict_classes(self._predictor, self.batches)
        return score_split(predicted, self.batches.data, self.batches.rows)


def write_run_info(run_dir: Path, info: RunInfo, state: TrainState, completed: bool = False) -> None:
    """The run description for ``state`` (its best epoch)."""
    run_folder.write_run_info(run_dir, dataclasses.replace(info, best_epoch=state.best_epoch, completed=completed))


def plain(value: Any) -> Any:
    """JSON-able number for a log value (Keras may hand numpy scalars)."""
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return float(np.asarray(value))


def early_stop(epoch: int, best_epoch: int, patience: int, steps: int, min_steps: int) -> bool:
    """Whether a run stops after ``epoch`` (1-based): ``patience`` epochs without a better val accuracy
    than at ``best_epoch``, once it has taken ``min_steps`` optimizer steps (``steps`` so far); 0 = never."""
    return patience > 0 and epoch - best_epoch >= patience and steps >= min_steps


class RunRecorder(keras.callbacks.Callback):
    """After each epoch: validate, keep the best model, checkpoint, early-stop.

    Early stopping ends a run after ``patience`` epochs without a better val accuracy, but never
    before ``min_steps`` optimizer steps: a small split's epochs are short, and the plateau
    attention models sit on before they find the objects must not end them.

    Runs before the other callbacks, so its log entries (val_vqa_accuracy, samples_per_s,
    learning_rate) reach the progress line and TensorBoard.
    """

    def __init__(self, run_dir: Path, state: TrainState, info: RunInfo,
                 train_batches: vqa_dataset.QuestionBatches, validation: Validation | None, patience: int,
                 min_steps: int = 0):
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.info = info
        self.train_batches = train_batches
        self.validation = validation
        self.patience = patience
        self.min_steps = min_steps  # early stopping waits for this many optimizer steps
        self.writes = distributed.process_index() == 0
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.train_batches.set_epoch(epoch)
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        elapsed = time.perf_counter() - self._started
        logs["samples_per_s"] = round(self.train_batches.num_samples / elapsed, 1)
        logs["epoch_time_s"] = round(elapsed, 2)
        # Every process computes this: the optimizer's step count is spread over all their devices.
        logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = None
        if self.writes:
            if self.validation is not None:
                logs.update(self.validation.scores(self.model))
            row = {"epoch": epoch + 1, **{key: plain(value) for key, value in logs.items()}}
        row = distributed.share(row)  # process 0's row (its timing and validation) on every process
        logs.update({key: value for key, value in row.items() if key != "epoch"})
        history = self.state.history + [row]

        state = self.state
        score = row.get("val_vqa_accuracy")
        best_score = state.best_val_vqa_accuracy
        improved = score is None or best_score is None or score > best_score
        if improved:
            state = state.replace(best_epoch=epoch + 1, best_val_vqa_accuracy=score)
        stop = score is not None and early_stop(epoch + 1, state.best_epoch, self.patience,
                                                (epoch + 1) * len(self.train_batches), self.min_steps)
        if stop:
            self.model.stop_training = True
        self.state = state.replace(epoch=epoch + 1, history=history, stopped_early=stop,
                                   seed_states=checkpoints.seed_states(self.model))
        if self.writes:
            with distributed.local_only():
                if improved:
                    run_folder.save_inference_model(self.model, self.run_dir)
                checkpoints.save_checkpoint(self.run_dir, self.model, self.state)
            run_folder.write_history(self.run_dir, history)
            write_run_info(self.run_dir, self.info, self.state)
        distributed.barrier(f"epoch {epoch + 1}")  # the others wait for process 0's checkpoint


class EpochProgress(keras.callbacks.Callback):
    """A progress bar per epoch (loss, accuracy, samples/s) and one log line per epoch."""

    def __init__(self, total_epochs: int, num_batches: int, batch_size: int, num_samples: int,
                 log: Callable[[str], None]):
        super().__init__()
        self.total_epochs = total_epochs
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.log = log
        self.bar = None
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = progress(total=self.num_batches, desc=f"epoch {epoch + 1}/{self.total_epochs}", unit="batch")
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        seen = min((batch + 1) * self.batch_size, self.num_samples)
        rate = seen / max(time.perf_counter() - self._started, 1e-9)
        shown = {key: f"{float(logs[key]):.4g}" for key in ("loss", "vqa_accuracy", "answer_accuracy") if key in logs}
        self.bar.set_postfix(shown | {"samples/s": f"{rate:.0f}"}, refresh=False)
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
        logs = logs or {}
        parts = [f"{key} {float(logs[key]):.4f}" for key in ("loss", "vqa_accuracy", "answer_accuracy") if key in logs]
        parts += [f"{key} {float(value):.2f}" for key, value in logs.items() if key.startswith("val_")]
        parts.append(f"{logs.get('samples_per_s', 0):.0f} samples/s, {logs.get('epoch_time_s', 0):.1f} s")
        self.log(f"epoch {epoch + 1}/{self.total_epochs}: " + ", ".join(parts))


def tensorboard(run_dir: Path) -> list[keras.callbacks.Callback]:
    """TensorBoard logging where the installation supports it (TensorFlow's summary writer
    needs the tensorboard package, which a plain ``tensorflow`` install may lack)."""
    if importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("tensorflow") is None:
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(run_folder.logs_dir(run_dir)), write_graph=False)]


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training in one sentence when a batch's loss is NaN or infinite, before the epoch's
    end could save that model: RUN keeps what the last good epoch saved."""

    def __init__(self, run_dir: Path, done_epochs: int):
        super().__init__()
        self.run_dir = run_dir
        self.epoch = done_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            kept = (f"{self.run_dir} keeps the last good checkpoint (epoch {self.epoch})" if self.epoch
                    else f"{self.run_dir} holds no checkpoint yet")
            raise VQAError(f"training stopped at epoch {self.epoch + 1} batch {batch + 1}: the loss became "
                           f"{float(loss)}; lower train.learning_rate or check the data; {kept}.")
