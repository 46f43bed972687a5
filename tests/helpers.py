"""Builders for the tests: official-layout raw data, and OUT and RUN folders made with the real writers.

Not a test module: test files import from here (``from helpers import ...``), never from each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vqa import answers, backbone, features, manifest, split_files, text
from vqa.layout import annotations_filename, image_filename, image_folder, questions_filename

# --- raw data in the official VQA v2 layout -------------------------------------------------------------


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
        human = item["answers"]
        annotations.append({
            "question_type": item.get("question_type", " ".join(item["question"].lower().split()[:2])),
            "multiple_choice_answer": item.get("mc", max(set(human), key=human.count)),
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(human)],
            "image_id": item["image_id"], "answer_type": item.get("answer_type", "other"), "question_id": qid,
        })
    root.mkdir(parents=True, exist_ok=True)
    (root / questions_filename(split)).write_text(json.dumps({
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
        "questions": questions}))
    if annotated:
        (root / annotations_filename(split)).write_text(json.dumps({
            "info": {}, "license": {}, "data_subtype": split, "annotations": annotations}))
    if images:
        for n, image_id in enumerate(per_image):
            write_image(root / image_folder(split) / image_filename(split, image_id), color=(40 * n % 255, 90, 160))


# Three questions per image, one per answer type; 7 of the 10 humans agree, 3 say "no".
THREE_QUESTIONS = [("is there a cat ?", "yes", "yes/no"), ("how many dogs are there ?", "2", "number"),
                   ("what color is the car ?", "red", "other")]


def three_question_items(image_ids):
    """Items for ``write_official_split``: THREE_QUESTIONS about each image."""
    return [{"image_id": image_id, "question": question, "answers": [answer] * 7 + ["no"] * 3, "answer_type": kind}
            for image_id in image_ids for question, answer, kind in THREE_QUESTIONS]


def preprocess(data_dir: Path, out: Path, splits=("train2014", "val2014"), log=None, **settings):
    """``vqa.preprocess.preprocess`` with the preprocess config fields given as keywords."""
    from vqa.config import PreprocessConfig
    from vqa.preprocess import preprocess as run_preprocess

    config = PreprocessConfig(data_dir=str(data_dir), splits=",".join(splits), **settings)
    return run_preprocess(config, out, log=log or (lambda message: None))


# --- a tiny preprocessed folder OUT ------------------------------------------------------------------------
# Its image features carry the answer (each image's colour and a yes/no bit are one-hot blocks of the
# feature vector), so a model that sees the image can answer every question while a blind one cannot.

ANSWERS = ["yes", "no", "red", "blue", "green"]
WORDS = ["<pad>", "<unk>", "what", "color", "is", "it", "red", "?"]
MAX_LENGTH = 6
FEATURE_DIM = 12
COLOR_QUESTION = [2, 3, 4, 5, 7, 0]  # what color is it ?
RED_QUESTION = [4, 5, 6, 7, 0, 0]  # is it red ?
TINY_BACKBONE = backbone.BackboneSpec.for_mat("/nowhere/test_features.mat", FEATURE_DIM)


def _write_split(split_dir: Path, num_images: int, num_questions: int, seed: int, missing: int = 0,
                 unanswerable: int = 0) -> manifest.SplitRecord:
    """One split: images with a colour, half colour questions, half "is it red?".

    The last ``missing`` questions point at no image (-1); the ``unanswerable`` questions
    before them have no vocabulary answer.
    """
    rng = np.random.default_rng(seed)
    colors = rng.integers(2, 5, size=num_images)  # answer class of "what color is it?"
    image_features = rng.normal(0, 0.05, size=(num_images, FEATURE_DIM))
    image_features[np.arange(num_images), colors] += 1.0  # columns 2..4: the colour
    image_features[:, 8] += 0.5  # a shared offset, so no row is all noise
    image_index = np.arange(num_questions) % num_images
    is_color = np.arange(num_questions) % 2 == 0
    token_ids = np.where(is_color[:, None], COLOR_QUESTION, RED_QUESTION).astype(np.int32)
    answer_index = np.where(is_color, colors[image_index], np.where(colors[image_index] == 2, 0, 1))
    score_indices = np.full((num_questions, 10), -1, np.int32)
    score_values = np.zeros((num_questions, 10), np.float32)
    score_indices[:, 0] = answer_index
    score_values[:, 0] = 1.0
    # A minority human answer: colour questions name another colour with 0.3 credit.
    other = np.where(answer_index == 4, 3, 4)
    score_indices[is_color, 1] = other[is_color]
    score_values[is_color, 1] = 0.3
    if unanswerable:
        rows = slice(num_questions - missing - unanswerable, num_questions - missing)
        answer_index[rows] = -1
        score_indices[rows] = -1
        score_values[rows] = 0.0
    if missing:
        image_index[num_questions - missing:] = -1
    split_dir.mkdir(parents=True)
    image_ids = 1000 + np.arange(num_images, dtype=np.int64)
    question_ids = np.arange(num_questions, dtype=np.int64) + seed * 100_000
    question_image_ids = np.where(image_index >= 0, image_ids[np.maximum(image_index, 0)], 999)
    split_files.write_questions(split_dir, split_files.QuestionArrays(
        split=split_dir.name, question_ids=question_ids, image_ids=question_image_ids, token_ids=token_ids,
        image_index=image_index.astype(np.int32), answer_index=answer_index.astype(np.int32),
        score_indices=score_indices, score_values=score_values, has_annotations=True))
    features.write_features(features.features_path(split_dir), image_ids, image_features.astype(np.float16),
                            TINY_BACKBONE)
    words = {tuple(COLOR_QUESTION): "what color is it ?", tuple(RED_QUESTION): "is it red ?"}
    split_files.write_text_columns(split_dir, split_files.TextColumns(
        questions=[words[tuple(row)] for row in token_ids.tolist()],
        question_ids=[str(i) for i in question_ids], image_ids=[str(i) for i in question_image_ids],
        answers=[ANSWERS[i] if i >= 0 else "maybe" for i in answer_index],
        answer_types=["other" if color else "yes/no" for color in is_color],
        question_types=["what color" if color else "is it" for color in is_color]))
    return manifest.SplitRecord(num_questions=num_questions, num_images=num_images, num_missing_images=0,
                                questions_without_image=missing, questions_file="/nowhere")


def write_tiny_out(out_dir: Path, train_questions: int = 64, val_questions: int = 32, train_images: int = 16,
                   val_images: int = 8) -> Path:
    """A preprocessed directory with splits train2014 (2 questions without image, 2 without a
    vocabulary answer) and val2014 (1 without image), written with the pipeline's own writers.
    Question q is about image q % images (ids 1000, 1001, ...), a colour question when q is even."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {"train2014": _write_split(out_dir / "train2014", train_images, train_questions, seed=1, missing=2,
                                         unanswerable=2),
               "val2014": _write_split(out_dir / "val2014", val_images, val_questions, seed=2, missing=1)}
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, size=(len(WORDS), 6)).astype(np.float32)
    vectors[:2] = 0.0
    text.write_embeddings(out_dir, vectors)
    text.write_vocabulary(out_dir, WORDS)
    text.write_tokenizer(out_dir, text.blank_tokenizer("en"))
    answers.write_answers(out_dir, ANSWERS, [9] * len(ANSWERS))
    backbone.write_backbone(out_dir, TINY_BACKBONE)
    manifest.write_manifest(out_dir, manifest.Manifest(
        splits=records, data_dir="/nowhere", vectors="test", lang="en", first_split="train2014",
        max_question_length=MAX_LENGTH, top_answers=len(ANSWERS), vocabulary_size=len(WORDS), embedding_dim=6,
        num_answers=len(ANSWERS), backbone=TINY_BACKBONE.to_dict(), feature_dim=FEATURE_DIM))
    return out_dir
