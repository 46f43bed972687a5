"""Stand-in bottom-up region features for the demo scenes, in peteanderson80's TSV layout.

A stand-in, not a detector: each object's box is its labelled box in ``demo_scenes.json``
and its feature a fixed random code of its colour plus one of its shape, with noise, as
if a detector had recognised it; a few background boxes of noise-only features join
them. Written exactly as the bottom-up-attention release lays out its files (tab-separated
``image_id, image_w, image_h, num_boxes, boxes, features``, base64 of float32, by
``vqa.region_tsv.write_tsv``), so the tests and the bench import them through
``vqa preprocess --regions`` like a user's own file, with no image present.
``vqa.demo.crop_regions`` is the other stand-in: features of the demo CNN, not of the labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vqa.demo.data import COLORS, IMAGE_SIZE, SHAPES, read_scenes
from vqa.region_tsv import write_tsv


def background_box(rng: np.random.Generator) -> list[int]:
    """A random square box x0, y0, x1, y1 of 8 to 31 px, its corner in the image's top-left quarter,
    clipped to the image: where a detector's boxes on background (or parts of objects) would be."""
    x0, y0 = (int(v) for v in rng.integers(0, IMAGE_SIZE // 2, size=2))
    size = int(rng.integers(8, IMAGE_SIZE // 2))
    return [x0, y0, min(IMAGE_SIZE, x0 + size), min(IMAGE_SIZE, y0 + size)]


def scene_regions(scene: list[dict], codes: dict[str, np.ndarray], rng: np.random.Generator, background: int,
                  noise: float) -> tuple[np.ndarray, np.ndarray]:
    """One scene's boxes float32 (K, 4) and features float32 (K, D): its objects, then background boxes."""
    dim = len(next(iter(codes.values())))
    boxes, features = [], []
    for obj in scene:
        boxes.append(obj["box"])
        features.append(codes[obj["color"]] + codes[obj["shape"]] + noise * rng.standard_normal(dim))
    for _ in range(background):
        boxes.append(background_box(rng))
        features.append(noise * rng.standard_normal(dim))
    return np.asarray(boxes, np.float32), np.maximum(np.asarray(features, np.float32), 0.0)


def write_label_regions(data_dir: str | os.PathLike, out_dir: str | os.PathLike, dim: int = 32,
                        background: int = 2, noise: float = 0.3, seed: int = 0) -> dict[str, Path]:
    """Write one TSV per demo split (``<split>_regions.tsv`` in ``out_dir``), atomically.

    Args:
        data_dir: the demo dataset (``vqa.demo.data.write_demo_dataset``), for its scene labels.
        out_dir: where the TSV files go.
        dim: feature size D.
        background: background boxes per image.
        noise: standard deviation of the noise added to every feature.
        seed: seed of the codes and the noise.

    Returns:
        split -> the TSV file written.
    """
    rng = np.random.default_rng(seed)
    codes = {name: np.abs(rng.standard_normal(dim)).astype(np.float32) for name in (*COLORS, *SHAPES)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, scenes in read_scenes(data_dir).items():
        path = out_dir / f"{split}_regions.tsv"
        write_tsv(path, ((image_id, IMAGE_SIZE, IMAGE_SIZE, *scene_regions(scenes[image_id], codes, rng, background,
                                                                           noise))
                         for image_id in sorted(scenes)))
        written[split] = path
    return written
