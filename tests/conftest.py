"""Shared tiny fixtures: a real-format VQA v2 sample, stand-in backbone and word vectors."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("VQA_NO_PROGRESS", "1")

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vqa_real_sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real VQA v2 / COCO sample beside the checkout (see its MANIFEST.txt)."""
    if not (REAL_SAMPLE / "MANIFEST.txt").exists():
        pytest.skip(f"real VQA v2 sample not found at {REAL_SAMPLE} (it lives in ../shared beside the checkout)")
    return REAL_SAMPLE


@pytest.fixture
def real_sample_official_layout(real_sample, tmp_path) -> Path:
    """The real sample laid out as the official release unpacks: JSON at the top, images per folder."""
    root = tmp_path / "raw"
    root.mkdir()
    for split in ("train2014", "val2014"):
        for path in (real_sample / split).glob("*.json"):
            shutil.copy(path, root / path.name)
        (root / split).mkdir()
    for image in (real_sample / "images").glob("*.jpg"):
        folder = image.name.split("_")[1]
        shutil.copy(image, root / folder / image.name)
    return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A stand-in image backbone: an untrained 32x32 CNN with 8-d output, saved as .keras."""
    import keras

    keras.utils.set_random_seed(0)
    images = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(8, name="features")(x)
    path = tmp_path_factory.mktemp("backbone") / "tiny_backbone.keras"
    keras.Model(images, features).save(path)
    return path


@pytest.fixture(scope="session")
def vectors_factory(tmp_path_factory):
    """Makes stand-in spaCy pipelines with pseudo-random 300-d vectors for given words."""
    from vqa import text

    def make(words, name="vectors"):
        return text.make_vectors_pipeline(sorted(set(words)), tmp_path_factory.mktemp(name) / "pipeline")

    return make


def write_image(path: Path, color=(200, 30, 30), size=(48, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(path, format="JPEG")


def write_official_split(root: Path, split: str, items: list[dict], annotated: bool = True,
                         images: bool = True) -> None:
    """A VQA v2-format split from ``items`` = [{image_id, question, answers: [10 str], answer_type?}].

    question_id = image_id * 1000 + k, as in the real files.
    """
    questions, annotations, per_image = [], [], {}
    for item in items:
        k = per_image.get(item["image_id"], 0)
        per_image[item["image_id"]] = k + 1
        qid = item["image_id"] * 1000 + k
        questions.append({"image_id": item["image_id"], "question": item["question"], "question_id": qid})
        answers = item["answers"]
        annotations.append({
            "question_type": item.get("question_type", " ".join(item["question"].lower().split()[:2])),
            "multiple_choice_answer": item.get("mc", max(set(answers), key=answers.count)),
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
            "image_id": item["image_id"], "answer_type": item.get("answer_type", "other"), "question_id": qid,
        })
    folder = "test2015" if split.startswith("test") else split
    root.mkdir(parents=True, exist_ok=True)
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
        "questions": questions}))
    if annotated:
        (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({
            "info": {}, "license": {}, "data_subtype": split, "annotations": annotations}))
    if images:
        for n, image_id in enumerate(per_image):
            write_image(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", color=(40 * n % 255, 90, 160))


# Three questions per image, one per answer type; 7 of the 10 humans agree, 3 say "no".
THREE_QUESTIONS = [("is there a cat ?", "yes", "yes/no"), ("how many dogs are there ?", "2", "number"),
                   ("what color is the car ?", "red", "other")]


def three_question_items(image_ids):
    """Items for ``write_official_split``: THREE_QUESTIONS about each image."""
    return [{"image_id": image_id, "question": question, "answers": [answer] * 7 + ["no"] * 3, "answer_type": kind}
            for image_id in image_ids for question, answer, kind in THREE_QUESTIONS]
