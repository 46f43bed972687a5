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
    """One split's questions joined with their annotations, in question-file order."""

    split: str
    questions_file: Path
    annotations_file: Path | None
    questions: list[dict]
    annotations: list[dict | None]
    notes: list[str] = field(default_factory=list)

    @property
    def has_annotations(self) -> bool:
        return self.annotations_file is not None


QUESTION_FIELDS = {"image_id": int, "question": str, "question_id": int}
ANNOTATION_FIELDS = {"question_id": int, "answers": list, "multiple_choice_answer": str}


def _check_entries(entries: object, fields: dict[str, type], path: Path, what: str) -> list[dict]:
    """Check that ``entries`` is a list of dicts whose ``fields`` have the official types."""
    if not isinstance(entries, list):
        raise VQAError(f"{path}: '{what}' must be a list; is this an official VQA v2 file?")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(key not in entry for key in fields):
            missing = [key for key in fields if not isinstance(entry, dict) or key not in entry]
            raise VQAError(f"{path}: {what}[{position}] lacks {', '.join(missing)}; is this an official VQA v2 file?")
        for key, kind in fields.items():
            value = entry[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise VQAError(f"{path}: {what}[{position}] has {key} {value!r}, not {_KIND_NAMES[kind]}; "
                               "is this an official VQA v2 file?")
    return entries


_KIND_NAMES = {int: "an integer", str: "a string", list: "a list"}


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

    Args:
        data_dir: folder holding the official JSON files.
        split: e.g. "train2014", "val2014", "test-dev2015".
        limit: keep only the first ``limit`` questions.

    Returns:
        The split's questions with their annotation (None where the split has none).
    """
    questions_path = layout.find_json(data_dir, split, layout.questions_filename(split))
    if questions_path is None:
        raise VQAError(
            f"{data_dir / layout.questions_filename(split)} does not exist: put the official VQA v2 question file for "
            f"{split} there (make download fetches it), or pass --data-dir."
        )
    data = read_json(questions_path, "questions file")
    if not isinstance(data, dict) or "questions" not in data:
        raise VQAError(f"{questions_path} has no 'questions' list; is it an official VQA v2 questions file?")
    questions = _check_entries(data["questions"], QUESTION_FIELDS, questions_path, "questions")
    _duplicates(questions, questions_path)
    if limit:
        questions = questions[:limit]

    annotations_path = layout.find_json(data_dir, split, layout.annotations_filename(split))
    source = SplitSource(split, questions_path, annotations_path, questions, [None] * len(questions))
    if annotations_path is None:
        source.notes.append(f"{split}: no annotation file, so questions only (like test-dev)")
        return source
    data = read_json(annotations_path, "annotations file")
    if not isinstance(data, dict) or "annotations" not in data:
        raise VQAError(f"{annotations_path} has no 'annotations' list; is it an official VQA v2 annotations file?")
    entries = _check_entries(data["annotations"], ANNOTATION_FIELDS, annotations_path, "annotations")
    _duplicates(entries, annotations_path)
    by_id = {entry["question_id"]: entry for entry in entries}
    joined = [by_id.get(q["question_id"]) for q in questions]
    unannotated = [q["question_id"] for q, a in zip(questions, joined) if a is None]
    if unannotated:
        raise VQAError(
            f"{annotations_path} has no annotation for {len(unannotated)} questions of {questions_path.name} "
            f"({name_ids(unannotated)}); the two files do not belong together."
        )
    if not limit:
        asked = {q["question_id"] for q in questions}
        orphans = [qid for qid in by_id if qid not in asked]
        if orphans:
            source.notes.append(
                f"{split}: {len(orphans)} annotations have no question and were ignored ({name_ids(orphans)})"
            )
    for annotation in joined:
        if not isinstance(annotation["answers"], list) or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in annotation["answers"]
        ):
            raise VQAError(
                f"{annotations_path}: question {annotation['question_id']} has malformed 'answers' "
                "(expected a list of {{answer, answer_confidence, answer_id}})."
            )
    source.annotations = joined
    return source
