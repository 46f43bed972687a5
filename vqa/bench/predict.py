"""Section ``predict``: one question on a loaded run, the CLI's cold start, batched questions."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from vqa.bench.child import CHILD_TIMEOUT_S, child_env
from vqa.bench.report import summary_row
from vqa.bench.settings import Sizes
from vqa.bench.synthetic import bench_backbone_spec, vqa_like_questions, write_photo_like_jpegs, write_synthetic_out


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Latency of one question on a loaded run, the CLI's cold start, and batched questions."""
    from vqa.config import Config, DataConfig, ModelConfig, TrainConfig
    from vqa.predict import Predictor
    from vqa.train import train

    out_dir = write_synthetic_out(work / "predict_out", 256, 32, backbone=bench_backbone_spec(sizes, work))
    run_dir = work / "predict_run"
    config = Config(data=DataConfig(data_dir=str(out_dir), val_split=""), model=ModelConfig(**dict(sizes.model)),
                    train=TrainConfig(epochs=1, batch_size=64))
    train(out_dir, run_dir, config, log=lambda message: None)

    images = write_photo_like_jpegs(work / "predict_jpegs", sizes.predict_images, seed=5)
    questions = vqa_like_questions(sizes.predict_questions, seed=6)
    started = time.perf_counter()
    predictor = Predictor(run_dir)
    predictor.answer([images[0]], [questions[0]])  # builds the backbone and traces the model
    load_seconds = time.perf_counter() - started
    latencies = []
    for repeat in range(sizes.predict_repeats):
        started = time.perf_counter()
        predictor.answer([images[repeat % len(images)]], [questions[repeat % len(questions)]])
        latencies.append(time.perf_counter() - started)

    batch_images = [images[i % len(images)] for i in range(len(questions))]
    predictor.answer(batch_images, questions)  # a new batch shape traces once
    started = time.perf_counter()
    predictor.answer(batch_images, questions)
    batch_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ids, _ = predictor.encode(questions)
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    distinct_features = predictor.image_features(images)
    backbone_seconds = time.perf_counter() - started
    started = time.perf_counter()
    predictor.scores(ids, distinct_features[[i % len(images) for i in range(len(questions))]])
    scores_seconds = time.perf_counter() - started

    command = [sys.executable, "-m", "vqa", "predict", "--run", str(run_dir), "--image", str(images[0]),
               "--question", questions[0]]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=CHILD_TIMEOUT_S)
    cold_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"`vqa predict` exited with {completed.returncode}: {completed.stderr.strip()[-500:]}")
    return {
        "warm_latency_ms": round(1000 * statistics.median(latencies), 1),
        "cold_start_s": round(cold_seconds, 2),
        "batch_questions_per_s": round(len(questions) / batch_seconds, 2),
        "batch_questions": len(questions),
        "batch_distinct_images": len(images),
        "batch_breakdown_s": {"encode_questions": round(encode_seconds, 4),
                              "backbone_distinct_images": round(backbone_seconds, 3),
                              "model": round(scores_seconds, 4), "total": round(batch_seconds, 3)},
        "predictor_load_s": round(load_seconds, 2),
        "backbone": predictor.backbone.spec.to_dict(),
        "model": dict(sizes.model),
        "note": "latency is one (image, question) pair through Predictor.answer: decode, backbone, tokenizer, model",
    }


def summary_rows(result: dict) -> list[dict]:
    return [summary_row("predict", "warm latency ms", result["warm_latency_ms"], None, None),
            summary_row("predict", "CLI cold start s", result["cold_start_s"], None, None),
            summary_row("predict", "batch questions/s", result["batch_questions_per_s"], None, None)]
