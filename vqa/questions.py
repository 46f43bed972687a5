"""What the user asks ``vqa predict``: questions about image files, checked before any model loads.

A ``Question`` comes from ``--question``/``--image`` or from one line of a JSON-lines
``--questions-file`` (``read_questions_file``); ``check_questions`` makes the cheap checks
(an empty question, a missing or unreadable image, a bad ``--top-k``), so a mistake is said
in one sentence before TensorFlow starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vqa.bounded_read import read_text_capped
from vqa.errors import VQAError
from vqa.storage import NESTED_TOO_DEEPLY

# The most bytes a --questions-file can hold: each of its questions is answered one by one, so a file of
# half a million questions (about 50 MB) is already hours of work; a bigger file is the wrong file.
QUESTIONS_FILE_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class Question:
    """One question to answer.

    Attributes:
        question: the question text.
        image: the image file, or None (question-only runs need none).
        source: where it came from, for error messages ("--question", "q.jsonl line 3").
        region_id: the image whose detector regions to read from ``--regions`` (a file line's
            ``"region_id"``), or None.
    """

    question: str
    image: Path | None = None
    source: str = "--question"
    region_id: int | None = None

    @property
    def image_source(self) -> str:
        return "--image" if self.source == "--question" else self.source


def check_questions(questions: Sequence[Question], top_k: int) -> None:
    """Cheap checks of everything the user typed, before any model is loaded.

    Raises:
        VQAError: an empty question, a missing image, a file that is not an image, or a bad --top-k.
    """
    from vqa import images as images_lib

    if top_k < 1:
        raise VQAError(f"--top-k must be at least 1, not {top_k}.")
    checked: set[Path] = set()
    for item in questions:
        if not isinstance(item.question, str) or not item.question.strip():
            where = "--question is empty" if item.source == "--question" else f"{item.source} has an empty question"
            raise VQAError(f'{where}; ask a question about the image, e.g. "what color is the car?".')
        if item.image is None or item.image in checked:
            continue
        if not item.image.exists():
            raise VQAError(f"{item.image_source}: image {item.image} does not exist.")
        if item.image.is_dir():
            raise VQAError(f"{item.image_source}: {item.image} is a folder; pass an image file.")
        try:
            images_lib.check_image(item.image)  # reads the header only: cheap, catches text files and the like
        except images_lib.UnreadableImage as error:
            raise VQAError(unreadable(item.image_source, item.image, error.reason)) from None
        checked.add(item.image)


def unreadable(source: str, image: Path, reason: str) -> str:
    """The sentence for an image file that cannot be decoded."""
    return f"{source}: image {image} cannot be read ({reason}); pass a JPEG or PNG file."


def read_questions_file(path: Path) -> list[Question]:
    """Questions from JSON lines ``{"image": "photo.jpg", "question": "what is this?"}``.

    A relative image path is read relative to the questions file's folder, or to the
    current folder when it is not there. A line may add ``"region_id": N``, the image of
    ``--regions`` that its photo is (runs on detector regions).
    """
    path = Path(path)
    if not path.exists():
        raise VQAError(f"--questions-file {path} does not exist.")
    if path.is_dir():
        raise VQAError(f"--questions-file {path} is a folder; pass a JSON lines file.")
    try:
        lines = read_text_capped(path, QUESTIONS_FILE_MAX_BYTES, "--questions-file").splitlines()
    except UnicodeDecodeError:
        raise VQAError(f"--questions-file {path} is not UTF-8 text; write it as JSON lines.") from None
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise VQAError(f"{source} is not JSON ({error.msg}); "
                           'each line must look like {"image": "photo.jpg", "question": "what is this?"}.') from None
        except RecursionError:
            raise VQAError(f"{source} is {NESTED_TOO_DEEPLY}; "
                           'each line must look like {"image": "photo.jpg", "question": "what is this?"}.') from None
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str):
            raise VQAError(f'{source} needs a "question" string (and an "image" path).')
        image = entry.get("image")
        if image is not None and not isinstance(image, str):
            raise VQAError(f'{source} has an "image" that is not a path string.')
        region_id = entry.get("region_id")
        if region_id is not None and (not isinstance(region_id, int) or isinstance(region_id, bool) or region_id < 0):
            raise VQAError(f'{source} has a "region_id" that is not an image id (a whole number, 0 or more).')
        image_path = None
        if image is not None:
            image_path = Path(image)
            if not image_path.is_absolute() and (path.parent / image_path).exists():
                image_path = path.parent / image_path
        questions.append(Question(entry["question"], image_path, source, region_id))
    if not questions:
        raise VQAError(f"--questions-file {path} holds no questions.")
    return questions
