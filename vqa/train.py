"""Train a VQA model on a preprocessed directory OUT into a run directory RUN.

Reads OUT/preprocess.json, answers.json, vocab.json, embeddings.h5, backbone.json
(+ backbone.keras) and the train/val splits (``vqa.dataset``). Writes RUN/:

- model.keras: the best epoch by validation VQA accuracy, inference only (no optimizer);
- checkpoints/last.keras (weights + optimizer state, with the resume state embedded as
  ``vqa_state.json`` so weights and state can never disagree) and checkpoints/state.json
  (a readable copy: epochs done, best epoch, history, dropout RNG states, seed), both
  rewritten atomically after every epoch;
- config.json, run.json, answers.json, vocab.json, backbone.json (+ backbone.keras),
  history.csv, metrics.json, logs/ (TensorBoard), model_summary.txt, model.png (when
  pydot and graphviz are installed).

Validation uses the official VQA accuracy: the model's top answer scores the
``score_values`` entry of that class (0 when the class is not among the question's
``score_indices``), which preprocessing computed with the official metric, so the mean x 100
equals the official number for vocabulary answers.

Resuming (re-running into the same RUN) continues a killed run at the next epoch and gives
the same weights as an uninterrupted run: the checkpoint restores weights, optimizer state
(including the step count that drives the learning-rate schedule) and the dropout seed
generators' states, and the per-epoch shuffle depends only on (seed, epoch).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import keras
import numpy as np
from keras import ops

from vqa import dataset as vqa_dataset
from vqa.config import Config, TrainConfig
from vqa.errors import VQAError
from vqa.model import build_model
from vqa.progress import progress
from vqa.storage import atomic_path, read_json, write_json, write_text

FORMAT_VERSION = 1
STATE_ENTRY = "vqa_state.json"  # the resume state stored inside checkpoints/last.keras
# Settings that may change between a killed run and its resumption; any other change
# would make the resumed run a different experiment, so it is refused.
RESUMABLE_CHANGES = {("data", "data_dir"), ("train", "epochs"), ("train", "early_stopping_patience"),
                     ("train", "val_limit"), ("train", "devices"), ("train", "workers")}


# ---------------------------------------------------------------------------------------------
# Losses and metrics

def _soft_score_percent(y_true, y_pred):
    """Per-question official accuracy of the top answer x 100: y_true float (B, K) soft scores."""
    top = ops.expand_dims(ops.argmax(y_pred, axis=-1), axis=-1)
    return 100.0 * ops.squeeze(ops.take_along_axis(ops.cast(y_true, "float32"), top, axis=-1), axis=-1)


def _exact_match_percent(y_true, y_pred):
    """100 where the top answer is the class in y_true int (B,) (the most common answer), else 0."""
    top = ops.argmax(y_pred, axis=-1)
    target = ops.cast(ops.reshape(y_true, (-1,)), top.dtype)
    return 100.0 * ops.cast(ops.equal(top, target), "float32")


@keras.saving.register_keras_serializable(package="vqa")
class VQAAccuracy(keras.metrics.MeanMetricWrapper):
    """Training-time accuracy of the top answer, in percent, shown in the progress bar.

    With dense soft-score targets (loss "soft") this is exactly the official VQA accuracy
    on the training questions. With class-index targets (loss "softmax") only the most
    common answer is known, so it is the exact-match accuracy and is named
    ``answer_accuracy`` to say so.
    """

    def __init__(self, sparse_targets: bool = False, name: str | None = None, dtype=None):
        fn = _exact_match_percent if sparse_targets else _soft_score_percent
        super().__init__(fn, name=name or ("answer_accuracy" if sparse_targets else "vqa_accuracy"), dtype=dtype)
        self.sparse_targets = sparse_targets

    def get_config(self):
        return {"sparse_targets": self.sparse_targets, "name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def make_loss(loss: str) -> keras.losses.Loss:
    """The training loss for ``train.loss``.

    "soft": binary cross-entropy between the sigmoid scores and the VQA soft scores
    (Teney et al. 2018), averaged over the K answers and the batch. Their formulation sums
    over answers, i.e. K times this value; Adam's steps do not depend on a constant loss
    scale, so the mean only changes what the printed loss and ``clipnorm`` refer to.
    "softmax": sparse categorical cross-entropy against the most common answer's class.
    """
    if loss == "soft":
        return keras.losses.BinaryCrossentropy(name="soft_score_bce")
    if loss == "softmax":
        return keras.losses.SparseCategoricalCrossentropy(name="answer_cross_entropy")
    raise VQAError(f"train.loss must be soft or softmax, got {loss!r}.")


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate or schedule for ``train.lr_schedule``, stepped per batch.

    "cosine" decays to 0 over ``epochs``; "step" multiplies by ``lr_decay_rate`` every
    ``lr_decay_epochs`` epochs. Both are built-in schedules, so they are saved with the
    optimizer in checkpoints/last.keras and a resumed run continues where it was.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.epochs * steps_per_epoch)
    if config.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=max(1, config.lr_decay_epochs) * steps_per_epoch,
            decay_rate=config.lr_decay_rate, staircase=True)
    raise VQAError(f"train.lr_schedule must be constant, cosine or step, got {config.lr_schedule!r}.")


def official_accuracy(predicted: np.ndarray, score_indices: np.ndarray, score_values: np.ndarray) -> np.ndarray:
    """Per-question official VQA accuracy of predicted classes.

    Args:
        predicted: int (N,) predicted answer classes.
        score_indices: int (N, S) the question's answer classes, -1 padded (distinct).
        score_values: float (N, S) the official accuracy of each of those classes.

    Returns:
        float (N,) in [0, 1]: the score of the predicted class, 0 when it is not listed.
    """
    matches = score_indices == np.asarray(predicted)[:, None]
    return (score_values * matches).sum(axis=1)


def predict_classes(predictor: keras.Model, batches: vqa_dataset.QuestionBatches) -> np.ndarray:
    """int (N,) top answer class per question, from a model made by ``argmax_model``."""
    classes = np.asarray(predictor.predict(batches, verbose=0)).astype(np.int64).reshape(-1)
    return classes[:batches.num_samples]  # the rest pads the last batch for data parallelism


def argmax_model(model: keras.Model) -> keras.Model:
    """Wrap ``model`` so that predict returns int (batch,) classes, not (batch, K) scores.

    Keeps validation memory-lean: the full val2014 scores would be 214,354 x K floats.
    """
    return keras.Model(model.input, ops.argmax(model.output, axis=-1), name=f"{model.name}_argmax")


def score_split(predicted: np.ndarray, data: vqa_dataset.SplitData, rows: np.ndarray,
                prefix: str = "val_") -> dict[str, float]:
    """Official VQA accuracy (x 100, 2 decimals), overall and per answer type when known."""
    per_question = official_accuracy(predicted, data.score_indices[rows], data.score_values[rows])
    scores = {f"{prefix}vqa_accuracy": round(float(per_question.mean()) * 100, 2)}
    if data.answer_types is not None:
        types = np.asarray(data.answer_types, dtype=object)[rows]
        for answer_type in sorted(set(types)):
            key = "".join(c if c.isalnum() else "_" for c in answer_type)
            scores[f"{prefix}vqa_accuracy_{key}"] = round(float(per_question[types == answer_type].mean()) * 100, 2)
    return scores


# ---------------------------------------------------------------------------------------------
# Devices, precision, determinism

def _set_determinism(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def _precision(enabled: bool, log: Callable[[str], None]) -> Iterator[None]:
    """Set the global mixed-precision policy for the run; restore the previous one after."""
    previous = keras.mixed_precision.global_policy()
    if enabled:
        policy = "mixed_bfloat16"
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") if gpus else None
            if capability and capability < (8, 0):
                policy = "mixed_float16"  # bfloat16 needs Ampere or newer; float16 gets loss scaling
        keras.mixed_precision.set_global_policy(policy)
        log(f"mixed precision: {policy} (answer scores in float32)")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _device_count(devices: str, available: int, kind: str) -> int:
    if devices == "all":
        return available
    try:
        count = int(devices)
    except ValueError:
        raise VQAError(f"train.devices must be auto, all, cpu or a number of devices, got {devices!r}.") from None
    if not 1 <= count <= available:
        raise VQAError(f"train.devices={count} but this machine has {available} {kind} device(s).")
    return count


@contextlib.contextmanager
def _distribution(devices: str, log: Callable[[str], None]) -> Iterator[tuple[Any, int]]:
    """Yield the scope to build and train the model in, for ``train.devices``, and the
    number every batch size must be a multiple of.

    "auto": the backend's default device; "cpu": the CPU; "all" or a number: data
    parallel over that many accelerators (or logical CPU devices when there are none),
    with ``tf.distribute.MirroredStrategy`` on TensorFlow and
    ``keras.distribution.DataParallel`` on JAX. The batch size stays the global one.
    """
    backend = keras.backend.backend()
    if devices == "auto":
        yield contextlib.nullcontext(), 1
        return
    if backend == "tensorflow":
        import tensorflow as tf

        if devices == "cpu":
            strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        else:
            gpus = tf.config.list_logical_devices("GPU")
            pool, kind = (gpus, "GPU") if gpus else (tf.config.list_logical_devices("CPU"), "CPU")
            count = _device_count(devices, len(pool), kind)
            strategy = tf.distribute.MirroredStrategy([d.name for d in pool[:count]])
            log(f"data parallel: MirroredStrategy over {strategy.num_replicas_in_sync} {kind} replicas")
        yield strategy.scope(), 1  # tf.distribute splits uneven batches itself
    elif backend == "jax":
        all_devices = keras.distribution.list_devices("cpu" if devices == "cpu" else None)
        count = 1 if devices == "cpu" else _device_count(devices, len(all_devices), "JAX")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=all_devices[:count]))
        log(f"data parallel: keras.distribution.DataParallel over {count} device(s)")
        try:
            yield contextlib.nullcontext(), count  # JAX shards each batch evenly
        finally:
            keras.distribution.set_distribution(None)
    else:
        log(f"train.devices={devices} is not supported on the {backend} backend: using its default device")
        yield contextlib.nullcontext(), 1


# ---------------------------------------------------------------------------------------------
# Checkpoints and run files

def _seed_states(model: keras.Model) -> dict[str, list[list[int]]]:
    """The RNG states of each layer's seed generators (dropout masks), by layer name.

    Keras saves weights and optimizer variables but not seed-generator states, and
    their variable paths carry process-wide counters, so they are keyed by layer name
    (stable across save/load) and stored in the resume state instead.
    """
    states = {}
    for layer in model.layers:
        weight_ids = {id(w) for w in layer.weights}
        seeds = [v for v in layer.variables if id(v) not in weight_ids]
        if seeds:
            states[layer.name] = [np.asarray(ops.convert_to_numpy(v)).tolist() for v in seeds]
    return states


def _restore_seed_states(model: keras.Model, states: dict[str, list[list[int]]]) -> None:
    for layer in model.layers:
        if layer.name not in states:
            continue
        weight_ids = {id(w) for w in layer.weights}
        seeds = [v for v in layer.variables if id(v) not in weight_ids]
        for variable, value in zip(seeds, states[layer.name]):
            variable.assign(np.asarray(value, dtype=variable.dtype))


def _save_checkpoint(model: keras.Model, path: Path, state: dict) -> None:
    """Save weights + optimizer with ``state`` inside the same .keras zip, atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(STATE_ENTRY, json.dumps(state))


def _read_checkpoint_state(run_dir: Path) -> dict | None:
    """The resume state of RUN, or None when it has no checkpoint yet."""
    checkpoint = run_dir / "checkpoints" / "last.keras"
    if not checkpoint.is_file():
        return None
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            state = json.loads(archive.read(STATE_ENTRY))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
        raise VQAError(
            f"checkpoint {checkpoint} is unreadable or was not written by `vqa train`: "
            "delete the run directory or pass --restart to start it over."
        ) from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise VQAError(
            f"checkpoint {checkpoint} was written by another version of vqa (run format {version}, this one "
            f"writes {FORMAT_VERSION}): train into a new run directory, or pass --restart to start this one over."
        )
    return state


def _save_inference_model(model: keras.Model, path: Path) -> None:
    """Save the weights without optimizer state (a third of the size) for evaluate/predict."""
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    with atomic_path(path, suffix=".keras") as tmp:
        copy.save(tmp)


def _copy_file(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _write_history(path: Path, history: list[dict]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def _write_summary(model: keras.Model, run_dir: Path) -> None:
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=110)
    write_text(run_dir / "model_summary.txt", "\n".join(lines) + "\n")
    with contextlib.suppress(ImportError):
        import pydot  # noqa: F401  (plot_model needs it and graphviz's dot)

        if shutil.which("dot"):
            with contextlib.suppress(Exception), atomic_path(run_dir / "model.png") as tmp:
                keras.utils.plot_model(model, to_file=str(tmp), show_shapes=True, show_layer_names=True)


def _check_resumable(run_dir: Path, config: Config) -> None:
    """Refuse to resume a run with different settings (other than RESUMABLE_CHANGES)."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    saved = read_json(saved_path, "run configuration")
    current = config.to_dict()
    for section in ("data", "model", "train"):
        for key, value in current[section].items():
            if (section, key) in RESUMABLE_CHANGES or key not in saved.get(section, {}):
                continue
            if saved[section][key] != value:
                raise VQAError(
                    f"{run_dir} holds a run trained with {section}.{key}={saved[section][key]!r}, not {value!r}: "
                    "train into a new run directory, or pass --restart to start this one over."
                )


def _is_finished(run_dir: Path) -> bool:
    """Whether RUN's final files were written (run.json says completed, metrics.json exists)."""
    run_path = run_dir / "run.json"
    if not run_path.is_file() or not (run_dir / "metrics.json").is_file():
        return False
    run = read_json(run_path, "run description")
    return isinstance(run, dict) and run.get("completed") is True


def _final_metrics(state: dict, extra: dict) -> dict:
    """metrics.json: the best epoch's validation scores and the last epoch's training numbers."""
    history = state["history"]
    last = history[-1] if history else {}
    best = next((row for row in history if row["epoch"] == state["best_epoch"]), last)
    metrics = {key: value for key, value in best.items() if key.startswith("val_")}
    metrics.update({
        "best_epoch": state["best_epoch"],
        "epochs_done": state["epoch"],
        "stopped_early": state["stopped_early"],
        "train_loss": last.get("loss"),
        "train_accuracy": last.get("vqa_accuracy", last.get("answer_accuracy")),
        "samples_per_s": last.get("samples_per_s"),
        **extra,
    })
    return metrics


# ---------------------------------------------------------------------------------------------
# Callbacks

class _RunRecorder(keras.callbacks.Callback):
    """After each epoch: validate, keep the best model, checkpoint, early-stop.

    Runs before the other callbacks, so its log entries (val_vqa_accuracy, samples_per_s,
    learning_rate) reach the progress line and TensorBoard.
    """

    def __init__(self, run_dir: Path, state: dict, train_batches: vqa_dataset.QuestionBatches,
                 val_batches: vqa_dataset.QuestionBatches | None, predictor: keras.Model | None,
                 patience: int, write_run_json: Callable[[dict], None]):
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.predictor = predictor
        self.patience = patience
        self.write_run_json = write_run_json
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.train_batches.set_epoch(epoch)
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        elapsed = time.perf_counter() - self._started
        logs["samples_per_s"] = round(self.train_batches.num_samples / elapsed, 1)
        logs["epoch_time_s"] = round(elapsed, 2)
        logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self.val_batches is not None:
            predicted = predict_classes(self.predictor, self.val_batches)
            logs.update(score_split(predicted, self.val_batches.data, self.val_batches.rows))
        row = {"epoch": epoch + 1, **{key: _plain(value) for key, value in logs.items()}}
        history = self.state["history"] + [row]

        score = row.get("val_vqa_accuracy")
        best_score = self.state["best_val_vqa_accuracy"]
        improved = score is None or best_score is None or score > best_score
        if improved:
            self.state.update(best_epoch=epoch + 1, best_val_vqa_accuracy=score)
            _save_inference_model(self.model, self.run_dir / "model.keras")
        stop = (self.patience > 0 and score is not None
                and epoch + 1 - self.state["best_epoch"] >= self.patience)
        if stop:
            self.model.stop_training = True
        self.state.update(epoch=epoch + 1, history=history, stopped_early=stop, seed_states=_seed_states(self.model))
        checkpoints = self.run_dir / "checkpoints"
        _save_checkpoint(self.model, checkpoints / "last.keras", self.state)
        write_json(checkpoints / "state.json", self.state)
        _write_history(self.run_dir / "history.csv", history)
        self.write_run_json(self.state)


def _plain(value: Any) -> Any:
    """JSON-able number for a log value (Keras may hand numpy scalars)."""
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return float(np.asarray(value))


class _EpochProgress(keras.callbacks.Callback):
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


def _tensorboard(run_dir: Path) -> list[keras.callbacks.Callback]:
    """TensorBoard logging where the installation supports it (TensorFlow's summary writer
    needs the tensorboard package, which a plain ``tensorflow`` install may lack)."""
    if importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("tensorflow") is None:
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False)]


# ---------------------------------------------------------------------------------------------
# The entry point

def _check_train_config(config: TrainConfig) -> None:
    if config.epochs < 1:
        raise VQAError(f"train.epochs must be at least 1, got {config.epochs}.")
    if config.learning_rate <= 0:
        raise VQAError(f"train.learning_rate must be positive, got {config.learning_rate}.")
    if config.loss not in ("soft", "softmax"):
        raise VQAError(f"train.loss must be soft or softmax, got {config.loss!r}.")
    if config.workers < 1:
        raise VQAError(f"train.workers must be at least 1, got {config.workers}.")


def train(data_dir: str | Path, run_dir: str | Path, config: Config, resume: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Train ``config.model.name`` on OUT=``data_dir`` into RUN=``run_dir``.

    Args:
        data_dir: the preprocessed directory OUT (``vqa preprocess``).
        run_dir: the run directory RUN; created if needed.
        config: the resolved configuration (its data section names the splits).
        resume: continue from RUN/checkpoints when present; False starts over.
        log: where progress lines go.

    Returns:
        The final metrics (also RUN/metrics.json): the best epoch's validation scores
        (``val_vqa_accuracy`` and per answer type), ``best_epoch``, ``epochs_done``,
        ``stopped_early``, the last epoch's training loss/accuracy and samples/s.

    Raises:
        VQAError: OUT not preprocessed, a split missing, a bad setting, or a RUN
            holding a different experiment.
    """
    data_dir = Path(data_dir).resolve()
    run_dir = Path(run_dir)
    settings = config.train
    _check_train_config(settings)
    info = vqa_dataset.read_preprocess_info(data_dir)

    state = _read_checkpoint_state(run_dir) if resume else None
    trained = False
    if state is not None:
        _check_resumable(run_dir, config)
        trained = state["stopped_early"] or state["epoch"] >= settings.epochs
        if trained and _is_finished(run_dir):
            how = "stopped early" if state["stopped_early"] else "finished"
            log(f"{run_dir} is complete ({how} after {state['epoch']} epochs, best epoch {state['best_epoch']}): "
                "nothing to do; ask for more epochs to continue it.")
            return read_json(run_dir / "metrics.json", "run metrics")

    train_data = vqa_dataset.load_split(data_dir, config.data.train_split)
    val_data = vqa_dataset.load_split(data_dir, config.data.val_split) if config.data.val_split else None
    answers = vqa_dataset.load_answers(data_dir)
    vocab = vqa_dataset.load_vocab(data_dir)
    output_activation = "sigmoid" if settings.loss == "soft" else "softmax"

    _set_determinism(settings.seed)
    with (_precision(settings.mixed_precision, log),
          _distribution(settings.devices, log) as (scope, multiple),
          scope):
        if state is not None:
            log(f"resuming {run_dir} after epoch {state['epoch']}")
            model = keras.saving.load_model(run_dir / "checkpoints" / "last.keras", safe_mode=True)
            _restore_seed_states(model, state["seed_states"])
        else:
            embeddings = vqa_dataset.load_embeddings(data_dir)
            if embeddings.shape[0] != len(vocab):
                raise VQAError(f"{data_dir / 'embeddings.h5'} has {embeddings.shape[0]} rows but vocab.json has "
                               f"{len(vocab)} words: run `vqa preprocess` again.")
            model = build_model(config.model, embeddings, len(answers), train_data.feature_dim,
                                train_data.max_length, output_activation)
            state = {"format_version": FORMAT_VERSION, "epoch": 0, "best_epoch": 0, "best_val_vqa_accuracy": None,
                     "stopped_early": False, "seed": settings.seed, "history": [], "seed_states": {}}

        include_images = "image_features" in model.input
        feeding = {"workers": settings.workers, "batch_multiple": multiple}
        train_batches = vqa_dataset.QuestionBatches(
            train_data, settings.batch_size, len(answers), settings.loss, training=True, seed=settings.seed,
            include_images=include_images, **feeding)
        val_batches = None
        if val_data is not None:
            val_batches = vqa_dataset.QuestionBatches(
                val_data, settings.batch_size, len(answers), settings.loss, with_targets=False,
                include_images=include_images, limit=settings.val_limit, **feeding)
        if state["epoch"] == 0:
            optimizer = keras.optimizers.Adam(learning_rate(settings, len(train_batches)), clipnorm=settings.clipnorm)
            model.compile(optimizer=optimizer, loss=make_loss(settings.loss),
                          metrics=[VQAAccuracy(sparse_targets=settings.loss == "softmax")])
        predictor = argmax_model(model) if val_batches is not None else None

        log(f"training {config.model.name} on {train_batches.num_samples} {train_data.split} questions "
            f"(left out: {train_batches.num_missing_images} without image, {train_batches.num_without_answer} "
            f"without a vocabulary answer)"
            + (f"; validating on {val_batches.num_samples} {val_data.split} questions "
               f"({val_batches.num_missing_images} with a zero image vector)" if val_batches else "; no validation"))

        run_facts = {"format_version": FORMAT_VERSION, "data_dir": str(data_dir), "lang": info.get("lang", "en"),
                     "max_question_length": train_data.max_length, "feature_dim": train_data.feature_dim,
                     "loss": settings.loss, "num_answers": len(answers), "model": config.model.name}

        def write_run_json(current: dict, completed: bool = False) -> None:
            write_json(run_dir / "run.json", run_facts | {"best_epoch": current["best_epoch"], "completed": completed})

        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        for name in ("answers.json", "vocab.json", "backbone.json", "backbone.keras"):
            if (data_dir / name).is_file():
                _copy_file(data_dir / name, run_dir / name)
        _write_summary(model, run_dir)
        write_run_json(state)

        callbacks = [
            _RunRecorder(run_dir, state, train_batches, val_batches, predictor,
                         settings.early_stopping_patience if val_batches is not None else 0, write_run_json),
            *_tensorboard(run_dir),
            _EpochProgress(settings.epochs, len(train_batches), settings.batch_size, train_batches.num_samples, log),
        ]
        # A run killed after its last checkpoint but before metrics.json only lacks the final files.
        if not trained:
            # shuffle=False: Keras would otherwise reorder the batches with Python's global RNG,
            # which a resumed process cannot reproduce; QuestionBatches shuffles by (seed, epoch).
            model.fit(train_batches, epochs=settings.epochs, initial_epoch=state["epoch"], verbose=0,
                      callbacks=callbacks, shuffle=False)

    metrics = _final_metrics(state, {
        "num_train_questions": train_batches.num_samples,
        "num_train_missing_images": train_batches.num_missing_images,
        "num_train_without_answer": train_batches.num_without_answer,
        "num_val_questions": val_batches.num_samples if val_batches else 0,
        "num_val_missing_images": val_batches.num_missing_images if val_batches else 0,
    })
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "checkpoints" / "state.json", state | {"completed": True})
    write_run_json(state, completed=True)
    best = metrics.get("val_vqa_accuracy")
    log(f"done: {state['epoch']} epochs" + (f", best val VQA accuracy {best:.2f} at epoch {state['best_epoch']}"
                                           if best is not None else "") + f"; model in {run_dir / 'model.keras'}")
    return metrics
