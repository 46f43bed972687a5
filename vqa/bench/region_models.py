"""Section ``region_models``: MCAN's cost against Up-Down's, training and answering, on the same regions.

- Training: ``mcan`` and ``updown`` as their registry recipes build and optimise them
  (``vqa.registry.recipe_config``: widths, dropout, optimizer, schedule, clipping) on the same
  batches of one synthetic region OUT, read beforehand and held in memory, so feeding is no part of
  either figure: one untimed epoch of ``region_models_steps`` steps each (tracing), then
  ``region_models_rounds`` rounds of one timed epoch each, the two models alternating, so that outside
  load falls on both alike; samples/s of each model's fastest epoch. One batch size for both (MCAN-small's
  recipe batch, 64, at full size; Up-Down's recipe trains at 512, which would favour it per sample).
- Predict: each model trained one step (one batch of questions of a second, small region OUT) by
  ``vqa.train.train`` into a run folder, then what ``vqa predict --regions`` does for one question about
  one photo: the photo's boxes (that OUT's image with the most boxes) read from a one-image TSV region
  file (``vqa.photo_regions.regions_for_questions``) and ``Predictor.answer`` (tokenizer and model; no
  backbone). After one untimed call each, the two runs alternate; the median ms of ``Predictor.answer``
  each (the region-file read, the same work for both, is reported beside them).

Widths: the full size is the registered recipes as they are (MCAN-small: hidden 512, 8 heads, 6 + 6
layers, FF 2048; Up-Down: GRU and hidden 1024) on 10-100 boxes of 2048-d features: sized for a GPU
run of the bench (``make bench SECTIONS=region_models``), slow on a few CPU cores. The quick size narrows
both to a few units (``Sizes.region_models_widths``), so its ratios say nothing about the real models.
Both measurements run in child processes (``vqa.bench.child``). The ratios have no target: they say
how much dearer MCAN is.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from vqa.bench.child import run_in_child
from vqa.bench.regions import HeldBatches, write_synthetic_region_out
from vqa.bench.report import jsonable, summary_row
from vqa.bench.settings import Sizes
from vqa.bench.synthetic import SPLIT, vqa_like_questions, write_photo_like_jpegs
from vqa.bench.training import EpochTimer

MODELS = ("updown", "mcan")  # the reference first: the ratio is mcan / updown
# A full-size MCAN-small step (64 x 100 boxes) is about 1 TFLOP, seconds on a few CPU cores: its training child
# may run far longer than the other sections' (vqa.bench.child.CHILD_TIMEOUT_S).
TRAINING_TIMEOUT_S = 3600


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Training samples/s and one-question predict ms of mcan against updown, each part in a child process."""
    steps, batch = sizes.region_models_steps, sizes.region_models_batch
    # Twice the questions the steps need: the synthetic OUT leaves some without a vocabulary answer.
    out_dir = write_synthetic_region_out(work / "region_models_out", 2 * steps * batch, steps * batch,
                                         sizes.region_models_dim, tuple(sizes.region_models_boxes), seed=7)
    # The runs predict answers with are trained one step: one batch of questions (the weights do not change the
    # time of an answer, and every training step of MCAN-small costs seconds on a CPU).
    run_out_dir = write_synthetic_region_out(work / "region_models_run_out", batch, batch, sizes.region_models_dim,
                                             tuple(sizes.region_models_boxes), seed=8)
    sizes_json = jsonable(dataclasses.asdict(sizes))
    log(f"bench: region_models: training {' and '.join(MODELS)}, {steps} steps of {batch} questions each")
    training = run_in_child(f"{__name__}.training_child", timeout_s=TRAINING_TIMEOUT_S, sizes=sizes_json,
                            out_dir=str(out_dir))
    log("bench: region_models: one question on a saved run of each")
    answering = run_in_child(f"{__name__}.predict_child", sizes=sizes_json, out_dir=str(run_out_dir),
                             work=str(work / "region_models_runs"))
    mcan, updown = training["mcan"], training["updown"]
    low, high = sizes.region_models_boxes
    return {
        "mcan_samples_per_s": mcan["samples_per_s"],
        "updown_samples_per_s": updown["samples_per_s"],
        "ratio": round(mcan["samples_per_s"] / updown["samples_per_s"], 3),
        "mcan_predict_ms": answering["mcan"]["predict_ms"],
        "updown_predict_ms": answering["updown"]["predict_ms"],
        "predict_ratio": round(answering["mcan"]["predict_ms"] / answering["updown"]["predict_ms"], 3),
        "region_file_read_ms": answering["region_file_read_ms"],
        "predict_boxes": answering["boxes"],
        "training": training,
        "predict": answering,
        "steps": steps,
        "batch_size": batch,
        "feature_dim": sizes.region_models_dim,
        "boxes_per_image": [low, high],
        "note": (f"{steps} steps of {batch} questions on {low}-{high} boxes (uniform, padded to the file's most) of "
                 f"float16 {sizes.region_models_dim}-d region features, the same batches held in memory for both "
                 "models, each built, optimised and clipped as its registry recipe says"
                 + ("" if not sizes.region_models_widths else " at the widths in training.<model>.model_config "
                    "(narrowed: the ratios say nothing about the registered models)")
                 + f"; one untimed epoch each, then {sizes.region_models_rounds} round(s) alternating one timed epoch "
                 f"of each; the fastest epoch each. Predict: runs trained by vqa.train on {batch} questions (one "
                 "step; the weights do not change the time of an answer), the photo's "
                 f"boxes read from a one-image TSV as vqa predict --regions reads them ({answering['boxes']} boxes), "
                 f"then Predictor.answer; median of {sizes.region_models_predict_repeats} calls each after one "
                 "untimed call, the runs alternating"),
    }


def summary_rows(result: dict) -> list[dict]:
    return [
        summary_row("region_models", "train samples/s (mcan vs updown)", result["mcan_samples_per_s"],
                    result["updown_samples_per_s"], result["ratio"]),
        summary_row("region_models", "predict ms/question (mcan vs updown)", result["mcan_predict_ms"],
                    result["updown_predict_ms"], result["predict_ratio"], higher_is_better=False),
    ]


def recipe(name: str, sizes: dict):
    """Model ``name``'s registered recipe (``vqa.config.Config``), at ``region_models_widths`` where they name it."""
    from vqa import registry

    config = registry.recipe_config(name)
    widths = {model: dict(pairs) for model, pairs in sizes["region_models_widths"]}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **widths.get(name, {})))


# --- training, in a child process ------------------------------------------------------------------


def training_child(sizes: dict, out_dir: str) -> dict:
    """In a fresh process: the same ``region_models_steps`` batches through each model, alternating epochs."""
    from vqa import dataset as vqa_dataset
    from vqa import registry
    from vqa.answers import read_answers
    from vqa.losses import VQAAccuracy, make_loss
    from vqa.text import read_embeddings
    from vqa.train import make_optimizer
    from vqa.visual import VisualSpec

    steps, batch = sizes["region_models_steps"], sizes["region_models_batch"]
    num_answers = len(read_answers(out_dir))
    data = vqa_dataset.load_split(out_dir, SPLIT, "regions")
    try:
        plain = vqa_dataset.QuestionBatches(data, batch, num_answers, loss="soft", training=True)
        if plain.num_samples < steps * batch:
            raise RuntimeError(f"the bench's region OUT has {plain.num_samples} usable questions, fewer than "
                               f"{steps} batches of {batch}")
        held = HeldBatches([plain[index] for index in range(steps)])
        max_length = data.max_length
    finally:
        data.close()
    embeddings = read_embeddings(out_dir)
    models = {}
    for name in MODELS:
        config = recipe(name, sizes)
        keras.utils.set_random_seed(config.train.seed)
        model = registry.build_model(config.model, embeddings, num_answers,
                                     VisualSpec("regions", (sizes["region_models_dim"],)), max_length, "sigmoid")
        model.compile(optimizer=make_optimizer(config.train, steps), loss=make_loss("soft"), metrics=[VQAAccuracy()])
        models[name] = model
    seconds = {name: [] for name in MODELS}
    for epoch in range(1 + sizes["region_models_rounds"]):  # epoch 0 traces, untimed
        for name, model in models.items():
            seconds[name].append(_fit_epoch(model, held, epoch))
    return {name: {"samples_per_s": round(steps * batch / min(seconds[name][1:]), 2),
                   "epoch_seconds": [round(s, 3) for s in seconds[name]],
                   "parameters": int(models[name].count_params()),
                   "model_config": dataclasses.asdict(recipe(name, sizes).model),
                   "optimizer": type(models[name].optimizer).__name__}
            for name in MODELS}


def _fit_epoch(model, held: HeldBatches, epoch: int) -> float:
    """Seconds of one ``model.fit`` epoch over the held batches (on_epoch_begin to on_epoch_end)."""
    timer = EpochTimer(None)
    model.fit(held, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0, callbacks=[timer])
    return timer.seconds[-1]


# --- one question on a saved run, in a child process -----------------------------------------------


def predict_child(sizes: dict, out_dir: str, work: str) -> dict:
    """In a fresh process: train a run of each model on ``out_dir`` (one epoch), then time one question about one
    photo (the image of ``out_dir`` with the most boxes) on each."""
    from vqa.config import DataConfig
    from vqa.photo_regions import regions_for_questions
    from vqa.predict import Predictor
    from vqa.questions import Question
    from vqa.region_tsv import write_tsv
    from vqa.regions import RegionReader, region_path
    from vqa.train import train

    work_dir = Path(work)
    runs = {}
    for name in MODELS:
        config = recipe(name, sizes)
        # One epoch at the bench's batch (not stretched by the recipe's min_steps). No op determinism, which
        # `vqa predict` does not ask for either (vqa.train would turn it on for the whole process).
        config = dataclasses.replace(
            config, data=DataConfig(data_dir=out_dir, train_split=SPLIT, val_split="", features="regions"),
            train=dataclasses.replace(config.train, epochs=1, min_steps=0, min_batches=0,
                                      batch_size=sizes["region_models_batch"], deterministic=False))
        runs[name] = work_dir / name
        train(out_dir, runs[name], config, resume=False, log=lambda line: None)

    # The photo's boxes as a user brings them: a one-image file of a layout the import reads, here the
    # image of the OUT with the most boxes.
    with RegionReader(region_path(Path(out_dir) / SPLIT)) as reader:
        counts = np.concatenate([reader.read(range(start, min(start + 64, len(reader)))).mask.sum(axis=1)
                                 for start in range(0, len(reader), 64)])
        row = int(counts.argmax())
        regions = reader.read([row])
        image_id = int(reader.image_ids[row])
    mask = regions.mask[0]
    width, height = (float(value) for value in regions.sizes[0])
    region_file = work_dir / "photo_regions.tsv"
    write_tsv(region_file, [(image_id, width, height, regions.boxes[0][mask],
                             regions.features[0][mask].astype(np.float32))])
    (photo,) = write_photo_like_jpegs(work_dir / "photo", 1, seed=8)
    question = Question(vqa_like_questions(1, seed=9)[0], photo)

    predictors = {name: Predictor(runs[name]) for name in MODELS}
    answer_ms = {name: [] for name in MODELS}
    read_ms = []
    for repeat in range(1 + sizes["region_models_predict_repeats"]):  # the first call traces, untimed
        for name, predictor in predictors.items():
            started = time.perf_counter()
            found = regions_for_questions(runs[name], predictor.run, [question], region_file, None)
            read = time.perf_counter() - started
            started = time.perf_counter()
            predictor.answer([photo], [question.question], regions=found)
            answered = time.perf_counter() - started
            if repeat:
                answer_ms[name].append(1000 * answered)
                read_ms.append(1000 * read)
    result = {name: {"predict_ms": round(statistics.median(answer_ms[name]), 2),
                     "predict_ms_each": [round(ms, 2) for ms in answer_ms[name]]} for name in MODELS}
    result.update(region_file_read_ms=round(statistics.median(read_ms), 2), boxes=int(mask.sum()))
    return result
