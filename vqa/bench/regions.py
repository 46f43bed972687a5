"""Section ``regions``: an attention model on bottom-up region features, streamed from the region file.

- Training: ``vqa.streamed_batches.StreamedBatches`` reading the split's region file
  (``vqa.regions``, opened as the "regions" source of ``vqa.visual``) into ``model.fit``, what
  ``vqa train`` runs for an attention model on regions, against the same batches (same rows,
  same order, same padding), read beforehand and held in memory, fed to the same model.
- Memory: peak RSS of that training at 4x the images against 1x, each point in its own child
  process (``vqa.bench.child``), beside the region files' sizes: the 4x file is several times
  the RSS that 4x may add over 1x, so holding the regions in memory could not pass.

The region OUT is written by the real writers (``write_synthetic_region_out``): 10-100
adaptive boxes of 2048-d float16 features an image at full size, as bottom-up-attention's
adaptive features have (about 225 KB an image).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from vqa.bench.child import RSSSampler, run_in_child
from vqa.bench.report import jsonable, summary_row
from vqa.bench.settings import MAX_QUESTION_LENGTH, TARGETS, Sizes
from vqa.bench.synthetic import SPLIT, write_synthetic_out
from vqa.bench.training import EpochTimer
from vqa.names import QUESTION_IDS, REGION_FEATURES, REGION_GEOMETRY, REGION_MASK

# The RSS budget is the 10% that 4x may exceed 1x by; a 4x region file under twice that could
# pass while held in memory, so the memory figure would prove nothing.
MIN_FILE_OVER_BUDGET = 2.0
IMAGE_SIZE = (640, 480)  # width, height: a COCO-sized photo the boxes lie in


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Streamed against in-memory training, and RSS at 1x and 4x the images, each point in a child process."""
    from vqa.regions import read_region_info, region_path

    points, file_bytes, boxes = {}, {}, {}
    for factor in (1, 4):
        images = factor * sizes.region_images
        out_dir = write_synthetic_region_out(work / f"region_out_{factor}x", images, images, sizes.region_dim,
                                             tuple(sizes.region_boxes), seed=factor)
        path = region_path(out_dir / SPLIT)
        file_bytes[factor] = path.stat().st_size
        boxes[factor] = read_region_info(path).total_boxes
        log(f"bench: regions: training at {factor}x ({images} images, {boxes[factor]} boxes, "
            f"{file_bytes[factor] / 1e6:.0f} MB region file)")
        # One child per point; the 1x child then compares streaming with memory, after its RSS figure.
        points[factor] = run_in_child(f"{__name__}.region_training_child", sizes=jsonable(dataclasses.asdict(sizes)),
                                      out_dir=str(out_dir), epochs=1,
                                      rounds=sizes.region_rounds if factor == 1 else 0)
    one, four = points[1], points[4]
    budget = (TARGETS["regions_memory"] - 1) * one["peak_rss_bytes"]
    low, high = sizes.region_boxes
    return {
        "streamed_samples_per_s": one["streamed_samples_per_s"],
        "in_memory_samples_per_s": one["in_memory_samples_per_s"],
        "ratio": round(one["streamed_samples_per_s"] / one["in_memory_samples_per_s"], 3),
        "target": TARGETS["regions"],
        "peak_rss_1x_bytes": one["peak_rss_bytes"],
        "peak_rss_4x_bytes": four["peak_rss_bytes"],
        "rss_ratio_4x_1x": round(four["peak_rss_bytes"] / one["peak_rss_bytes"], 3),
        "rss_target": TARGETS["regions_memory"],
        "region_file_1x_bytes": file_bytes[1],
        "region_file_4x_bytes": file_bytes[4],
        "boxes_1x": boxes[1],
        "boxes_4x": boxes[4],
        "rss_budget_bytes": round(budget),
        "region_file_4x_over_rss_budget": round(file_bytes[4] / budget, 3),
        "file_over_budget_target": MIN_FILE_OVER_BUDGET,
        "rss_growth_1x_bytes": one["peak_rss_bytes"] - one["rss_before_data_bytes"],
        "rss_growth_4x_bytes": four["peak_rss_bytes"] - four["rss_before_data_bytes"],
        "in_memory_batches_peak_rss_bytes": one["in_memory_peak_rss_bytes"],
        "points": {"1x": one, "4x": four},
        "feature_dim": sizes.region_dim,
        "boxes_per_image": [low, high],
        "model": dict(sizes.region_model),
        "batch_size": sizes.region_batch,
        "note": (f"{sizes.region_images} and {4 * sizes.region_images} images of {low}-{high} boxes (uniform) of "
                 f"float16 {sizes.region_dim}-d region features, one question each; each point in a fresh child "
                 "process, the model traced on dummy batches first; RSS sampled every 10 ms from just before the "
                 "split is read to the end of one training epoch (four times the steps at 4x). "
                 f"Then, in the 1x child: one untimed epoch from memory, then {sizes.region_rounds} rounds "
                 "alternating a streamed epoch and an epoch of the same batches read beforehand into memory; the "
                 "fastest epoch each way"),
    }


def summary_rows(result: dict) -> list[dict]:
    return [
        summary_row("regions", "samples/s (streamed vs memory)", result["streamed_samples_per_s"],
                    result["in_memory_samples_per_s"], result["ratio"], result["target"]),
        summary_row("regions", "peak RSS MB (4x vs 1x images)", round(result["peak_rss_4x_bytes"] / 1e6, 1),
                    round(result["peak_rss_1x_bytes"] / 1e6, 1), result["rss_ratio_4x_1x"], result["rss_target"],
                    higher_is_better=False),
        summary_row("regions", "4x region file MB vs RSS budget MB", round(result["region_file_4x_bytes"] / 1e6, 1),
                    round(result["rss_budget_bytes"] / 1e6, 1), result["region_file_4x_over_rss_budget"],
                    result["file_over_budget_target"]),
    ]


# --- the synthetic region OUT ----------------------------------------------------------------------


def write_synthetic_region_out(out_dir: Path, num_questions: int, num_images: int, feature_dim: int,
                               boxes: tuple[int, int], seed: int = 0) -> Path:
    """``vqa.bench.synthetic.write_synthetic_out``'s OUT plus the split's region file, for timing region models.

    The region file (``vqa.regions.RegionWriter``) holds, per image, a box count drawn uniformly
    from ``boxes`` (low, high), ReLU-like float16 features of ``feature_dim`` and boxes inside a
    640 x 480 image; the OUT's image features are ``feature_dim`` wide, as the boxes' mean would be.
    """
    from vqa.backbone import BackboneSpec
    from vqa.regions import RegionWriter, region_path

    spec = BackboneSpec.for_import("vqa bench: random ReLU-like regions", feature_dim)
    write_synthetic_out(out_dir, num_questions, num_images, backbone=spec, seed=seed)
    rng = np.random.default_rng([seed, 2])
    width, height = IMAGE_SIZE
    low, high = boxes
    with RegionWriter(region_path(out_dir / SPLIT), feature_dim, "float16", source="vqa bench",
                      layout="synthetic") as writer:
        for image_id in range(num_images):
            count = int(rng.integers(low, high + 1))
            corners = rng.uniform(0, 1, (count, 2, 2)) * np.array([width, height], np.float32)
            box = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
            features = np.maximum(rng.standard_normal((count, feature_dim), dtype=np.float32), 0)
            reason = writer.add(image_id, features, box, width, height)
            if reason is not None:
                raise RuntimeError(f"the bench's own regions were refused: {reason}")
    return out_dir


# --- training, in a child process ------------------------------------------------------------------


def region_training_child(sizes: dict, out_dir: str, epochs: int, rounds: int) -> dict:
    """In a fresh process: train an attention model on regions streamed from ``out_dir``'s region file.

    ``epochs`` streamed epochs under the RSS sampler (what ``vqa train`` builds: the split opened
    on its "regions" source, ``StreamedBatches`` with its prefetch). With ``rounds``, then the
    same model on the same batches held in memory: one untimed in-memory epoch, then ``rounds``
    rounds of a streamed and an in-memory epoch, alternating, so that outside load falls on
    both sides alike.
    """
    from vqa import dataset as vqa_dataset
    from vqa import registry
    from vqa.answers import read_answers
    from vqa.config import ModelConfig, TrainConfig
    from vqa.losses import VQAAccuracy, make_loss
    from vqa.streamed_batches import StreamedBatches
    from vqa.text import read_embeddings
    from vqa.visual import VisualSpec

    settings = TrainConfig(batch_size=sizes["region_batch"])
    feature_dim, max_boxes = sizes["region_dim"], sizes["region_boxes"][1]
    num_answers = len(read_answers(out_dir))
    keras.utils.set_random_seed(settings.seed)
    model = registry.build_model(ModelConfig(**dict(sizes["region_model"])), read_embeddings(out_dir), num_answers,
                                 VisualSpec("regions", (feature_dim,)), MAX_QUESTION_LENGTH, "sigmoid")
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate, clipnorm=settings.clipnorm),
                  loss=make_loss("soft"), metrics=[VQAAccuracy()])
    _trace(model, settings.batch_size, num_answers, max_boxes, feature_dim)

    with RSSSampler() as memory:
        data = vqa_dataset.load_split(out_dir, SPLIT, "regions")
        batches = StreamedBatches(data, settings.batch_size, num_answers, loss="soft", training=True,
                                  seed=settings.seed, workers=settings.workers)
        training_seconds = [_fit_epoch(model, batches, epoch) for epoch in range(epochs)]
    result = {"samples": batches.num_samples, "images": len(data.visual.image_ids), "epochs": epochs,
              "epoch_seconds": [round(s, 2) for s in training_seconds],
              "rss_before_data_bytes": memory.start, "peak_rss_bytes": memory.peak,
              "prefetch": batches.prefetch, "max_batches_read_ahead": batches.max_ahead,
              "read_ahead_bound_bytes": (batches.prefetch + 1) * settings.batch_size * max_boxes * feature_dim * 2}
    try:
        if rounds:
            result.update(_streamed_against_memory(model, batches, data, epochs, rounds))
    finally:
        batches.close()
        data.close()
    return result


class HeldBatches(keras.utils.PyDataset):
    """Batches read beforehand and held in memory, handed to ``model.fit`` as they are."""

    def __init__(self, batches: list):
        super().__init__()
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index]


def _streamed_against_memory(model, batches, data, first_epoch: int, rounds: int) -> dict:
    """Samples/s of streamed epochs against in-memory epochs of the same batches, alternating."""
    from vqa.dataset import QuestionBatches

    # The same rows, order and padding as the streamed batches (the same class without the read-ahead).
    plain = QuestionBatches(data, batches.batch_size, batches.num_answers, loss="soft", training=True,
                            seed=batches.seed)
    with RSSSampler() as memory:
        streamed, in_memory = [], []
        for step in range(1 + rounds):
            epoch = first_epoch + step
            plain.set_epoch(epoch)
            held = HeldBatches([plain[index] for index in range(len(plain))])
            in_memory.append(_fit_epoch(model, held, epoch))
            if step:  # the first in-memory epoch is untimed, as the streamed side's were
                streamed.append(_fit_epoch(model, batches, epoch))
            del held
    return {"streamed_samples_per_s": round(batches.num_samples / min(streamed), 1),
            "in_memory_samples_per_s": round(batches.num_samples / min(in_memory[1:]), 1),
            "epoch_seconds_streamed": [round(s, 2) for s in streamed],
            "epoch_seconds_in_memory": [round(s, 2) for s in in_memory],
            "in_memory_peak_rss_bytes": memory.peak}


def _trace(model, batch_size: int, num_answers: int, boxes: int, feature_dim: int) -> None:
    """Trace the training step on two dummy batches of the file's largest box count, outside every measurement."""
    rows = 2 * batch_size
    inputs = {QUESTION_IDS: np.ones((rows, MAX_QUESTION_LENGTH), np.int32),
              REGION_FEATURES: np.zeros((rows, boxes, feature_dim), np.float16),
              REGION_GEOMETRY: np.zeros((rows, boxes, 5), np.float32),
              REGION_MASK: np.ones((rows, boxes), np.float32)}
    model.fit(inputs, np.zeros((rows, num_answers), np.float32), batch_size=batch_size, epochs=1, verbose=0)


def _fit_epoch(model, batches, epoch: int) -> float:
    """Seconds of one ``model.fit`` epoch on ``StreamedBatches`` or ``HeldBatches`` (already in epoch order)."""
    timer = EpochTimer(None if isinstance(batches, HeldBatches) else batches)
    model.fit(batches, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0, callbacks=[timer])
    return timer.seconds[-1]
