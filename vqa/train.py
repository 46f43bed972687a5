"""Train a VQA model on a preprocessed directory OUT into a run directory RUN.

Reads OUT's preprocessing manifest, answer and question vocabularies, word vectors and the
train/val splits (``vqa.dataset``). Writes the run folder (``vqa.run_folder``): the best
epoch's inference model, the run description, the final metrics, the per-epoch history,
the model summary and TensorBoard logs, with the configuration (``vqa.config``) and copies
of OUT's vocabularies, tokenizer and backbone; and after every epoch the training
checkpoint a killed run resumes from (``vqa.checkpoints``).

Validation uses the official VQA accuracy: the model's top answer scores the
``score_values`` entry of that class (0 when the class is not among the question's
``score_indices``), which preprocessing computed with the official metric, so the mean x 100
equals the official number for vocabulary answers (``vqa.losses``).

Resuming (re-running into the same RUN) continues a killed run at the next epoch and gives
the same weights as an uninterrupted run: the checkpoint restores weights, optimizer state
(including the step count that drives the learning-rate schedule) and the dropout seed
generators' states, and the per-epoch shuffle depends only on (seed, epoch).

With ``train.deterministic`` (the default) two runs with the same seed and data give
bit-identical weights and final metrics on CPU (``vqa.devices.set_determinism``); timings
live in the per-epoch history only. Several processes (``vqa.distributed``, JAX) train one run
data-parallel; process 0 writes RUN, and the run resumes in any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable

import keras

from vqa import answers as answers_lib
from vqa import callbacks, checkpoints, devices, distributed, environment, run_folder
from vqa import config as config_lib
from vqa import dataset as vqa_dataset
from vqa import registry, streamed_batches, visual
from vqa import manifest as manifest_lib
from vqa import text as text_lib
from vqa.checkpoints import TrainState
from vqa.config import Config, TrainConfig
from vqa.distributed import Cluster
from vqa.errors import VQAError
from vqa.locks import folder_lock
from vqa.losses import VQAAccuracy, make_loss
from vqa.paths import check_outputs
from vqa.run_folder import NO_IMAGE, RunInfo

# Settings that may change between a killed run and its resumption; any other change
# would make the resumed run a different experiment, so it is refused.
MIN_AUTO_BATCH = 32  # the smallest batch train.min_batches makes

# The schedule's epoch counts that train.min_steps may multiply: compared once the split's steps are known.
STRETCHED = frozenset({("train", "warmup_epochs"), ("train", "lr_decay_at"), ("train", "lr_decay_epochs")})
RESUMABLE_CHANGES = {("data", "data_dir"), ("train", "epochs"), ("train", "min_steps"),
                     ("train", "early_stopping_patience"),
                     ("train", "val_limit"), ("train", "devices"), ("train", "workers"),
                     ("train", "deterministic")}


# ---------------------------------------------------------------------------------------------
# Settings

def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate or schedule for ``train.lr_schedule``, stepped per batch.

    Every boundary is in epochs, i.e. relative to the optimizer steps an epoch takes, so one
    recipe serves 8K and 443K questions. "cosine" decays to 0 over ``epochs`` after a linear
    warmup over ``warmup_epochs``; "step" multiplies by ``lr_decay_rate`` every ``lr_decay_epochs``;
    "warmup-step" (MCAN's) runs epoch k of the first ``warmup_epochs`` at k/(warmup_epochs + 1)
    of the rate, then multiplies it by ``lr_decay_rate`` after each epoch of ``lr_decay_at``.
    All are built-in schedules, saved with the optimizer in the checkpoint (``vqa.checkpoints``),
    so a resumed run continues where it was.
    """
    rate, warmup = config.learning_rate, config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "constant":
        return rate
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else rate, decay_steps=max(1, config.epochs * steps_per_epoch - warmup),
            warmup_target=rate if warmup else None, warmup_steps=warmup)
    if config.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            rate, decay_steps=max(1, config.lr_decay_epochs) * steps_per_epoch,
            decay_rate=config.lr_decay_rate, staircase=True)
    if config.lr_schedule == "warmup-step":
        # Keras keeps values[i] up to and including boundaries[i]; step s (0-based) is in epoch s // steps + 1.
        boundaries = [epoch * steps_per_epoch - 1 for epoch in range(1, config.warmup_epochs + 1)]
        values = [rate * epoch / (config.warmup_epochs + 1) for epoch in range(1, config.warmup_epochs + 1)] + [rate]
        for epoch in decay_epochs(config):
            boundaries.append(epoch * steps_per_epoch - 1)
            values.append(values[-1] * config.lr_decay_rate)
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values) if boundaries else rate
    raise VQAError(f"train.lr_schedule must be constant, cosine, step or warmup-step, got {config.lr_schedule!r}.")


def decay_epochs(config: TrainConfig) -> list[int]:
    """The epochs of ``lr_decay_at``, increasing and after the warmup."""
    epochs = sorted({int(part) for part in config.lr_decay_at.split(",") if part.strip()})
    if epochs and epochs[0] <= config.warmup_epochs:
        raise VQAError(f"train.lr_decay_at={config.lr_decay_at} decays during the warmup (train.warmup_epochs="
                       f"{config.warmup_epochs}); decay after it.")
    return epochs


def stretch_factor(config: TrainConfig, steps_per_epoch: int) -> int:
    """The smallest whole k for which k x ``epochs`` epochs take ``min_steps`` optimizer steps (1 when they do)."""
    steps = config.epochs * steps_per_epoch
    if not config.min_steps or steps >= config.min_steps:
        return 1
    return -(-config.min_steps // steps)


def stretched(config: TrainConfig, factor: int) -> TrainConfig:
    """``config`` with the run and every epoch count its schedule reads ``factor`` times as long."""
    if factor == 1:
        return config
    changes = {"epochs": config.epochs * factor}
    if config.lr_schedule in ("cosine", "warmup-step"):
        changes["warmup_epochs"] = config.warmup_epochs * factor
    if config.lr_schedule == "warmup-step":
        changes["lr_decay_at"] = ",".join(str(epoch * factor) for epoch in decay_epochs(config))
    if config.lr_schedule == "step":
        changes["lr_decay_epochs"] = config.lr_decay_epochs * factor
    return dataclasses.replace(config, **changes)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam or Adamax (``train.optimizer``) with the schedule, betas, epsilon and global-norm clipping."""
    kind = {"adam": keras.optimizers.Adam, "adamax": keras.optimizers.Adamax}[config.optimizer]
    return kind(learning_rate(config, steps_per_epoch), beta_2=config.adam_beta_2, epsilon=config.adam_epsilon,
                global_clipnorm=config.clipnorm)


def batch_size_for(config: TrainConfig, questions: int) -> int:
    """Questions per batch: ``batch_size``, made smaller (down to ``MIN_AUTO_BATCH``) when the split is too
    small for ``min_batches`` batches of it, so a short run on a subset still takes enough optimizer steps."""
    if not config.min_batches or questions >= config.batch_size * config.min_batches:
        return config.batch_size
    return min(config.batch_size, max(MIN_AUTO_BATCH, questions // config.min_batches))


def _check_resumable(run_dir: Path, config: Config, unchecked: frozenset = frozenset()) -> None:
    """Refuse to resume a run with different settings (other than RESUMABLE_CHANGES and ``unchecked``)."""
    saved = config_lib.load_config(run_dir).to_dict()
    current = config.to_dict()
    for section in ("data", "model", "train"):
        for key, value in current[section].items():
            if (section, key) in RESUMABLE_CHANGES | unchecked or key not in saved.get(section, {}):
                continue
            if saved[section][key] != value:
                raise VQAError(
                    f"{run_dir} holds a run trained with {section}.{key}={saved[section][key]!r}, not {value!r}: "
                    "train into a new run directory, or pass --restart to start this one over."
                )


def _final_metrics(state: TrainState, extra: dict) -> dict:
    """The run's final metrics: the best epoch's validation scores and the last epoch's training numbers
    (no timings, so that two identical runs write identical files: the history has them)."""
    history = state.history
    last = history[-1] if history else {}
    best = next((row for row in history if row["epoch"] == state.best_epoch), last)
    metrics = {key: value for key, value in best.items() if key.startswith("val_")}
    metrics.update({
        "best_epoch": state.best_epoch,
        "epochs_done": state.epoch,
        "stopped_early": state.stopped_early,
        "train_loss": last.get("loss"),
        "train_accuracy": last.get("vqa_accuracy", last.get("answer_accuracy")),
        **extra,
    })
    return metrics


# ---------------------------------------------------------------------------------------------
# The entry point

def train(data_dir: str | Path, run_dir: str | Path, config: Config, resume: bool = True,
          log: Callable[[str], None] = print, cluster: Cluster = distributed.SINGLE) -> dict:
    """Train ``config.model.name`` on OUT=``data_dir`` into RUN=``run_dir``.

    Args:
        data_dir: the preprocessed directory OUT (``vqa preprocess``).
        run_dir: the run directory RUN; created if needed.
        config: the resolved configuration (its data section names the splits).
        resume: continue from the run's checkpoint when there is one; False starts over.
        log: where progress lines go (process 0's only, in a cluster).
        cluster: the processes training together (``vqa.distributed``); every one calls ``train``
            with the same arguments, and process 0 alone writes RUN.

    Returns:
        The final metrics (also saved in RUN, ``vqa.run_folder``): the best epoch's validation scores
        (``val_vqa_accuracy`` and per answer type), ``best_epoch``, ``epochs_done``,
        ``stopped_early`` and the last epoch's training loss and accuracy; every process of a
        cluster returns the same.

    Raises:
        VQAError: OUT not preprocessed, a split missing, a bad setting, a RUN
            holding a different experiment, or a cluster on the TensorFlow backend.
    """
    data_dir = Path(data_dir).resolve()
    run_dir = Path(run_dir)
    # The saved configuration names the OUT the run really read.
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(data_dir)))
    config_lib.check_config(config)
    check_outputs({"--data": data_dir}, {"--out": run_dir})
    manifest = manifest_lib.load_manifest(data_dir)
    # Before the backend starts: XLA reads its determinism flag then, and a seed set before joining a
    # cluster is the one every process uses.
    distributed.check_devices(config.train.devices, cluster.num_processes)
    devices.set_determinism(config.train.seed, config.train.deterministic)
    distributed.initialize(cluster, log)
    if not cluster.writes:
        log = _quiet
    # A second `vqa train --out RUN` stops here, in one sentence; the other processes of a cluster only read RUN.
    with folder_lock(run_dir, "train") if cluster.writes else contextlib.nullcontext():
        return _train_locked(data_dir, run_dir, config, manifest, resume, log)


def _quiet(line: str) -> None:
    """The log of the processes other than 0, which leave reporting to it."""


def _train_locked(data_dir: Path, run_dir: Path, config: Config, manifest: manifest_lib.Manifest, resume: bool,
                  log: Callable[[str], None]) -> dict:
    settings = config.train
    state = checkpoints.read_state(run_dir) if resume else None
    _check_same_checkpoint(run_dir, state)
    trained = False
    if state is not None:
        _check_resumable(run_dir, config, unchecked=STRETCHED)  # those after the stretch, in _train_loaded
        finished = run_folder.is_finished(run_dir)
        trained = state.stopped_early or state.epoch >= settings.epochs
        if trained and finished and not state.stopped_early:
            steps = run_folder.read_metrics(run_dir).get("steps_per_epoch")  # asking for more steps continues it
            trained = not steps or state.epoch >= settings.epochs * stretch_factor(settings, int(steps))
        if trained and finished:
            how = "stopped early" if state.stopped_early else "finished"
            log(f"{run_dir} is complete ({how} after {state.epoch} epochs, best epoch {state.best_epoch}): "
                "nothing to do; ask for more epochs to continue it.")
            return run_folder.read_metrics(run_dir)

    features = image_source(config, data_dir)
    log(f"{config.model.name} reads "
        + (f"{visual.source(features).what} (data.features={features})" if features else "no image"))
    train_data = vqa_dataset.load_split(data_dir, config.data.train_split, features)
    val_data = None
    closing = [train_data]
    try:
        if config.data.val_split:
            val_data = vqa_dataset.load_split(data_dir, config.data.val_split, features)
            closing.append(val_data)
        return _train_loaded(data_dir, run_dir, config, manifest, state, trained, train_data, val_data, features,
                             closing, log)
    finally:
        for item in closing:
            item.close()


def _check_same_checkpoint(run_dir: Path, state: TrainState | None) -> None:
    """In a cluster, refuse (on every process) to start when the processes see different checkpoints."""
    epochs = distributed.gather(state.epoch if state is not None else 0)
    if len(set(epochs)) > 1:
        seen = ", ".join(f"process {i}: epoch {epoch}" for i, epoch in enumerate(epochs))
        raise VQAError(f"the training processes see different checkpoints in {run_dir} ({seen}): put RUN on a "
                       "file system every host sees at the same path.")


def image_source(config: Config, data_dir: Path) -> str | None:
    """What a run reads as its image (a ``vqa.visual`` source name), None for a blind model:
    ``data.features``, or for "auto" the first input its model reads that the train split holds."""
    entry = registry.entry(config.model.name)
    return visual.resolve_source(config.data.features, config.model.name, entry.reads,
                                 Path(data_dir) / config.data.train_split)


def _train_loaded(data_dir: Path, run_dir: Path, config: Config, manifest: manifest_lib.Manifest,
                  state: TrainState | None, trained: bool, train_data: vqa_dataset.SplitData,
                  val_data: vqa_dataset.SplitData | None, features: str, closing: list,
                  log: Callable[[str], None]) -> dict:
    settings = config.train
    answers = answers_lib.read_answers(data_dir)
    vocab = text_lib.read_vocabulary(data_dir)
    output_activation = "sigmoid" if settings.loss == "soft" else "softmax"

    writes = distributed.process_index() == 0
    with (devices.precision(settings.mixed_precision, log),
          devices.distribution(settings.devices, log) as placement,
          placement.scope):
        if state is not None:
            log(f"resuming {run_dir} after epoch {state.epoch}")
            model = checkpoints.load_checkpoint_model(run_dir)
            checkpoints.restore_seed_states(model, state.seed_states)
        else:
            embeddings = text_lib.read_embeddings(data_dir)
            if embeddings.shape[0] != len(vocab):
                raise VQAError(f"{data_dir} has {embeddings.shape[0]} word vectors but {len(vocab)} words in its "
                               "vocabulary: run `vqa preprocess` again.")
            model = registry.build_model(config.model, embeddings, len(answers), train_data.spec,
                                         train_data.max_length, output_activation)
            state = TrainState(seed=settings.seed)

        include_images = visual.kind_of_model({tensor.name: tensor for tensor in model.inputs}) is not None
        multi_process = placement.shard[1] > 1
        def training_batches(batch_size: int):
            return streamed_batches.batches_for(
                train_data, batch_size, len(answers), loss=settings.loss, training=True, seed=settings.seed,
                include_images=include_images, workers=settings.workers, batch_multiple=placement.batch_multiple,
                shard=placement.shard)

        train_batches = training_batches(settings.batch_size)
        batch_size = batch_size_for(settings, train_batches.num_samples)
        if batch_size != settings.batch_size:
            train_batches.close()
            train_batches = training_batches(batch_size)
            log(f"batches of {batch_size} questions: {train_batches.num_samples} questions are too few for "
                f"train.min_batches={settings.min_batches} batches of train.batch_size={settings.batch_size}")
        closing.append(train_batches)
        factor = stretch_factor(settings, len(train_batches))
        if factor > 1:
            log(f"train.min_steps={settings.min_steps}: {settings.epochs} epochs of {len(train_batches)} steps are "
                f"only {settings.epochs * len(train_batches)}, so the run and its schedule take {factor} x as many "
                f"epochs ({settings.epochs * factor})")
            settings = stretched(settings, factor)
            config = dataclasses.replace(config, train=settings)
        if state.epoch:
            _check_resumable(run_dir, config)
            trained = state.stopped_early or state.epoch >= settings.epochs
        val_batches = None
        if val_data is not None:
            # A cluster validates on process 0's own device, so its batches need no padding.
            val_batches = streamed_batches.batches_for(
                val_data, settings.batch_size, len(answers), loss=settings.loss, with_targets=False,
                include_images=include_images, limit=settings.val_limit, workers=settings.workers,
                batch_multiple=1 if multi_process else placement.batch_multiple)
            closing.append(val_batches)
        if state.epoch == 0:
            model.compile(optimizer=make_optimizer(settings, len(train_batches)), loss=make_loss(settings.loss),
                          metrics=[VQAAccuracy(sparse_targets=settings.loss == "softmax")])
        validation = callbacks.Validation(model, val_batches, local=multi_process) if val_batches else None

        log(f"training {config.model.name} on {train_batches.num_samples} {train_data.split} questions "
            f"(left out: {train_batches.num_missing_images} without image, {train_batches.num_without_answer} "
            f"without a vocabulary answer)"
            + (f"; validating on {val_batches.num_samples} {val_data.split} questions "
               f"({val_batches.num_missing_images} with a zero image vector)" if val_batches else "; no validation"))

        info = RunInfo(format_version=run_folder.RUN_FORMAT_VERSION, data_dir=str(data_dir), lang=manifest.lang,
                       max_question_length=train_data.max_length, feature_dim=train_data.feature_dim,
                       loss=settings.loss, num_answers=len(answers), model=config.model.name,
                       features=features or NO_IMAGE, grid_shape=train_data.grid_shape)
        if writes:
            run_dir.mkdir(parents=True, exist_ok=True)
            config_lib.write_config(run_dir, config)
            run_folder.copy_preprocessed(data_dir, run_dir)
            run_folder.write_summary(model, run_dir)
            callbacks.write_run_info(run_dir, info, state)
            environment.record_session(run_dir, environment.current_session(state.epoch, placement.shard[1]))

        recorder = callbacks.RunRecorder(run_dir, state, info, train_batches, validation,
                                         settings.early_stopping_patience if val_batches is not None else 0,
                                         min_steps=settings.early_stopping_min_steps)
        fit_callbacks = [callbacks.StopOnNonFiniteLoss(run_dir, state.epoch), recorder]
        if writes:
            fit_callbacks += [*callbacks.tensorboard(run_dir), callbacks.EpochProgress(
                settings.epochs, len(train_batches), batch_size, train_batches.num_samples, log)]
        # A run killed after its last checkpoint but before its final metrics only lacks the final files.
        if not trained:
            # shuffle=False: Keras would otherwise reorder the batches with Python's global RNG,
            # which a resumed process cannot reproduce; QuestionBatches shuffles by (seed, epoch).
            model.fit(train_batches, epochs=settings.epochs, initial_epoch=state.epoch, verbose=0,
                      callbacks=fit_callbacks, shuffle=False)
        state = recorder.state

    metrics = _final_metrics(state, {
        "num_train_questions": train_batches.num_samples,
        "num_train_missing_images": train_batches.num_missing_images,
        "num_train_without_answer": train_batches.num_without_answer,
        "batch_size": batch_size, "steps_per_epoch": len(train_batches),
        "num_val_questions": val_batches.num_samples if val_batches else 0,
        "num_val_missing_images": val_batches.num_missing_images if val_batches else 0,
    })
    if writes:
        run_folder.write_metrics(run_dir, metrics)
        checkpoints.write_final_state(run_dir, state)
        callbacks.write_run_info(run_dir, info, state, completed=True)
    distributed.barrier("training done")  # every process returns once RUN is complete
    best = metrics.get("val_vqa_accuracy")
    log(f"done: {state.epoch} epochs" + (f", best val VQA accuracy {best:.2f} at epoch {state.best_epoch}"
                                         if best is not None else "") + f"; model in {run_folder.model_path(run_dir)}")
    return metrics
