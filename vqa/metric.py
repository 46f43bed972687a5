"""The official VQA accuracy, reproduced to the last decimal.

Users compare our numbers with published ones, so this module reproduces the
official evaluation (GitHub GT-Vision-Lab/VQA, ``vqaEval.py`` and ``vqa.py``, as
run under Python 3), including its quirks:

1. ``clean``: every human answer and the prediction has ``\\n`` and ``\\t`` turned
   into spaces and is stripped.
2. Only when a question's cleaned human answers are not all the same string
   (exact, case-sensitive) are the human answers and the prediction normalised
   (``normalize_answer``); when all ten agree the raw prediction must equal them,
   so "Yes" scores 0 against ten "yes".
3. ``normalize_answer``, punctuation: each mark in ``PUNCTUATION`` is deleted
   everywhere when it touches an ASCII space anywhere in the answer, or when the
   answer holds a digit-comma-digit; otherwise it becomes a space. Then periods
   not followed by a digit are deleted, at most 32 of them: the official pattern
   meant a look-behind for digits but spells a look-ahead that never matches, and
   it passes ``re.UNICODE`` (32) where ``count`` goes.
4. ``normalize_answer``, words: lower-case, split on whitespace, number words
   ``none``/``zero``..``ten`` become digits, articles go, and the official
   contraction table restores apostrophes (``dont`` -> ``don't``).
5. A question's accuracy is the mean over its human answers of
   ``min(1, matches / 3)``, where ``matches`` counts the OTHER human answers equal
   to the prediction: 0, 1, 2, 3, >=4 matches among ten give 0, 0.3, 0.6, 0.9, 1.
   (The official code leaves an answer out by comparing whole answer records;
   every record of an official file has its own answer_id, so that is leaving
   out by position, which is what is done here.)
6. Overall, per answer type and per question type: ``round(100 * total / n, 2)``
   with floats added one by one in the annotation file's question order.

"As run under Python 3" matters twice: ``round`` breaks exact ties to even
(Python 2 rounded them away from zero) and ``\d`` matches any Unicode decimal
digit (Python 2 matched 0-9 only). Neither changes a VQA v2 figure in practice.

Reads: official annotations, questions and results JSON. Writes: optionally the
per-question accuracies (``{"<question_id>": percent}``, as the official
``evalQA``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from typing import Any, Iterator, Sequence

from vqa import storage
from vqa.errors import VQAError
from vqa.layout import OFFICIAL_JSON_MAX_BYTES
from vqa.paths import check_outputs

# Marks the official evaluation deletes or turns into spaces. Apostrophe and
# ": # $ % & * ~ ^ |" are not among them and survive normalisation.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# The official table, quirks kept: the capitalised keys never match (words are
# lower-cased first) and "somebody'd" loses its apostrophe.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

# "1,000" anywhere in an answer makes every punctuation mark vanish instead of
# turning into a space. ``\d`` is Python 3's: any Unicode decimal digit.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (== 32) as the ``count`` of its sub().
_MAX_PERIODS_REMOVED = int(re.UNICODE)
# Per-question and summary accuracies are percentages with this many decimals.
_DECIMALS = 2
# How many ids an error message names.
_IDS_SHOWN = 5

# The most bytes a results file can hold: the biggest real one, test2015's 447,793 answers, is about
# 25 MB; 256 MB leaves ten times that and still stops /dev/zero or a wrong file before the memory fills.
RESULTS_MAX_BYTES = 256 << 20


def clean(answer: str) -> str:
    """Turn newlines and tabs into spaces and strip, as done to every answer.

    Args:
        answer: a human answer or a prediction.

    Returns:
        The cleaned answer.
    """
    return answer.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=1 << 20)
def normalize_answer(answer: str) -> str:
    """Normalise a cleaned answer the way the official evaluation does.

    Applied to the human answers and the prediction of a question only when its
    human answers differ. Cached: VQA answers repeat a great deal.

    Args:
        answer: a cleaned answer (see ``clean``).

    Returns:
        The answer after the punctuation step and the digit/article step.
    """
    return _normalize_words(_strip_punctuation(answer))


def _strip_punctuation(text: str) -> str:
    # Whether a mark is deleted or becomes a space is decided on the original
    # text, whatever the marks handled before it did.
    delete_marks = _DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in PUNCTUATION:
        if mark not in result:
            continue
        if delete_marks or f"{mark} " in text or f" {mark}" in text:
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", result, count=_MAX_PERIODS_REMOVED)


def _normalize_words(text: str) -> str:
    words = (NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The official accuracy of one prediction against a question's human answers.

    Each human answer in turn is left out and the prediction earns
    ``min(1, matches / 3)`` from the others; the accuracy is the mean. The terms
    are added in the order of ``human_answers``, as the official code does, so
    the float is identical to the official one.

    Args:
        prediction: the predicted answer, raw.
        human_answers: the question's human answers (ten in VQA v2), raw.

    Returns:
        The accuracy in [0, 1]; with ten answers one of 0, 0.3, 0.6, 0.9, 1.
    """
    humans = [clean(answer) for answer in human_answers]
    if not humans:
        raise VQAError("A question has no human answers to score against; check the annotations file.")
    prediction = clean(prediction)
    if len(set(humans)) > 1:
        humans = [normalize_answer(answer) for answer in humans]
        prediction = normalize_answer(prediction)
    matches = sum(1 for answer in humans if answer == prediction)
    total = 0.0
    for answer in humans:
        others_matching = matches - (answer == prediction)
        total += min(1.0, others_matching / 3)
    return total / len(humans)


@dataclasses.dataclass(frozen=True)
class Scores:
    """VQA accuracies in percent, rounded to two decimals like the official ones.

    Attributes:
        overall: accuracy over all questions.
        per_answer_type: accuracy per answer type ("yes/no", "number", "other"),
            in order of first appearance in the annotations.
        per_question_type: accuracy per question type ("what color is the", ...).
        per_question: accuracy of each question, by question id.
    """

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[int, float]

    def to_json(self) -> dict[str, Any]:
        """The summary with the official key names (per-question values left out)."""
        return {
            "overall": self.overall,
            "perAnswerType": dict(self.per_answer_type),
            "perQuestionType": dict(self.per_question_type),
        }


def score(
    annotations: list[dict], results: list[dict], questions: list[dict] | None = None
) -> Scores:
    """Score results against annotations exactly as the official evaluation.

    Args:
        annotations: the ``annotations`` list of an official annotations file:
            dicts with question_id, answers ([{"answer": str, ...}]), answer_type
            and question_type. Their order is the order of summation.
        results: ``[{"question_id": int, "answer": str}]`` covering exactly the
            annotated questions, in any order.
        questions: optionally the ``questions`` list of the split's questions
            file, to catch annotations and questions of different splits.

    Returns:
        The scores.

    Raises:
        VQAError: malformed results or annotations, or results that do not
            answer exactly the annotated questions.
    """
    predictions = _predictions_by_id(results)
    _check_annotations(annotations)
    _check_coverage([annotation["question_id"] for annotation in annotations], predictions)
    if questions is not None:
        _check_questions(annotations, questions)
    return _score_checked(annotations, predictions)


def _score_checked(annotations: list[dict], predictions: dict[Any, str]) -> Scores:
    per_question: dict[int, float] = {}
    accuracies: list[float] = []
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for annotation in annotations:
        human_answers = [entry["answer"] for entry in annotation["answers"]]
        accuracy = question_accuracy(predictions[annotation["question_id"]], human_answers)
        accuracies.append(accuracy)
        by_answer_type.setdefault(annotation["answer_type"], []).append(accuracy)
        by_question_type.setdefault(annotation["question_type"], []).append(accuracy)
        per_question[annotation["question_id"]] = round(100 * accuracy, _DECIMALS)
    return Scores(
        overall=_percent(accuracies),
        per_answer_type={kind: _percent(values) for kind, values in by_answer_type.items()},
        per_question_type={kind: _percent(values) for kind, values in by_question_type.items()},
        per_question=per_question,
    )


def _percent(accuracies: list[float]) -> float:
    # One addition at a time, in order: Python 3.12's sum() compensates rounding
    # errors and could move the last bit, hence the last decimal, away from the
    # official figure. The official expression is (100 * total) / n.
    total = 0.0
    for accuracy in accuracies:
        total += accuracy
    return round(100 * total / len(accuracies), _DECIMALS)


def _predictions_by_id(results: Any) -> dict[Any, str]:
    if not isinstance(results, list):
        raise VQAError(
            "Results must be a JSON list of {\"question_id\": int, \"answer\": str} objects, "
            f"not a {type(results).__name__}."
        )
    predictions: dict[Any, str] = {}
    repeats: dict[Any, int] = {}
    for number, entry in enumerate(results, start=1):
        if not isinstance(entry, dict) or "question_id" not in entry or "answer" not in entry:
            raise VQAError(
                f"Result number {number} is not an object with \"question_id\" and \"answer\": {_short(entry)}."
            )
        question_id = entry["question_id"]
        if isinstance(question_id, bool) or not isinstance(question_id, (int, float)):
            raise VQAError(f"Result number {number} has question_id {question_id!r}; question ids are integers.")
        if not isinstance(entry["answer"], str):
            raise VQAError(
                f"The answer for question {question_id} is a {type(entry['answer']).__name__}, not a string."
            )
        if question_id in predictions:
            repeats[question_id] = repeats.get(question_id, 1) + 1
        predictions[question_id] = entry["answer"]
    if repeats:
        question_id, count = next(iter(repeats.items()))
        others = f" ({len(repeats) - 1} other question ids repeat too)" if len(repeats) > 1 else ""
        raise VQAError(
            f"Question {question_id} is answered {count} times in the results{others}; give one answer per question."
        )
    return predictions


def _check_annotations(annotations: Any) -> None:
    if not isinstance(annotations, list) or not annotations:
        raise VQAError("There are no annotations to score against; pass the annotations of a split with answers.")
    seen = set()
    for number, annotation in enumerate(annotations, start=1):
        if not isinstance(annotation, dict) or "question_id" not in annotation:
            raise VQAError(f"Annotation number {number} has no question_id; check the annotations file.")
        question_id = annotation["question_id"]
        missing = [key for key in ("answers", "answer_type", "question_type") if key not in annotation]
        if missing:
            raise VQAError(f"The annotation of question {question_id} lacks {', '.join(missing)}.")
        answers = annotation["answers"]
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(entry, dict) and isinstance(entry.get("answer"), str) for entry in answers)
        ):
            raise VQAError(
                f"The annotation of question {question_id} needs a non-empty list of {{\"answer\": str}} answers."
            )
        if question_id in seen:
            raise VQAError(f"Question {question_id} is annotated twice; check the annotations file.")
        seen.add(question_id)


def _check_coverage(annotated_ids: list, predictions: dict) -> None:
    annotated = set(annotated_ids)
    missing = [question_id for question_id in annotated_ids if question_id not in predictions]
    extra = [question_id for question_id in predictions if question_id not in annotated]
    if missing or extra:
        raise VQAError(
            "The results do not answer exactly the annotated questions: "
            f"{len(missing)} missing{_examples(missing)} and {len(extra)} extra{_examples(extra)}; "
            "answer every question of the split and no other."
        )


def _check_questions(annotations: list[dict], questions: Any) -> None:
    if not isinstance(questions, list):
        raise VQAError("Questions must be the list of question objects of the split's questions file.")
    asked = {question.get("question_id") for question in questions if isinstance(question, dict)}
    unasked = [annotation["question_id"] for annotation in annotations if annotation["question_id"] not in asked]
    if unasked:
        raise VQAError(
            f"{len(unasked)} annotated questions are not in the questions file{_examples(unasked)}; "
            "pass the questions and annotations of the same split."
        )


def _examples(ids: list) -> str:
    if not ids:
        return ""
    shown = ", ".join(str(question_id) for question_id in ids[:_IDS_SHOWN])
    return f" (e.g. {shown})" if len(ids) > _IDS_SHOWN else f" ({shown})"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def score_files(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike,
    results_path: str | os.PathLike,
    per_question_path: str | os.PathLike | None = None,
) -> Scores:
    """Score an official results file, as ``vqa score`` does.

    Args:
        questions_path: an official questions file (``vqa.layout.questions_filename``).
        annotations_path: the matching annotations file.
        results_path: the results JSON, ``[{"question_id": int, "answer": str}]``.
        per_question_path: where to write ``{"<question_id>": percent}``
            (atomically); nothing is written when None.

    Returns:
        The scores.

    Raises:
        VQAError: a missing or malformed file (named), or results that do not
            answer exactly the annotated questions.
    """
    check_outputs({"--questions": questions_path, "--annotations": annotations_path, "--results": results_path},
                  {"--per-question": per_question_path})
    questions = _json_list(questions_path, "questions file", "questions")
    annotations = _json_list(annotations_path, "annotations file", "annotations")
    results = storage.read_json(results_path, "results file", RESULTS_MAX_BYTES)
    if not isinstance(results, list):
        raise VQAError(
            f"Results file {results_path} must hold a JSON list of "
            "{\"question_id\": int, \"answer\": str} objects; is it the right file?"
        )
    with _blaming(results_path):
        predictions = _predictions_by_id(results)
    with _blaming(annotations_path):
        _check_annotations(annotations)
    with _blaming(results_path):
        _check_coverage([annotation["question_id"] for annotation in annotations], predictions)
    with _blaming(questions_path):
        _check_questions(annotations, questions)
    scores = _score_checked(annotations, predictions)
    if per_question_path is not None:
        storage.write_json(
            per_question_path, {str(question_id): value for question_id, value in scores.per_question.items()}
        )
    return scores


@contextlib.contextmanager
def _blaming(path: str | os.PathLike) -> Iterator[None]:
    """Prefix the sentence of a VQAError raised inside with the file at fault."""
    try:
        yield
    except VQAError as error:
        raise VQAError(f"{path}: {error}") from None


def _json_list(path: str | os.PathLike, what: str, key: str) -> list:
    data = storage.read_json(path, what, OFFICIAL_JSON_MAX_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise VQAError(f"The {what} {path} has no \"{key}\" list; is it the right file?")
    return data[key]
