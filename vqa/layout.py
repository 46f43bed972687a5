"""The official VQA v2 / COCO naming: where the raw files of each split are.

The one place that spells the release's file names. Reads nothing itself;
``vqa.sources`` reads the JSON it locates and ``vqa.preprocess`` the images.

    v2_OpenEnded_mscoco_<split>_questions.json     questions (every split)
    v2_mscoco_<split>_annotations.json             human answers (train2014, val2014)
    <image root>/<folder>/COCO_<folder>_<image_id:012d>.jpg   images, or flat in the root
    v2_OpenEnded_mscoco_<split>_<name>_results.json   a results file for the evaluation server
    v2_OpenEnded_mscoco_<split>_<name>_results.zip    the upload: that results file alone, at the zip's top
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The most bytes an official questions or annotations file can hold: the biggest real one, the train2014
# annotations, is about 330 MB, so 2 GB leaves room for a bigger release and still stops /dev/zero or a
# wrong multi-gigabyte file before it fills the memory.
OFFICIAL_JSON_MAX_BYTES = 2 << 30

# test-dev2015 questions are about test2015 images.
IMAGE_FOLDERS = {"train2014": "train2014", "val2014": "val2014", "test-dev2015": "test2015", "test2015": "test2015"}


def image_folder(split: str) -> str:
    """The COCO image folder of a VQA split."""
    return IMAGE_FOLDERS.get(split, split)


def image_filename(split: str, image_id: int) -> str:
    """``COCO_<folder>_<image_id:012d>.jpg``."""
    folder = image_folder(split)
    return f"COCO_{folder}_{int(image_id):012d}.jpg"


def parse_image_filename(name: str) -> tuple[str, int] | None:
    """(image folder, image id) of a COCO image file name, or of a file named after one (MCAN's
    ``COCO_val2014_000000123456.jpg.npz``); None for another name."""
    match = re.fullmatch(r"COCO_([A-Za-z0-9-]+)_(\d+)(\.jpg)?(\.[A-Za-z0-9]+)?", name)
    return (match.group(1), int(match.group(2))) if match else None


def questions_filename(split: str) -> str:
    return f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_filename(split: str) -> str:
    return f"v2_mscoco_{split}_annotations.json"


def results_filename(split: str, run_name: str) -> str:
    """The evaluation server's naming: ``v2_OpenEnded_mscoco_<split>_<name>_results.json``."""
    return f"v2_OpenEnded_mscoco_{split}_{run_name}_results.json"


def submission_zip_filename(split: str, run_name: str) -> str:
    """The zip uploaded to the evaluation server: ``results_filename`` with ``.zip`` for ``.json``."""
    return str(Path(results_filename(split, run_name)).with_suffix(".zip"))


def find_json(data_dir: str | os.PathLike, split: str, name: str) -> Path | None:
    """``name`` at the top of ``data_dir`` (as the zips unpack) or in ``data_dir/<split>/``, else None."""
    for candidate in (Path(data_dir) / name, Path(data_dir) / split / name):
        if candidate.is_file():
            return candidate
    return None


def image_path(images_root: str | os.PathLike, split: str, image_id: int) -> Path:
    """Where a split's image lives: ``root/<folder>/COCO_...jpg`` as the zips unpack, or flat in ``root``."""
    nested = Path(images_root) / image_folder(split)
    base = nested if nested.is_dir() else Path(images_root)
    return base / image_filename(split, image_id)
