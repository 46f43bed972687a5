"""The answer vocabulary (the classes the model chooses from) and soft scores.

Answers are normalised exactly as the official metric normalises them
(``metric.normalize_answer(metric.clean(answer))``), so a class string is what a
results file says and what the metric compares. The soft score of a class for a
question is the official accuracy its answer string would earn there, which
makes it both the training target (sigmoid + binary cross-entropy, Teney et
al. 2018) and an exact measure of validation accuracy.

Owns ``answers.json`` in OUT and RUN: ``{"answers": [...], "counts": [...]}``,
list index = class index.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vqa import metric, storage
from vqa.errors import VQAError

FILENAME = "answers.json"


def canonical_answer(answer: str) -> str:
    """The class string of an answer: cleaned and normalised as by the metric."""
    return metric.normalize_answer(metric.clean(answer))


def answer_vocabulary(annotations: list[dict], top_k: int) -> tuple[list[str], list[int]]:
    """The ``top_k`` most frequent answers of a split.

    Each question contributes its ``multiple_choice_answer`` (the most common of
    its human answers) once, after normalisation. Ties in count are broken by the
    answer string so the vocabulary does not depend on file order.

    Args:
        annotations: the ``annotations`` list of an official annotations file.
        top_k: how many answers to keep (fewer when the split has fewer).

    Returns:
        ``(answers, counts)``: the answers by count descending, then by string,
        and how many questions have each as their answer.

    Raises:
        VQAError: ``top_k`` is not positive, there are no annotations, or one
            lacks its ``multiple_choice_answer``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise VQAError(f"The number of answer classes must be a positive integer, not {top_k!r}.")
    if not annotations:
        raise VQAError("There are no annotations to build the answer vocabulary from; use a split with answers.")
    counts: collections.Counter[str] = collections.Counter()
    for annotation in annotations:
        answer = annotation.get("multiple_choice_answer")
        if not isinstance(answer, str):
            raise VQAError(
                f"The annotation of question {annotation.get('question_id')} has no multiple_choice_answer string."
            )
        counts[canonical_answer(answer)] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [answer for answer, _ in ranked], [count for _, count in ranked]


def build_answer_index(answers: Sequence[str]) -> dict[str, int]:
    """Map each vocabulary answer to its class index."""
    return {answer: index for index, answer in enumerate(answers)}


def answer_scores(human_answers: Sequence[str], answer_index: dict[str, int]) -> list[tuple[int, float]]:
    """The soft score of every class that earns credit on a question.

    A class scores ``metric.question_accuracy(its answer, human_answers)``: the
    official accuracy of predicting it. For a vocabulary answer (one that
    normalisation leaves unchanged) that is ``min(1, matches / 3)`` averaged over
    the leave-one-out subsets of the human answers (the ten subsets of nine for
    VQA v2), where matches counts the subset's answers equal to it after
    normalisation: 1, 2, 3, >=4 matching humans give 0.3, 0.6, 0.9, 1. When the
    ten human answers are the very same string they are compared raw, as the
    official metric does, so a class can score 0 although it is their normalised
    form ("yes" against ten "Yes").

    Only answers some human gave can score, so at most ``len(human_answers)``
    pairs come back.

    Args:
        human_answers: the question's raw human answers.
        answer_index: class index of each vocabulary answer.

    Returns:
        ``[(class index, score)]`` with score in (0, 1], sorted by class index;
        zero scores and answers outside the vocabulary are left out.
    """
    candidates = {canonical_answer(answer) for answer in human_answers}
    scores = []
    for answer in candidates:
        index = answer_index.get(answer)
        if index is None:
            continue
        accuracy = metric.question_accuracy(answer, human_answers)
        if accuracy > 0:
            scores.append((index, accuracy))
    return sorted(scores)


def multiple_choice_index(mc_answer: str, answer_index: dict[str, int]) -> int:
    """Class index of a question's ``multiple_choice_answer``, or -1 outside the vocabulary."""
    return answer_index.get(canonical_answer(mc_answer), -1)


def answer_targets(annotations: Sequence[dict | None], answer_index: dict[str, int],
                   max_answers: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per question: the class of its multiple-choice answer and the official score of each class.

    Args:
        annotations: N official annotations (None for a question without one).
        answer_index: answer class string -> class index.
        max_answers: S, columns of the score arrays (10 human answers give at most 10 classes).

    Returns:
        answer_index int32 (N,), -1 outside the vocabulary or without annotation;
        score_indices int32 (N, S), -1 padded; score_values float32 (N, S), 0 padded.
    """
    count = len(annotations)
    mc_index = np.full(count, -1, np.int32)
    score_indices = np.full((count, max_answers), -1, np.int32)
    score_values = np.zeros((count, max_answers), np.float32)
    for row, annotation in enumerate(annotations):
        if annotation is None:
            continue
        mc_index[row] = multiple_choice_index(annotation["multiple_choice_answer"], answer_index)
        human = [entry["answer"] for entry in annotation["answers"]]
        for column, (index, value) in enumerate(answer_scores(human, answer_index)[:max_answers]):
            score_indices[row, column] = index
            score_values[row, column] = value
    return mc_index, score_indices, score_values


def answers_path(folder: str | os.PathLike) -> Path:
    """Where a preprocessed or run folder keeps its answer vocabulary."""
    return Path(folder) / FILENAME


def write_answers(folder: str | os.PathLike, answers: Sequence[str], counts: Sequence[int]) -> None:
    """Write the vocabulary into ``folder`` atomically.

    Args:
        folder: a preprocessed folder OUT or a run folder RUN.
        answers: class strings, list index = class index.
        counts: how many training questions have each answer.
    """
    if len(answers) != len(counts):
        raise ValueError(f"{len(answers)} answers but {len(counts)} counts")
    storage.write_json(answers_path(folder), {"answers": list(answers), "counts": [int(count) for count in counts]})


def read_answer_counts(folder: str | os.PathLike) -> tuple[list[str], list[int]]:
    """The vocabulary of ``folder`` with the training count of each answer.

    Raises:
        VQAError: the file is missing, not JSON, or not an answer vocabulary.
    """
    path = answers_path(folder)
    data = storage.read_json(path, "answer vocabulary")
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, list) or not answers or not all(isinstance(answer, str) for answer in answers):
        raise VQAError(
            f"Answer vocabulary {path} needs a non-empty \"answers\" list of strings; run `vqa preprocess` again."
        )
    if len(set(answers)) != len(answers):
        duplicate = next(answer for answer, count in collections.Counter(answers).items() if count > 1)
        raise VQAError(
            f"Answer vocabulary {path} lists {duplicate!r} more than once; run `vqa preprocess` again."
        )
    counts = data.get("counts")
    if (not isinstance(counts, list) or len(counts) != len(answers)
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)):
        counts = [0] * len(answers)  # counts only inform; a file without them still names the classes
    return answers, counts


def read_answers(folder: str | os.PathLike) -> list[str]:
    """The class strings of ``folder``'s vocabulary, list index = class index.

    Raises:
        VQAError: the file is missing, not JSON, or not an answer vocabulary.
    """
    return read_answer_counts(folder)[0]


def copy_answers(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the vocabulary of folder ``source`` into folder ``target``, checking it on the way."""
    write_answers(target, *read_answer_counts(source))
