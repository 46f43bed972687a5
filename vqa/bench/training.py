"""Section ``training``: ``vqa.dataset.QuestionBatches`` into ``model.fit`` (what ``vqa train`` runs)
against the same model fed from arrays prepared in memory, and the peak memory of training next to
the size of the image features. The measurements run in a child process (``training_child``)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from vqa.backbone import VGG16_FEATURE_DIM
from vqa.bench.child import RSSSampler, run_in_child
from vqa.bench.report import jsonable, summary_row
from vqa.bench.settings import MAX_QUESTION_LENGTH, TARGETS, Sizes
from vqa.bench.synthetic import SPLIT, write_synthetic_out
from vqa.names import IMAGE_FEATURES, QUESTION_IDS


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """vqa.train's feeding (QuestionBatches -> model.fit) against arrays already in memory.

    One child process trains on ``train_questions`` (the 4x point of the scale section)
    and then, with the model already traced, on a quarter of them (the 1x point), whose
    numbers the scale section reads from ``scale_1x``.
    """
    main_out = write_synthetic_out(work / "train_out", sizes.train_questions, sizes.train_images)
    small_out = write_synthetic_out(work / "train_out_1x", sizes.train_questions // 4, sizes.train_images // 4)
    child = run_in_child(f"{__name__}.training_child", sizes=jsonable(dataclasses.asdict(sizes)), runs=[
        {"out_dir": str(main_out), "rounds": sizes.train_rounds, "in_memory": True},
        {"out_dir": str(small_out), "rounds": sizes.train_rounds, "in_memory": False},
    ])
    main, small = child["runs"]
    per_question_copy = sizes.train_questions * VGG16_FEATURE_DIM * 4
    growth = main["peak_rss_bytes"] - main["rss_before_data_bytes"]
    return {
        "pipeline_samples_per_s": main["pipeline_samples_per_s"],
        "in_memory_samples_per_s": main["in_memory_samples_per_s"],
        "ratio": round(main["pipeline_samples_per_s"] / main["in_memory_samples_per_s"], 3),
        "target": TARGETS["training"],
        "questions": main["samples"],
        "images": sizes.train_images,
        "peak_rss_bytes": main["peak_rss_bytes"],
        "rss_before_data_bytes": main["rss_before_data_bytes"],
        "rss_growth_while_training_bytes": growth,
        "image_features_bytes": sizes.train_images * VGG16_FEATURE_DIM * 2,
        "features_copied_per_question_would_be_bytes": per_question_copy,
        "features_copied_per_question": growth >= per_question_copy,
        "in_memory_arrays_peak_rss_bytes": main["in_memory_peak_rss_bytes"],
        "epoch_seconds_pipeline": main["epoch_seconds_pipeline"],
        "epoch_seconds_in_memory": main["epoch_seconds_in_memory"],
        "model": dict(sizes.model),
        "batch_size": sizes.train_batch,
        "scale_1x": small,
        "note": (f"the model is traced on dummy batches first; one untimed epoch each way, then "
                 f"{sizes.train_rounds} rounds alternating a pipeline epoch and an in-memory epoch of the same "
                 "model; the fastest epoch each way (load from other processes only adds time). RSS is sampled "
                 "every 10 ms in the child process; growth counts from just before the split is read. "
                 f"Features: {sizes.train_images} x {VGG16_FEATURE_DIM} float16"),
    }


def summary_rows(result: dict) -> list[dict]:
    copy_bytes = result["features_copied_per_question_would_be_bytes"]
    growth = result["rss_growth_while_training_bytes"]
    return [
        summary_row("training", "samples/s (pipeline vs memory)", result["pipeline_samples_per_s"],
                    result["in_memory_samples_per_s"], result["ratio"], result["target"]),
        summary_row("training", "RSS growth MB vs per-q copy MB", round(growth / 1e6, 1), round(copy_bytes / 1e6, 1),
                    round(growth / copy_bytes, 3), 1.0, higher_is_better=False),
    ]


def training_child(sizes: dict, runs: list[dict]) -> dict:
    """In a fresh process: train one model on each run's OUT, timing epochs and sampling memory.

    Each run: ``{"out_dir", "rounds", "in_memory"}``. A run does one untimed epoch of
    QuestionBatches (and of in-memory arrays), then ``rounds`` rounds of one timed
    epoch each way, alternating, so that outside load falls on both sides alike.
    """
    from vqa import dataset as vqa_dataset
    from vqa import registry
    from vqa.answers import read_answers
    from vqa.config import ModelConfig, TrainConfig
    from vqa.losses import VQAAccuracy, make_loss
    from vqa.text import read_embeddings
    from vqa.visual import VisualSpec

    settings = TrainConfig(batch_size=sizes["train_batch"])
    model = None
    results = []
    for run in runs:
        out_dir = run["out_dir"]
        answers = read_answers(out_dir)
        if model is None:
            # One model for every run: traced once, and the same weights cost for each feeding.
            keras.utils.set_random_seed(settings.seed)
            model = registry.build_model(ModelConfig(**dict(sizes["model"])), read_embeddings(out_dir), len(answers),
                                         VisualSpec("vector", (VGG16_FEATURE_DIM,)), MAX_QUESTION_LENGTH, "sigmoid")
            model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate, clipnorm=settings.clipnorm),
                          loss=make_loss("soft"), metrics=[VQAAccuracy()])
            _trace(model, settings.batch_size, len(answers))
        with RSSSampler() as memory:
            data = vqa_dataset.load_split(out_dir, SPLIT, "fc7")  # the fc7 rows, held in memory
            # What vqa.train builds: training order and filtering, soft targets, settings.workers.
            batches = vqa_dataset.QuestionBatches(data, settings.batch_size, len(answers), "soft", training=True,
                                                  seed=settings.seed, workers=settings.workers)
            pipeline_seconds = [_fit_epoch(model, batches, epoch, settings.batch_size)
                                for epoch in range(1 + run["rounds"]) if not run["in_memory"]]
            if run["in_memory"]:
                # Arrays prepared in advance, outside the sampler's view of the pipeline's memory.
                pipeline_seconds.append(_fit_epoch(model, batches, 0, settings.batch_size))
                peak_pipeline = memory.peak
                rows = batches.rows
                arrays = ({QUESTION_IDS: data.token_ids[rows], **data.visual.read(data.image_index[rows])},
                          vqa_dataset.dense_scores(data.score_indices[rows], data.score_values[rows], len(answers)))
                memory_seconds = [_fit_epoch(model, arrays, 0, settings.batch_size)]
                for epoch in range(1, 1 + run["rounds"]):
                    pipeline_seconds.append(_fit_epoch(model, batches, epoch, settings.batch_size))
                    memory_seconds.append(_fit_epoch(model, arrays, epoch, settings.batch_size))
                del arrays
        if not run["in_memory"]:
            peak_pipeline = memory.peak
        result = {"samples": batches.num_samples, "images": len(data.visual.image_ids),
                  "pipeline_samples_per_s": round(batches.num_samples / min(pipeline_seconds[1:]), 1),
                  "epoch_seconds_pipeline": [round(s, 2) for s in pipeline_seconds],
                  "rss_before_data_bytes": memory.start, "peak_rss_bytes": peak_pipeline}
        if run["in_memory"]:
            result.update(in_memory_samples_per_s=round(batches.num_samples / min(memory_seconds[1:]), 1),
                          epoch_seconds_in_memory=[round(s, 2) for s in memory_seconds],
                          in_memory_peak_rss_bytes=memory.peak)
        results.append(result)
        del data, batches
    return {"runs": results}


def _trace(model, batch_size: int, num_answers: int) -> None:
    """Trace the training step on two dummy batches, so tracing memory and time count in no measurement."""
    rows = 2 * batch_size
    inputs = {QUESTION_IDS: np.ones((rows, MAX_QUESTION_LENGTH), np.int32),
              IMAGE_FEATURES: np.zeros((rows, VGG16_FEATURE_DIM), np.float32)}
    model.fit(inputs, np.zeros((rows, num_answers), np.float32), batch_size=batch_size, epochs=1, verbose=0)


def _fit_epoch(model, data, epoch: int, batch_size: int) -> float:
    """Seconds of one ``model.fit`` epoch on a QuestionBatches or on (inputs, targets) arrays.

    Only the epoch is timed (on_epoch_begin to on_epoch_end), not the set-up of fit.
    """
    timer = EpochTimer(data if isinstance(data, keras.utils.PyDataset) else None)
    if isinstance(data, tuple):
        inputs, targets = data
        model.fit(inputs, targets, batch_size=batch_size, initial_epoch=epoch, epochs=epoch + 1,
                  shuffle=True, verbose=0, callbacks=[timer])
    else:
        model.fit(data, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=[timer])
    return timer.seconds[-1]


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch (on_epoch_begin to on_epoch_end); sets the batches' epoch (``QuestionBatches`` or
    ``StreamedBatches``, None for arrays) as vqa.train's recorder does. Shared with the grid section."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self.batches is not None:
            self.batches.set_epoch(epoch)
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)
