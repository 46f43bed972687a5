"""Section ``question_storage``: bytes per question of the question input as preprocessing stores it
(token ids in the question arrays, vqa.split_files) against per-token word vectors (25 x 300 float32)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from vqa.bench.report import summary_row
from vqa.bench.settings import MAX_QUESTION_LENGTH, NUM_ANSWERS, TARGETS, WORD_VECTOR_DIM, Sizes
from vqa.bench.synthetic import SPLIT, vqa_like_split


def run(sizes: Sizes, work: Path, log: Callable[[str], None]) -> dict:
    """Bytes per question of the stored token ids against per-token word vectors."""
    import h5py

    from vqa import answers as answers_lib
    from vqa import split_files, text

    questions, annotations = vqa_like_split(sizes.questions, num_images=max(1, sizes.questions // 5), seed=2)
    tokens = text.tokenize(text.blank_tokenizer("en"), [q["question"] for q in questions])
    words = text.build_vocabulary(tokens)
    token_ids, _ = text.token_ids(tokens, text.word_index(words), MAX_QUESTION_LENGTH)
    answers, _ = answers_lib.answer_vocabulary(annotations, NUM_ANSWERS)
    mc_index, score_indices, score_values = answers_lib.answer_targets(
        annotations, answers_lib.build_answer_index(answers))
    image_ids = np.array([q["image_id"] for q in questions], np.int64)
    split_dir = work / "storage"
    split_dir.mkdir(parents=True, exist_ok=True)
    # The writer preprocessing uses, so the bytes are what a preprocessed split really holds.
    split_files.write_questions(split_dir, split_files.QuestionArrays(
        split=SPLIT, question_ids=np.array([q["question_id"] for q in questions], np.int64), image_ids=image_ids,
        token_ids=token_ids, image_index=image_ids.astype(np.int32), answer_index=mc_index,
        score_indices=score_indices, score_values=score_values, has_annotations=True))
    path = split_files.questions_path(split_dir)
    with h5py.File(path, "r") as f:
        stored = f["token_ids"].id.get_storage_size()
        compression = f["token_ids"].compression
        shape = f["token_ids"].shape
    count = len(questions)
    project = stored / count
    reference = MAX_QUESTION_LENGTH * WORD_VECTOR_DIM * 4
    return {
        "project_bytes_per_question": round(project, 2),
        "per_token_vectors_bytes_per_question": reference,
        "ratio": round(reference / project, 1),
        "target": TARGETS["question_storage"],
        "questions": count,
        "token_ids_shape": list(shape),
        "uncompressed_bytes_per_question": MAX_QUESTION_LENGTH * 4,
        "compression": compression,
        "file_bytes_per_question": round(path.stat().st_size / count, 1),
        "note": "file_bytes_per_question also counts question/image ids and answer targets",
    }


def summary_rows(result: dict) -> list[dict]:
    return [summary_row("question_storage", "bytes/question (ref/project)", result["project_bytes_per_question"],
                        result["per_token_vectors_bytes_per_question"], result["ratio"], result["target"])]
