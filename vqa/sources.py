"""The official VQA v2 JSON of one split, read, checked and joined.

Reads the questions file and, where the split has one, the annotations file that
``vqa.layout`` locates under ``--data-dir``, checks them against the official schema
(``../shared/VQA_FACTS.md``), and joins each question with its annotation in
question-file order. Writes nothing: ``vqa.preprocess`` turns a ``SplitSource``
into the files of OUT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vqa import layout
from vqa.errors import VQAError
from vqa.storage import read_json

SHOWN_IDS = 5  # how many ids a message names before "..."


def name_ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:SHOWN_IDS])
    return shown + (", ..." if len(ids) > SHOWN_IDS else "")


@dataclass
class SplitSource:
    """One split's questions joined with their annotations, in question-file order.

    ``skipped`` names each bad item left out ("question 5000: answers is an empty list"), and
    ``skipped_questions`` counts the questions left out with them: a question whose annotation
    is bad goes too, so the two files keep matching.
    """

    split: str
    questions_file: Path
    annotations_file: Path | None
    questions: list[dict]
    annotations: list[dict | None]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    skipped_questions: int = 0

    @property
    def has_annotations(self) -> bool:
        return self.annotations_file is not None


ID_LIMIT = 2 ** 63  # ids are stored as int64
ANSWERS_PER_QUESTION = 10  # human answers per question in VQA v2
ANNOTATION_STRINGS = ("multiple_choice_answer", "answer_type", "question_type")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _id_problem(entry: dict, key: str) -> str | None:
    if key not in entry:
        return f"lacks {key}"
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key} {_short(value)} is not an integer"
    if not 0 <= value < ID_LIMIT:
        return f"{key} {value} is out of range (ids are integers from 0 to 2**63-1)"
    return None


def question_problem(entry: object) -> str | None:
    """Why an entry of an official questions file cannot be used, or None when it can."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    for key in ("question_id", "image_id"):
        problem = _id_problem(entry, key)
        if problem:
            return problem
    if not isinstance(entry.get("question"), str):
        return "lacks question" if "question" not in entry else f"question {_short(entry['question'])} is not a string"
    return None


def annotation_problem(entry: object) -> str | None:
    """Why an entry of an official annotations file cannot be used, or None when it can.

    Usable: an int64 question_id, exactly 10 answers that are objects with an "answer" string, and
    multiple_choice_answer, answer_type and question_type strings (``../shared/VQA_FACTS.md``).
    """
    if not isinstance(entry, dict):
        return "not a JSON object"
    problem = _id_problem(entry, "question_id")
    if problem:
        return problem
    answers = entry.get("answers")
    if not isinstance(answers, list):
        return "lacks answers" if "answers" not in entry else f"answers {_short(answers)} is not a list"
    if not answers:
        return "answers is an empty list"
    if len(answers) != ANSWERS_PER_QUESTION:
        return f"answers has {len(answers)} entries, not {ANSWERS_PER_QUESTION}"
    for position, answer in enumerate(answers):
        if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
            return f'answers[{position}] {_short(answer)} is not an object with an "answer" string'
    for key in ANNOTATION_STRINGS:
        if not isinstance(entry.get(key), str):
            return f"lacks {key}" if key not in entry else f"{key} {_short(entry[key])} is not a string"
    return None


def _label(entry: object, position: int, what: str) -> str:
    """"question 5000" where the entry has an integer question_id, else "questions[3]"."""
    question_id = entry.get("question_id") if isinstance(entry, dict) else None
    if isinstance(question_id, int) and not isinstance(question_id, bool):
        return f"question {question_id}"
    return f"{what}[{position}]"


def _entries(data: object, path: Path, what: str, kind: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(what), list):
        raise VQAError(f"{path} has no '{what}' list; is it an official VQA v2 {kind} file?")
    return data[what]


def _all_bad(entries: list, problems: dict[int, str], path: Path, what: str) -> None:
    """One bad entry is skipped; a file of nothing but bad entries is the wrong file."""
    if entries and len(problems) == len(entries):
        position, reason = next(iter(problems.items()))
        raise VQAError(f"{path}: none of its {len(entries)} {what} can be used ({what}[{position}]: {reason}); "
                       "is this an official VQA v2 file?")


def _duplicates(entries: list[dict], path: Path) -> None:
    counts: dict[int, int] = {}
    for entry in entries:
        counts[entry["question_id"]] = counts.get(entry["question_id"], 0) + 1
    duplicated = [qid for qid, count in counts.items() if count > 1]
    if duplicated:
        raise VQAError(
            f"{path}: {len(duplicated)} question ids appear more than once ({name_ids(duplicated)}); "
            "the file is corrupt: download it again."
        )


def load_split(data_dir: Path, split: str, limit: int | None = None) -> SplitSource:
    """Read and join one split's official question and annotation files.

    A bad question or annotation (``question_problem``, ``annotation_problem``) is skipped and
    named, with its question or annotation; what is wrong with a whole file (its shape, duplicate
    ids, files that do not belong together, nothing usable) stops with one sentence.

    Args:
        data_dir: folder holding the official JSON files.
        split: e.g. "train2014", "val2014", "test-dev2015".
        limit: keep only the first ``limit`` questions.

    Returns:
        The split's usable questions with their annotation (None where the split has none).
    """
    questions_path = layout.find_json(data_dir, split, layout.questions_filename(split))
    if questions_path is None:
        raise VQAError(
            f"{data_dir / layout.questions_filename(split)} does not exist: put the official VQA v2 question file for "
            f"{split} there (make download fetches it), or pass --data-dir."
        )
    entries = _entries(read_json(questions_path, "questions file", layout.OFFICIAL_JSON_MAX_BYTES), questions_path, "questions", "questions")
    problems = {position: reason for position, entry in enumerate(entries)
                if (reason := question_problem(entry)) is not None}
    _all_bad(entries, problems, questions_path, "questions")
    _duplicates([entry for position, entry in enumerate(entries) if position not in problems], questions_path)
    if limit:
        entries = entries[:limit]
    questions = [entry for position, entry in enumerate(entries) if position not in problems]
    skipped = [f"{_label(entries[position], position, 'questions')}: {reason}"
               for position, reason in problems.items() if position < len(entries)]
    skipped_ids = {entry.get("question_id") for position, entry in enumerate(entries)
                   if position in problems and isinstance(entry, dict) and isinstance(entry.get("question_id"), int)}

    annotations_path = layout.find_json(data_dir, split, layout.annotations_filename(split))
    source = SplitSource(split, questions_path, annotations_path, questions, [None] * len(questions))
    if annotations_path is None:
        source.notes.append(f"{split}: no annotation file, so questions only (like test-dev)")
    else:
        _join(source, read_json(annotations_path, "annotations file", layout.OFFICIAL_JSON_MAX_BYTES), skipped, skipped_ids, limit)
    source.skipped = skipped
    source.skipped_questions = sum(1 for item in skipped if not item.startswith("annotations["))
    if skipped:
        source.notes.append(f"{split}: {len(skipped)} bad questions/annotations skipped ("
                            + "; ".join(skipped[:SHOWN_IDS]) + ("; ..." if len(skipped) > SHOWN_IDS else "")
                            + "); they are left out of every file of the split")
    return source


def _join(source: SplitSource, data: object, skipped: list[str], skipped_ids: set, limit: int | None) -> None:
    """Join ``source.questions`` with the annotations in ``data``, skipping (into ``skipped``) bad ones."""
    path = source.annotations_file
    entries = _entries(data, path, "annotations", "annotations")
    problems = {position: reason for position, entry in enumerate(entries)
                if (reason := annotation_problem(entry)) is not None}
    _all_bad(entries, problems, path, "annotations")
    # Entries without a usable question_id cannot be matched; their question has none then.
    unmatched = {position: reason for position, reason in problems.items()
                 if not isinstance(entries[position], dict) or _id_problem(entries[position], "question_id")}
    identified = [entry for position, entry in enumerate(entries) if position not in unmatched]
    _duplicates(identified, path)
    by_id = {entry["question_id"]: entry for entry in identified}
    bad = {entries[position]["question_id"]: reason for position, reason in problems.items()
           if position not in unmatched}
    kept, joined, unannotated = [], [], []
    for question in source.questions:
        question_id = question["question_id"]
        if question_id in bad:
            skipped.append(f"question {question_id}: {bad[question_id]}")
        elif question_id not in by_id:
            unannotated.append(question)
        else:
            kept.append(question)
            joined.append(by_id[question_id])
    lost = [(position, reason) for position, reason in unmatched.items()
            if not (isinstance(entries[position], dict) and entries[position].get("question_id") in skipped_ids)]
    if unannotated and len(unannotated) > len(lost):
        ids = [q["question_id"] for q in unannotated]
        raise VQAError(
            f"{path} has no annotation for {len(ids)} questions of {source.questions_file.name} "
            f"({name_ids(ids)}); the two files do not belong together."
        )
    for position, reason in lost:
        skipped.append(f"annotations[{position}]: {reason}")
    for question in unannotated:  # their annotation is presumably one of those just named
        skipped.append(f"question {question['question_id']}: no usable annotation")
    if not limit:
        asked = {q["question_id"] for q in source.questions} | skipped_ids
        orphans = [qid for qid in by_id if qid not in asked]
        if orphans:
            source.notes.append(
                f"{source.split}: {len(orphans)} annotations have no question and were ignored ({name_ids(orphans)})"
            )
    source.questions, source.annotations = kept, joined


def kept_annotations(path: Path, question_ids, split: str, out_dir: Path) -> tuple[list[dict], int]:
    """The annotations of the questions preprocessing kept, in the file's order, checked as preprocessing did.

    Args:
        path: the annotations file preprocessing read.
        question_ids: the questions preprocessing kept.
        split, out_dir: for the advice.

    Returns:
        The annotations and how many the file holds in all.

    Raises:
        VQAError: naming ``path``, when it was edited after preprocessing: a kept question's annotation is
            gone, repeated or now malformed.
    """
    again = (f"the file was edited after preprocessing: put the original back, or preprocess {split} again "
             f"(`vqa preprocess --splits {split} --out {out_dir}`)")
    data = read_json(path, "annotations file", layout.OFFICIAL_JSON_MAX_BYTES)
    entries = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise VQAError(f"{path} has no 'annotations' list any more; {again}.")
    wanted = {int(question_id) for question_id in question_ids}
    found: dict[int, dict] = {}
    for entry in entries:
        question_id = entry.get("question_id") if isinstance(entry, dict) else None
        if isinstance(question_id, int) and not isinstance(question_id, bool) and question_id in wanted:
            if question_id in found:
                raise VQAError(f"{path} annotates question {question_id} more than once; {again}.")
            found[question_id] = entry
    missing = [int(question_id) for question_id in question_ids if int(question_id) not in found]
    if missing:
        raise VQAError(f"{path} has no annotation for {len(missing)} questions preprocessing kept "
                       f"({name_ids(missing)}); {again}.")
    for question_id, entry in found.items():
        problem = annotation_problem(entry)
        if problem:
            raise VQAError(f"{path}: the annotation of question {question_id}, which preprocessing kept, is now "
                           f"malformed ({problem}); {again}.")
    chosen = {id(entry) for entry in found.values()}
    return [entry for entry in entries if id(entry) in chosen], len(entries)
