"""Stand-in bottom-up region features for the demo scenes from the demo CNN, in peteanderson80's TSV layout.

A stand-in, not a detector. The boxes are each object's labelled box (``demo_scenes.json``)
and a few random background boxes (``vqa.demo.label_regions.background_box``), as if a
detector had proposed them; each box's feature is what the demo CNN (``vqa.demo.backbone``,
the stand-in for VGG-16) makes of the crop, resized to the CNN's input size, as R-CNN
describes its proposals. Unlike ``vqa.demo.label_regions`` nothing here reads an object's
colour or shape from its label: a region model trained on these features has to recognise
the objects from the pixels, as it would from a detector's.

Reads: ``<data_dir>/<split>/*.jpg`` and ``demo_scenes.json`` (``vqa.demo.data``), and the demo
CNN's ``.keras`` file. Writes: ``<out_dir>/<split>_regions.tsv`` per split
(``vqa.region_tsv.write_tsv``, atomically), what ``vqa preprocess --regions out_dir`` imports
with no image. A split whose file is there is skipped, so an interrupted demo resumes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from vqa.demo import data as demo_data
from vqa.demo.backbone import load_split_images
from vqa.demo.label_regions import background_box
from vqa.progress import progress
from vqa.region_tsv import write_tsv


def regions_file(out_dir: str | os.PathLike, split: str) -> Path:
    """Where ``write_crop_regions`` puts one split's TSV."""
    return Path(out_dir) / f"{split}_regions.tsv"


def crop_boxes(image: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each box of ``image`` cut out and resized (bilinear) to ``size``.

    Args:
        image: uint8 (H, W, 3).
        boxes: (K, 4) x1, y1, x2, y2 in pixels, inside the image.
        size: (height, width) of the crops.

    Returns:
        uint8 (K, height, width, 3).
    """
    picture = Image.fromarray(image)
    height, width = size
    return np.stack([np.asarray(picture.crop(tuple(int(round(v)) for v in box)).resize(
        (width, height), Image.Resampling.BILINEAR)) for box in boxes])


def write_crop_regions(data_dir: str | os.PathLike, backbone_path: str | os.PathLike, out_dir: str | os.PathLike,
                       background: int = 2, batch_size: int = 256, seed: int = 0,
                       verbose: bool = True) -> dict[str, Path]:
    """Write one TSV of demo-CNN region features per demo split, skipping splits already written.

    Args:
        data_dir: the demo dataset (``vqa.demo.data.write_demo_dataset``): its images and scene labels.
        backbone_path: the demo CNN (``vqa.demo.backbone.train_demo_backbone``), or any feature model
            of the image backbone contract: float (batch, H, W, 3) 0-255 -> (batch, D).
        out_dir: where the TSV files go.
        background: random background boxes per image, after its objects.
        batch_size: crops per CNN call.
        seed: seed of the background boxes (one stream per split).
        verbose: show a progress bar per split (``VQA_NO_PROGRESS=1`` hides it too).

    Returns:
        split -> its TSV file.
    """
    import keras

    out_dir = Path(out_dir)
    splits = [split for split in demo_data.SPLITS if demo_data.read_scenes(data_dir).get(split)]
    written = {split: regions_file(out_dir, split) for split in splits}
    missing = [split for split in splits if not written[split].is_file()]
    if not missing:
        return written
    cnn = keras.saving.load_model(backbone_path, safe_mode=True)
    crop_size = tuple(int(n) for n in cnn.input_shape[1:3])
    for split in missing:
        rng = np.random.default_rng([seed, demo_data.SPLITS.index(split)])
        image_ids, images, scenes = load_split_images(data_dir, split)
        boxes = [np.asarray([obj["box"] for obj in scene] + [background_box(rng) for _ in range(background)],
                            np.float32) for scene in scenes]
        counts = [len(image_boxes) for image_boxes in boxes]
        # The demo's crops are small (64 x 64 x 3 bytes each): all of a split's are cut, then described in batches.
        crops = np.concatenate([crop_boxes(image, image_boxes, crop_size) for image, image_boxes in zip(images, boxes)])
        features = np.concatenate([
            np.asarray(cnn.predict_on_batch(crops[start:start + batch_size].astype(np.float32)), np.float32)
            for start in progress(range(0, len(crops), batch_size), desc=f"crop regions {split}", unit="batch",
                                  disable=None if verbose else True)])
        per_image = np.split(features, np.cumsum(counts)[:-1])
        height, width = images.shape[1:3]
        write_tsv(written[split], ((image_id, width, height, image_boxes, image_features)
                                   for image_id, image_boxes, image_features in zip(image_ids, boxes, per_image)))
    return written
