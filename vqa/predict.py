"""Answer questions about any image with a trained run.

Reads a run directory (``vqa train --out RUN``): model.keras, run.json, answers.json,
vocab.json and backbone.json (+ backbone.keras for a stand-in backbone). The image
goes through the run's own backbone with exactly the preprocessing used when its
training features were extracted (``vqa.features.load_image`` then ``Backbone.features``),
and the question through the same tokenizer and vocabulary.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vqa.errors import VQAError
from vqa.storage import read_json

RUN_FORMAT_VERSION = 1


def check_run_dir(run_dir: str | Path) -> dict:
    """Read RUN/run.json, saying in one sentence what is wrong when ``run_dir`` is not a usable run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VQAError(f"--run {run_dir} does not exist; pass a run folder made by `vqa train --out`.")
    if not (run_dir / "run.json").exists():
        raise VQAError(f"--run {run_dir} is not a run folder (no run.json); pass a folder made by `vqa train --out`.")
    run = read_json(run_dir / "run.json", "run description")
    if run.get("format_version") != RUN_FORMAT_VERSION:
        raise VQAError(
            f"{run_dir} was trained by another version of vqa (run format {run.get('format_version')}, "
            f"this one reads {RUN_FORMAT_VERSION}); train it again."
        )
    for name in ("model.keras", "answers.json", "vocab.json"):
        if not (run_dir / name).exists():
            raise VQAError(f"{run_dir / name} is missing: the run has not finished an epoch yet, or was copied partly.")
    return run


def load_run_model(run_dir: Path):
    """The run's best model, loaded in Keras safe mode (no arbitrary code)."""
    import keras

    import vqa.model  # noqa: F401  registers the project's custom layers

    return keras.saving.load_model(run_dir / "model.keras", safe_mode=True, compile=False)


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


class Predictor:
    """A loaded run: model, vocabularies, tokenizer and image backbone, ready for many questions."""

    def __init__(self, run_dir: str | Path):
        from vqa import answers as answers_lib
        from vqa import text as text_lib

        self.run_dir = Path(run_dir)
        self.run = check_run_dir(self.run_dir)
        self.model = load_run_model(self.run_dir)
        self.answers = answers_lib.read_answers(self.run_dir / "answers.json")
        words = text_lib.read_vocabulary(self.run_dir / "vocab.json")
        self.word_index = {word: i for i, word in enumerate(words)}
        self.max_length = int(self.run["max_question_length"])
        self.nlp = text_lib.tokenizer(self.run.get("lang", "en"))
        self.uses_image = "image_features" in [tensor.name for tensor in self.model.inputs]
        self.feature_dim = int(self.run.get("feature_dim", 0))
        self._backbone = None

    @property
    def backbone(self):
        """The run's image backbone, built on first use (not needed by a question-only run)."""
        if self._backbone is None:
            from vqa import features as features_lib

            spec_path = self.run_dir / "backbone.json"
            spec = read_json(spec_path, "backbone description") if spec_path.exists() else None
            if spec is None or spec.get("kind") == "mat":
                raise VQAError(
                    f"{self.run_dir} was trained on imported .mat features, so it has no image backbone to run on a "
                    "new image; extract features for your image with the same VGG-16 model that made the .mat file "
                    "(or preprocess with --weights imagenet and train a new run)."
                )
            keras_path = self.run_dir / "backbone.keras"
            self._backbone = features_lib.Backbone.from_spec(
                features_lib.BackboneSpec.from_dict(spec), keras_path if keras_path.exists() else None
            )
        return self._backbone

    def encode(self, questions: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        """Token ids int32 (n, max_length) and, per question, notes about unknown words or truncation."""
        from vqa import text as text_lib

        tokens = text_lib.tokenize(self.nlp, list(questions))
        ids, _ = text_lib.token_ids(tokens, self.word_index, self.max_length)
        notes: list[list[str]] = []
        for question_tokens in tokens:
            question_notes = []
            unknown = [t for t in question_tokens[: self.max_length] if t not in self.word_index]
            if len(question_tokens) > self.max_length:
                question_notes.append(
                    f"the question has {len(question_tokens)} tokens; only the first {self.max_length} were read"
                )
            if unknown and len(unknown) == len(question_tokens[: self.max_length]):
                question_notes.append("none of the question's words are in the run's vocabulary; "
                                      "the answer rests on the image alone")
            elif unknown:
                question_notes.append(f"words not in the run's vocabulary: {', '.join(unknown[:10])}")
            notes.append(question_notes)
        return ids, notes

    def image_features(self, images: Sequence[str | Path]) -> np.ndarray:
        """Backbone features float32 (n, D) for image files, loaded as during preprocessing."""
        from vqa import features as features_lib

        backbone = self.backbone
        batch = []
        for image in images:
            path = Path(image)
            if not path.exists():
                raise VQAError(f"--image {path} does not exist.")
            if path.is_dir():
                raise VQAError(f"--image {path} is a folder; pass an image file.")
            try:
                batch.append(features_lib.load_image(path, backbone.image_size))
            except features_lib.UnreadableImage as error:
                raise VQAError(f"--image {path} cannot be read as an image ({error}); pass a JPEG or PNG file.") from None
        return backbone.features(np.stack(batch)).astype(np.float32)

    def scores(self, question_ids: np.ndarray, image_features: np.ndarray | None) -> np.ndarray:
        """Answer scores (n, K): sigmoid soft scores or softmax probabilities, as the run was trained."""
        inputs = {"question_ids": question_ids}
        if self.uses_image:
            inputs["image_features"] = image_features
        return np.asarray(self.model.predict_on_batch(inputs), dtype=np.float32)

    def answer(self, images: Sequence[str | Path | None], questions: Sequence[str], top_k: int = 5) -> list[Answer]:
        """Top-k answers for each (image, question) pair, batched."""
        for question in questions:
            if not isinstance(question, str) or not question.strip():
                raise VQAError("--question is empty; ask a question about the image, e.g. \"what color is the car?\"")
        if top_k < 1:
            raise VQAError(f"--top-k must be at least 1, not {top_k}.")
        ids, notes = self.encode(questions)
        features = None
        if self.uses_image:
            if any(image is None for image in images):
                raise VQAError("--image is required: this run looks at the image (only question-only runs do not).")
            features = self.image_features(images)
        scores = self.scores(ids, features)
        top_k = min(top_k, scores.shape[1])
        results = []
        for row, question in enumerate(questions):
            order = np.argsort(-scores[row], kind="stable")[:top_k]
            results.append(Answer(question, str(images[row]) if images[row] is not None else None,
                                  [(self.answers[i], float(scores[row, i])) for i in order], notes[row]))
        return results


def _read_questions_file(path: Path) -> tuple[list[str | None], list[str]]:
    if not path.exists():
        raise VQAError(f"--questions-file {path} does not exist.")
    images, questions = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise VQAError(f"{path} line {number} is not JSON ({error.msg}); "
                           'each line must look like {"image": "photo.jpg", "question": "what is this?"}.') from None
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str):
            raise VQAError(f'{path} line {number} needs a "question" string (and an "image" path).')
        image = entry.get("image")
        if image is not None and not Path(image).is_absolute():
            image = str(path.parent / image)
        images.append(image)
        questions.append(entry["question"])
    if not questions:
        raise VQAError(f"--questions-file {path} holds no questions.")
    return images, questions


def predict_cli(run_dir: Path, image: Path | None = None, question: str | None = None, top_k: int = 5,
                as_json: bool = False, questions_file: Path | None = None,
                log: Callable[[str], None] = print) -> int:
    """``vqa predict``: print the top-k answers for one question or a file of them."""
    if questions_file is not None:
        images, questions = _read_questions_file(questions_file)
    else:
        if question is None:
            raise VQAError("--question is required (or --questions-file for many).")
        if image is not None and not Path(image).exists():
            raise VQAError(f"--image {image} does not exist.")
        images, questions = [image], [question]
    predictor = Predictor(run_dir)
    results = predictor.answer(images, questions, top_k=top_k)
    for result in results:
        if as_json:
            print(json.dumps(result.to_json()))
            continue
        for note in result.notes:
            log(f"note: {note}")
        print(f"Q: {result.question}" + (f"  [{result.image}]" if result.image else ""))
        for rank, (answer, probability) in enumerate(result.answers, start=1):
            print(f"  {rank}. {answer:<20} {probability:.3f}")
    sys.stdout.flush()
    return 0
