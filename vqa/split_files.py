"""The files of one preprocessed split, ``OUT/<split>/``: question arrays and text columns.

``questions.h5`` holds, per question in the order of the official questions file:
``question_ids`` int64 (N,), ``image_ids`` int64 (N,), ``token_ids`` int32 (N, L)
post-padded with 0, ``image_index`` int32 (N,) (row of the split's image features, -1
for a missing or unreadable image), ``answer_index`` int32 (N,) (class of the
multiple-choice answer, -1 outside the vocabulary), and ``score_indices`` int32 (N, 10)
/ ``score_values`` float32 (N, 10): the official VQA accuracy of each vocabulary answer
the humans gave (-1 / 0 padded). Attributes: ``split``, ``has_annotations``.

The six text files (the blog post's pipeline) hold one line per question in the same
order: questions.txt, question_ids.txt, image_ids.txt, answers.txt (the multiple-choice
answer), answer_types.txt, question_types.txt (empty lines without annotations).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqa.errors import VQAError
from vqa.storage import atomic_path, open_h5, read_lines, write_lines

QUESTIONS_FILE = "questions.h5"
MAX_ANSWERS = 10  # human answers per question in VQA v2
TEXT_FILES = {"questions": "questions.txt", "question_ids": "question_ids.txt", "image_ids": "image_ids.txt",
              "answers": "answers.txt", "answer_types": "answer_types.txt", "question_types": "question_types.txt"}

# The most bytes one of the text files can hold: train2014's 443,757 questions make questions.txt
# about 15 MB and the longest of the six under 50 MB; 1 GB is room for any real split.
SPLIT_TEXT_MAX_BYTES = 1 << 30

_ARRAYS = {"question_ids": np.int64, "image_ids": np.int64, "token_ids": np.int32, "image_index": np.int32,
           "answer_index": np.int32, "score_indices": np.int32, "score_values": np.float32}
_COMPRESSED = ("token_ids", "score_indices", "score_values")


@dataclass(frozen=True)
class QuestionArrays:
    """Everything training and evaluation read about a split's questions (shapes above)."""

    split: str
    question_ids: np.ndarray
    image_ids: np.ndarray
    token_ids: np.ndarray
    image_index: np.ndarray
    answer_index: np.ndarray
    score_indices: np.ndarray
    score_values: np.ndarray
    has_annotations: bool = True

    def __post_init__(self):
        count = len(self.question_ids)
        for name in _ARRAYS:
            array = getattr(self, name)
            if len(array) != count:
                raise ValueError(f"{name} has {len(array)} rows, question_ids {count}")
        if self.token_ids.ndim != 2 or self.score_indices.shape != self.score_values.shape:
            raise ValueError("token_ids must be (N, L) and score_indices/score_values alike (N, S)")

    @property
    def num_questions(self) -> int:
        return len(self.question_ids)


def questions_path(split_dir: str | os.PathLike) -> Path:
    return Path(split_dir) / QUESTIONS_FILE


def write_questions(split_dir: str | os.PathLike, arrays: QuestionArrays) -> None:
    """Write ``<split_dir>/questions.h5`` atomically (gzip level 1 on the large arrays)."""
    with atomic_path(questions_path(split_dir)) as tmp:
        with open_h5(tmp, "w") as f:
            for name, dtype in _ARRAYS.items():
                options = {"compression": "gzip", "compression_opts": 1} if name in _COMPRESSED else {}
                f.create_dataset(name, data=np.asarray(getattr(arrays, name), dtype), **options)
            f.attrs["has_annotations"] = bool(arrays.has_annotations)
            f.attrs["split"] = arrays.split


def read_questions(split_dir: str | os.PathLike) -> QuestionArrays:
    """Read ``<split_dir>/questions.h5`` into memory.

    Raises:
        VQAError: the file is missing, truncated, or lacks an array.
    """
    import h5py

    path = questions_path(split_dir)
    if not path.is_file():
        raise VQAError(f"{path} is missing, so {path.parent.parent} is incompletely preprocessed: "
                       "run `vqa preprocess` again.")
    try:
        with h5py.File(path, "r") as f:
            arrays = {name: np.asarray(f[name][()], dtype) for name, dtype in _ARRAYS.items()}
            has_annotations = bool(f.attrs.get("has_annotations", True))
            split = str(f.attrs.get("split", path.parent.name))
        return QuestionArrays(split=split, has_annotations=has_annotations, **arrays)
    except (OSError, KeyError, ValueError, TypeError) as error:
        brief = " ".join(str(error).split())[:120]
        raise VQAError(f"{path} is not a readable question file ({brief}); "
                       "run `vqa preprocess` again to rewrite it.") from None


@dataclass(frozen=True)
class TextColumns:
    """The six text files of a split, one string per question each."""

    questions: list[str]
    question_ids: list[str]
    image_ids: list[str]
    answers: list[str]
    answer_types: list[str]
    question_types: list[str]


def write_text_columns(split_dir: str | os.PathLike, columns: TextColumns) -> None:
    """Write the six text files atomically; tabs and newlines inside a value become spaces."""
    for name, filename in TEXT_FILES.items():
        values = (str(value).replace("\t", " ") for value in getattr(columns, name))
        write_lines(Path(split_dir) / filename, values)


def read_text_columns(split_dir: str | os.PathLike) -> TextColumns:
    """Read the six text files; a missing one reads as empty strings.

    Raises:
        VQAError: questions.txt is missing or the files disagree in length.
    """
    split_dir = Path(split_dir)
    first = split_dir / TEXT_FILES["questions"]
    if not first.exists():
        raise VQAError(f"{first} is missing: run `vqa preprocess` again.")
    values = {}
    for name, filename in TEXT_FILES.items():
        path = split_dir / filename
        values[name] = _read_text(path) if path.exists() else None  # a FIFO is refused, not taken for absent
    count = len(values["questions"])
    for name, column in values.items():
        if column is None:
            values[name] = [""] * count
        elif len(column) != count:
            raise VQAError(f"{split_dir / TEXT_FILES[name]} has {len(column)} lines but {first} has {count}; "
                           "run `vqa preprocess` again.")
    return TextColumns(**values)


def read_answer_types(split_dir: str | os.PathLike, count: int) -> list[str] | None:
    """Each question's answer type ("yes/no", "number", "other"), or None when the file is absent or
    does not have ``count`` lines (per-type scores are then skipped, training is not stopped)."""
    path = Path(split_dir) / TEXT_FILES["answer_types"]
    if not path.is_file():
        return None
    types = _read_text(path)
    return types if len(types) == count else None


def _read_text(path: Path) -> list[str]:
    try:
        return read_lines(path, SPLIT_TEXT_MAX_BYTES, "split text file")
    except UnicodeDecodeError:
        raise VQAError(f"{path} is not UTF-8 text: run `vqa preprocess` again.") from None
