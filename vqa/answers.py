"""The answer vocabulary (the classes the model chooses from) and soft scores.

Answers are normalised exactly as the official metric normalises them
(``metric.normalize_answer(metric.clean(answer))``), so a class string is what a
results file says and what the metric compares. The soft score of a class for a
question is the official accuracy its answer string would earn there, which
makes it both the training target (sigmoid + binary cross-entropy, Teney et
al. 2018) and an exact measure of validation accuracy.

Writes and reads ``OUT/answers.json``: ``{"answers": [...], "counts": [...]}``,
list index = class index.
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

from vqa import metric, storage
from vqa.errors import VQAError


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


def write_answers(path: str | os.PathLike, answers: Sequence[str], counts: Sequence[int]) -> None:
    """Write the vocabulary to ``path`` (``answers.json``) atomically.

    Args:
        path: the file to write.
        answers: class strings, list index = class index.
        counts: how many training questions have each answer.
    """
    if len(answers) != len(counts):
        raise ValueError(f"{len(answers)} answers but {len(counts)} counts")
    storage.write_json(path, {"answers": list(answers), "counts": [int(count) for count in counts]})


def read_answers(path: str | os.PathLike) -> list[str]:
    """Read the vocabulary written by ``write_answers``.

    Args:
        path: an ``answers.json``.

    Returns:
        The class strings, list index = class index.

    Raises:
        VQAError: the file is missing, not JSON, or not an answer vocabulary.
    """
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
    return answers
