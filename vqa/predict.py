"""Answer questions about any image with a trained run.

Reads a run directory (``vqa train --out RUN``, ``vqa.run_folder``): its model and run
description, answer and question vocabularies, tokenizer and image backbone
(``vqa.backbone.folder_backbone``). The image goes through the run's own backbone with
exactly the preprocessing used when its training features were extracted
(``vqa.images.load_image`` then ``Backbone.features``), and the question through the
same tokenizer and vocabulary.

Speed: the model and the backbone are loaded once per ``Predictor``; questions are
scored in batches of a fixed size (the last one padded) so Keras traces its predict
function at most twice, and an image asked about several times is read and run through
the backbone once per batch. Mistakes the user can make (a missing or unreadable image,
an empty question, a folder that is not a run) are found before any model is loaded.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vqa.errors import VQAError
from vqa.run_folder import check_run_dir, load_run_model
from vqa.storage import NESTED_TOO_DEEPLY, json_text

QUESTION_BATCH = 64  # questions per model call
IMAGE_BATCH = 16  # images per backbone call: 16 x 224 x 224 x 3 floats stay small


@dataclass(frozen=True)
class Question:
    """One question to answer.

    Attributes:
        question: the question text.
        image: the image file, or None (question-only runs need none).
        source: where it came from, for error messages ("--question", "q.jsonl line 3").
    """

    question: str
    image: Path | None = None
    source: str = "--question"

    @property
    def image_source(self) -> str:
        return "--image" if self.source == "--question" else self.source


@dataclass
class Answer:
    """One question's top answers and what the user should know about the input."""

    question: str
    image: str | None
    answers: list[tuple[str, float]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"image": self.image, "question": self.question,
                "answers": [{"answer": a, "score": round(float(p), 4)} for a, p in self.answers],
                "notes": self.notes}


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
            raise VQAError(_unreadable(item.image_source, item.image, error.reason)) from None
        checked.add(item.image)


def _unreadable(source: str, image: Path, reason: str) -> str:
    return f"{source}: image {image} cannot be read ({reason}); pass a JPEG or PNG file."


class Predictor:
    """A loaded run: model, vocabularies, tokenizer and image backbone, ready for many questions."""

    def __init__(self, run_dir: str | Path):
        from vqa import answers as answers_lib
        from vqa import text as text_lib

        self.run_dir = Path(run_dir)
        self.run = check_run_dir(self.run_dir)
        self.answers = answers_lib.read_answers(self.run_dir)
        words = text_lib.read_vocabulary(self.run_dir)
        self.word_index = {word: i for i, word in enumerate(words)}
        self.max_length = int(self.run.max_question_length)
        if self.run.features != "fc7":
            # Turning a new photo into a grid needs grid extraction, which preprocessing does not do yet.
            raise VQAError(f"{self.run_dir} reads {self.run.features} image features, which predict cannot yet "
                           "compute for a new image; score it on a preprocessed split with `vqa evaluate`.")
        self.nlp = text_lib.read_tokenizer(self.run_dir, self.run.lang)  # the one preprocessing saved
        self.model = load_run_model(self.run_dir)
        self.uses_image = "image_features" in [tensor.name for tensor in self.model.inputs]
        self.feature_dim = int(self.run.feature_dim)
        self._backbone = None

    @property
    def backbone(self):
        """The run's image backbone, built on first use (not needed by a question-only run)."""
        if self._backbone is None:
            from vqa import backbone as backbone_lib

            backbone = backbone_lib.folder_backbone(self.run_dir)
            if self.feature_dim and backbone.feature_dim != self.feature_dim:
                raise VQAError(f"the image backbone of {self.run_dir} gives {backbone.feature_dim}-d features but the "
                               f"model reads {self.feature_dim}-d ones; the run folder is inconsistent: "
                               "train it again.")
            self._backbone = backbone
        return self._backbone

    def encode(self, questions: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        """Token ids int32 (n, max_length) and, per question, notes about unknown words or truncation."""
        from vqa import text as text_lib

        tokens = text_lib.tokenize(self.nlp, list(questions))
        ids, _ = text_lib.token_ids(tokens, self.word_index, self.max_length)
        rests_on = "the image alone" if self.uses_image else "the answers' prior alone"
        notes: list[list[str]] = []
        for question_tokens in tokens:
            question_notes = []
            read = question_tokens[: self.max_length]
            if len(question_tokens) > self.max_length:
                question_notes.append(
                    f"the question has {len(question_tokens)} tokens; only the first {self.max_length} were read"
                )
            # Punctuation alone ("?") tells the model nothing, so it does not count as a known word.
            words = [token for token in read if any(character.isalnum() for character in token)]
            unknown = [token for token in read if token not in self.word_index]
            if not words or all(word not in self.word_index for word in words):
                question_notes.append(f"none of the question's words are in the run's vocabulary, so the answer "
                                      f"rests on {rests_on}")
            elif unknown:
                question_notes.append(f"words not in the run's vocabulary (read as unknown): {', '.join(unknown[:10])}")
            notes.append(question_notes)
        return ids, notes

    def image_features(self, images: Sequence[Path], sources: Sequence[str] | None = None) -> np.ndarray:
        """Backbone features float32 (n, D) for image files, loaded as during preprocessing.

        Each distinct file is decoded and run through the backbone once.
        """
        from vqa import images as images_lib

        backbone = self.backbone
        sources = sources or ["--image"] * len(images)
        distinct = list(dict.fromkeys(Path(image) for image in images))
        source_of = {Path(image): source for image, source in zip(images, sources)}
        rows: dict[Path, np.ndarray] = {}
        for start in range(0, len(distinct), IMAGE_BATCH):
            batch = distinct[start:start + IMAGE_BATCH]
            pixels = []
            for path in batch:
                try:
                    pixels.append(images_lib.load_image(path, backbone.image_size))
                except images_lib.UnreadableImage as error:
                    raise VQAError(_unreadable(source_of[path], path, error.reason)) from None
            for path, row in zip(batch, backbone.features(np.stack(pixels))):
                rows[path] = row
        if not images:
            return np.zeros((0, backbone.feature_dim), np.float32)
        return np.stack([rows[Path(image)] for image in images]).astype(np.float32, copy=False)

    def scores(self, question_ids: np.ndarray, image_features: np.ndarray | None) -> np.ndarray:
        """Answer scores float32 (n, K): sigmoid soft scores or softmax probabilities, as the run was trained.

        Batches have one fixed size (the last one zero-padded), so Keras does not retrace for every
        new batch length.
        """
        count = len(question_ids)
        size = min(QUESTION_BATCH, max(count, 1))
        outputs = []
        for start in range(0, count, size):
            stop = min(start + size, count)
            inputs = {"question_ids": _pad_rows(question_ids[start:stop], size)}
            if self.uses_image:
                inputs["image_features"] = _pad_rows(image_features[start:stop], size)
            outputs.append(np.asarray(self.model.predict_on_batch(inputs), np.float32)[: stop - start])
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.answers)), np.float32)

    def answer_all(self, questions: Sequence[Question], top_k: int = 5) -> Iterator[Answer]:
        """Top-k answers for each question, batched; yields them in order as each batch is done."""
        check_questions(questions, top_k)
        if self.uses_image:
            missing = next((item for item in questions if item.image is None), None)
            if missing is not None:
                what = ("--image is required" if missing.source == "--question"
                        else f'{missing.source} needs an "image"')
                raise VQAError(f"{what}: this run looks at the image (only question-only runs do not).")
            _ = self.backbone  # a run without a backbone says so before any work is done
        top_k = min(top_k, len(self.answers))
        chunk = QUESTION_BATCH * 4
        for start in range(0, len(questions), chunk):
            batch = questions[start:start + chunk]
            ids, notes = self.encode([item.question for item in batch])
            features = None
            if self.uses_image:
                features = self.image_features([item.image for item in batch], [item.image_source for item in batch])
            scores = self.scores(ids, features)
            for row, item in enumerate(batch):
                order = np.argsort(-scores[row], kind="stable")[:top_k]
                yield Answer(item.question, str(item.image) if item.image is not None else None,
                             [(self.answers[i], float(scores[row, i])) for i in order], notes[row])

    def answer(self, images: Sequence[str | Path | None], questions: Sequence[str], top_k: int = 5) -> list[Answer]:
        """Top-k answers for each (image, question) pair, batched."""
        items = [Question(question, Path(image) if image is not None else None)
                 for image, question in zip(images, questions)]
        return list(self.answer_all(items, top_k))


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` with zero rows appended up to ``size``."""
    if len(rows) == size:
        return rows
    padding = np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)
    return np.concatenate([rows, padding])


def read_questions_file(path: Path) -> list[Question]:
    """Questions from JSON lines ``{"image": "photo.jpg", "question": "what is this?"}``.

    A relative image path is read relative to the questions file's folder, or to the
    current folder when it is not there.
    """
    path = Path(path)
    if not path.is_file():
        raise VQAError(f"--questions-file {path} does not exist." if not path.exists()
                       else f"--questions-file {path} is a folder; pass a JSON lines file.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
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
        image_path = None
        if image is not None:
            image_path = Path(image)
            if not image_path.is_absolute() and (path.parent / image_path).exists():
                image_path = path.parent / image_path
        questions.append(Question(entry["question"], image_path, source))
    if not questions:
        raise VQAError(f"--questions-file {path} holds no questions.")
    return questions


def predict_cli(run_dir: Path, image: Path | None = None, question: str | None = None, top_k: int = 5,
                as_json: bool = False, questions_file: Path | None = None,
                log: Callable[[str], None] = print) -> int:
    """``vqa predict``: print the top-k answers for one question or a file of them.

    Prints one block per question (or one JSON object per line with ``as_json``); notes
    about unknown words or truncation go to ``log``.
    """
    if questions_file is not None:
        if question is not None or image is not None:
            raise VQAError("--questions-file replaces --image and --question; pass either the file or those two.")
        questions = read_questions_file(questions_file)
    else:
        if question is None:
            raise VQAError("--question is required (or --questions-file for many).")
        questions = [Question(question, Path(image) if image is not None else None)]
    check_questions(questions, top_k)
    run = check_run_dir(run_dir)
    asks_about_images = any(item.image is not None for item in questions)
    if asks_about_images and run.model != "question-only":
        from vqa import backbone as backbone_lib

        backbone_lib.check_backbone(run_dir)  # a missing or .mat backbone is said before the model is loaded
    predictor = Predictor(run_dir)
    for result in predictor.answer_all(questions, top_k=top_k):
        if as_json:
            print(json_text(result.to_json()))
            continue
        for note in result.notes:
            log(f"note: {note}")
        print(f"Q: {result.question}" + (f"  [{result.image}]" if result.image else ""))
        for rank, (answer, probability) in enumerate(result.answers, start=1):
            print(f"  {rank}. {answer:<20} {probability:.3f}")
    sys.stdout.flush()
    return 0
