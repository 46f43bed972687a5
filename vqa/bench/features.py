"""Section ``features``: JPEG files -> decode -> resize -> backbone -> feature file
(``vqa.extraction.extract_features``) against the same model on batches already in memory:
how well decoding and writing hide behind the model. With VGG-16, also the forward pass's
FLOP/s beside a dense matmul and the CPU's estimated peak."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from vqa.bench.machine import cpu_info
from vqa.bench.report import summary_row
from vqa.bench.settings import TARGETS, Sizes
from vqa.bench.synthetic import bench_backbone_spec, write_photo_like_jpegs

VGG16_FLOPS_PER_IMAGE = 15.47e9  # multiply-adds x 2 of one 224x224 forward pass


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """JPEG files -> features on disk against the same backbone on batches already in memory."""
    from vqa import extraction, features
    from vqa.backbone import load_backbone
    from vqa.images import load_image

    paths = write_photo_like_jpegs(work / "jpegs", sizes.images)
    backbone = load_backbone(bench_backbone_spec(sizes, work))
    batches = [np.stack([load_image(p, backbone.image_size) for p in paths[i:i + sizes.image_batch]])
               for i in range(0, len(paths), sizes.image_batch)]
    backbone.features(batches[0])  # tracing and memory set-up happen once, outside both timings

    # Alternating passes, so that load from other processes falls on both sides alike.
    forward_seconds, end_to_end_seconds = [], []
    for round_index in range(sizes.feature_rounds):
        started = time.perf_counter()
        for batch in batches:
            backbone.features(batch)
        forward_seconds.append(time.perf_counter() - started)
        out_dir = work / "features" / f"round_{round_index}"
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        extraction.extract_features(list(enumerate(map(str, paths))), backbone, features.features_path(out_dir),
                                  batch_size=sizes.image_batch)
        end_to_end_seconds.append(time.perf_counter() - started)
    rounds = {"forward_only_seconds_each": [round(x, 2) for x in forward_seconds],
              "end_to_end_seconds_each": [round(x, 2) for x in end_to_end_seconds]}
    forward_seconds, end_to_end_seconds = min(forward_seconds), min(end_to_end_seconds)

    started = time.perf_counter()
    for path in paths:
        load_image(path, backbone.image_size)
    decode_seconds = time.perf_counter() - started

    forward_rate = len(paths) / forward_seconds
    end_to_end_rate = len(paths) / end_to_end_seconds
    result = {
        "end_to_end_images_per_s": round(end_to_end_rate, 3),
        "forward_only_images_per_s": round(forward_rate, 3),
        "ratio": round(end_to_end_rate / forward_rate, 3),
        "target": TARGETS["features"],
        "images": len(paths),
        "image_size": "640x480 JPEG",
        "batch_size": sizes.image_batch,
        "backbone": backbone.spec.to_dict(),
        "decode_resize_one_thread_images_per_s": round(len(paths) / decode_seconds, 1),
        **rounds,
        "note": f"best of {sizes.feature_rounds} alternating passes each way, after one untimed batch",
    }
    if sizes.backbone == "vgg16":
        achieved = forward_rate * VGG16_FLOPS_PER_IMAGE
        matmul = matmul_flops_per_s()
        peak = cpu_info()["peak_flops_per_s"]
        result.update({
            "forward_flops_per_s": round(achieved),
            "flops_per_image": VGG16_FLOPS_PER_IMAGE,
            "dense_matmul_flops_per_s": round(matmul),
            "forward_fraction_of_matmul": round(achieved / matmul, 3),
            "peak_flops_per_s": peak if peak else "unknown",
            "forward_fraction_of_peak": round(achieved / peak, 3) if peak else "unknown",
        })
    return result


def summary_rows(result: dict) -> list[dict]:
    rows = [summary_row("features", "images/s (files vs memory)", result["end_to_end_images_per_s"],
                        result["forward_only_images_per_s"], result["ratio"], result["target"])]
    if isinstance(result.get("forward_fraction_of_matmul"), float):
        rows.append(summary_row("features", "forward GFLOP/s vs matmul", round(result["forward_flops_per_s"] / 1e9, 1),
                                round(result["dense_matmul_flops_per_s"] / 1e9, 1),
                                result["forward_fraction_of_matmul"]))
    return rows


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matmul on the backend: what this machine really sustains."""
    from keras import ops

    rng = np.random.default_rng(0)
    a = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32))
    b = ops.convert_to_tensor(rng.standard_normal((n, n), dtype=np.float32))
    ops.convert_to_numpy(ops.matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b))
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best
