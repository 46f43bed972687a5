"""Answer questions about any image with a trained run.

Reads a run directory (``vqa train --out RUN``, ``vqa.run_folder``): its model and run
description, answer and question vocabularies, tokenizer and image backbone
(``vqa.backbone.folder_backbone``). The image goes through the run's own backbone with
exactly the preprocessing used when its training features were extracted
(``vqa.images.load_image`` then ``Backbone.features`` or ``Backbone.grids``), turned into
the model's inputs by the run's visual source (``vqa.visual.Source.photo_inputs``: fc7
rows, a grid, its cell means, or its cells read as regions), and the question through the
same tokenizer and vocabulary. This project runs no object detector, so a run on detector
regions reads the photo's boxes from a region file the user passes (``--regions``,
``vqa.photo_regions``).

Attention runs also give their attention maps (``vqa.attention.attention_model``): in the JSON
output, and drawn over the image as PNG files with ``--attention``: heatmaps over a grid
(``vqa.heatmap``), boxes over detector regions (``vqa.box_drawing``).

Speed: the model and the backbone are loaded once per ``Predictor``; questions are
scored in batches of a fixed size (the last one padded) so Keras traces its predict
function at most twice, and an image asked about several times is read and run through
the backbone once per batch. Mistakes the user can make (a missing or unreadable image,
an empty question, a folder that is not a run) are found before any model is loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vqa import visual
from vqa.attention_pictures import attention_paths, check_attention, draw_attention
from vqa.errors import VQAError
from vqa.names import QUESTION_IDS
from vqa.photo_regions import PhotoRegions, model_inputs, photo_size, reads_detector_regions, regions_for_questions
from vqa.questions import Question, check_questions, read_questions_file, unreadable
from vqa.run_folder import NO_IMAGE, check_run_dir, load_run_model
from vqa.storage import json_text

QUESTION_BATCH = 64  # questions per model call
IMAGE_BATCH = 16  # images per backbone call: 16 x 224 x 224 x 3 floats stay small
TOP_BOXES = 10  # boxes per map in the JSON of a run on detector regions


@dataclass
class Answer:
    """One question's top answers and what the user should know about the input."""

    question: str
    image: str | None
    answers: list[tuple[str, float]]
    notes: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None  # float32 (G, H, W) over a grid, (G, K) over boxes, when asked for
    boxes: np.ndarray | None = None  # float32 (K, 4) x1, y1, x2, y2 in the photo's pixels, over detector regions
    region_id: int | None = None  # the image of the region file whose boxes were read

    def to_json(self) -> dict:
        """Strict JSON; ``"attention"`` when present: over a grid, G lists of H lists of W weights (each map
        summing to 1); over detector boxes, per map its ``TOP_BOXES`` strongest boxes, strongest first, as
        ``{"index": k, "box": [x1, y1, x2, y2] (the photo's pixels), "weight": w}``, beside ``"region_id"``."""
        data = {"image": self.image, "question": self.question,
                "answers": [{"answer": a, "score": round(float(p), 4)} for a, p in self.answers],
                "notes": self.notes}
        if self.region_id is not None:
            data["region_id"] = int(self.region_id)
        if self.attention is not None and self.boxes is not None:
            data["attention"] = [[{"index": int(k), "box": [round(float(v), 1) for v in self.boxes[k]],
                                   "weight": round(float(weights[k]), 4)}
                                  for k in np.argsort(-weights, kind="stable")[:TOP_BOXES]]
                                 for weights in np.asarray(self.attention, np.float64)]
        elif self.attention is not None:
            data["attention"] = [[[float(f"{weight:.6g}") for weight in row] for row in weights]
                                 for weights in np.asarray(self.attention, np.float64)]
        return data


def photo_source(run_dir: Path, run, with_regions: bool = False) -> visual.Source | None:
    """The visual source a run reads, when a photo can be turned into it; None for a blind run.

    Args:
        run_dir, run: the run and its ``vqa.run_folder.RunInfo``.
        with_regions: the photo's detector regions come from a region file (``vqa.photo_regions``).

    Raises:
        VQAError: the source is unknown to this vqa, or needs detector regions and none are given.
    """
    if run.features == NO_IMAGE or run.model == "question-only":
        return None
    if run.features not in visual.SOURCES:
        raise VQAError(f"{run_dir} reads {run.features} image features, which this vqa does not know; "
                       "predict with the vqa that trained it.")
    source = visual.SOURCES[run.features]
    if source.photo_inputs is None and not with_regions:
        raise VQAError(f"{run_dir} reads {source.what}, which come from an object detector this project does not "
                       "run, so pass the photo's regions with --regions FILE (a bottom-up-attention TSV, HDF5 or "
                       ".npz file), or train on a grid read as regions (--set data.features=grid-regions).")
    return source


def check_grid_backbone(run_dir: Path, run, spec) -> None:
    """Refuse a run on a grid whose backbone cannot make, for a new image, the grid it was trained on.

    Args:
        run_dir: the run.
        run: its ``vqa.run_folder.RunInfo``.
        spec: its ``vqa.backbone.BackboneSpec``.

    Raises:
        VQAError: the backbone has no grid output (the grids were imported, or made by another
            backbone), or one of another shape than the model reads.
    """
    shape = tuple(spec.grid_shape) if spec.grid_layer and spec.grid_shape else None
    if shape is None:
        raise VQAError(f"{run_dir} reads {run.features} image features, but its image backbone ({spec.kind} "
                       f"{spec.weights}) has no grid output (its grids were imported or made elsewhere), so predict "
                       "cannot make the grid of a new image; score it on a preprocessed split with `vqa evaluate`.")
    whole = run.grid_shape is not None
    wanted = tuple(run.grid_shape) if whole else (run.feature_dim,)
    if (shape if whole else shape[2:]) != wanted:
        raise VQAError(f"the image backbone of {run_dir} gives {shape} grids but the model reads "
                       f"{'grids of ' if whole else ''}{wanted}{'' if whole else ' channels'}; the run folder is "
                       "inconsistent: train it again.")


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
        self.features = self.run.features  # a vqa.visual source name, or "none"
        self.nlp = text_lib.read_tokenizer(self.run_dir, self.run.lang)  # the one preprocessing saved
        self.model = load_run_model(self.run_dir)
        from vqa.attention import attention_layers

        self.uses_image = visual.kind_of_model({tensor.name: tensor for tensor in self.model.inputs}) is not None
        self.source = photo_source(self.run_dir, self.run, with_regions=True) if self.uses_image else None
        # A run on a region file reads the photo's regions from the user's file (vqa.photo_regions), not a backbone.
        self.reads_regions = bool(self.uses_image and reads_detector_regions(self.run.features))
        self.has_attention = bool(self.uses_image and attention_layers(self.model)
                                  and (self.source.from_grid or self.reads_regions))
        self.feature_dim = int(self.run.feature_dim)
        self._backbone = None
        self._maps_model = None

    @property
    def backbone(self):
        """The run's image backbone, built on first use (not needed by a question-only run)."""
        if self._backbone is None:
            from vqa import backbone as backbone_lib

            backbone = backbone_lib.folder_backbone(self.run_dir)
            if self.source.from_grid:
                check_grid_backbone(self.run_dir, self.run, backbone.spec)
            elif self.feature_dim and backbone.feature_dim != self.feature_dim:
                raise VQAError(f"the image backbone of {self.run_dir} gives {backbone.feature_dim}-d features but the "
                               f"model reads {self.feature_dim}-d ones; the run folder is inconsistent: "
                               "train it again.")
            self._backbone = backbone
        return self._backbone

    @property
    def maps_model(self):
        """The attention sub-model (``vqa.attention.attention_model``), built on first use."""
        if self._maps_model is None:
            from vqa.attention import attention_model

            self._maps_model = attention_model(self.model)
        return self._maps_model

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
        """What the backbone gives for each image file, loaded as during preprocessing: float32 fc7
        features (n, D), or grids (n, H, W, C) for a run whose input comes from the grid.

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
                    raise VQAError(unreadable(source_of[path], path, error.reason)) from None
            for path, row in zip(batch, self.image_rows(np.stack(pixels))):
                rows[path] = row
        if not images:
            return self.image_rows(np.zeros((0, *backbone.image_size, 3), np.uint8))
        return np.stack([rows[Path(image)] for image in images]).astype(np.float32, copy=False)

    def image_rows(self, pixels: np.ndarray) -> np.ndarray:
        """What the backbone gives for each image, from one pass over uint8 ``pixels`` (n, H, W, 3): fc7
        rows (n, D), or grids (n, H', W', C) for a run whose input comes from the grid; the run's
        source turns them into the model's inputs (``scores``)."""
        backbone = self.backbone
        if not self.source.from_grid:
            return backbone.features(pixels)
        return np.asarray(backbone.grids(pixels), np.float32)  # (n, H, W, C)

    def scores(self, question_ids: np.ndarray, image_features: np.ndarray | None) -> np.ndarray:
        """Answer scores float32 (n, K): sigmoid soft scores or softmax probabilities, as the run was trained.

        Batches have one fixed size (the last one zero-padded), so Keras does not retrace for every
        new batch length.
        """
        return self._batched(self.model, question_ids, image_features, (len(self.answers),))

    def attention_maps(self, question_ids: np.ndarray, grids: np.ndarray | dict) -> np.ndarray:
        """An attention run's maps float32 (n, G, H, W), or (n, G, K) over detector boxes (padded ones
        weigh 0), each summing to 1, batched as ``scores``."""
        if not self.has_attention:
            raise VQAError(f"{self.run_dir} is a {self.run.model} run, which has no attention maps; train an "
                           "attention model (model.name=san or multi-glimpse) on a grid or regions.")
        maps = self._batched(self.maps_model, question_ids, grids, tuple(self.maps_model.output.shape[1:]))
        if maps.ndim == 3 and self.source.from_grid:  # a grid read as regions: its cells in row-major order
            maps = maps.reshape(*maps.shape[:2], *self.run.grid_shape[:2])
        return maps

    def _batched(self, model, question_ids: np.ndarray, image_inputs: np.ndarray | None,
                 row_shape: tuple[int, ...]) -> np.ndarray:
        count = len(question_ids)
        size = min(QUESTION_BATCH, max(count, 1))
        outputs = []
        for start in range(0, count, size):
            stop = min(start + size, count)
            inputs = {QUESTION_IDS: _pad_rows(question_ids[start:stop], size)}
            if isinstance(image_inputs, dict):  # the model inputs themselves: a region file's (vqa.photo_regions)
                inputs.update(visual.pad_inputs({name: rows[start:stop] for name, rows in image_inputs.items()}, size))
            elif self.uses_image:
                inputs.update(visual.pad_inputs(self.source.photo_inputs(image_inputs[start:stop]), size))
            outputs.append(np.asarray(model.predict_on_batch(inputs), np.float32)[: stop - start])
        return np.concatenate(outputs) if outputs else np.zeros((0, *row_shape), np.float32)

    def answer_all(self, questions: Sequence[Question], top_k: int = 5, with_attention: bool = False,
                   regions: Sequence[PhotoRegions] | None = None) -> Iterator[Answer]:
        """Top-k answers for each question, batched; yields them in order as each batch is done.

        With ``with_attention``, an attention run's answers carry their maps (``Answer.attention``,
        and over detector regions their boxes); other runs' answers have none. A run on detector
        regions reads each question's ``regions`` (``vqa.photo_regions.read_photo_regions``).
        """
        check_questions(questions, top_k)
        if self.uses_image:
            missing = next((item for item in questions if item.image is None), None)
            if missing is not None:
                what = ("--image is required" if missing.source == "--question"
                        else f'{missing.source} needs an "image"')
                raise VQAError(f"{what}: this run looks at the image (only question-only runs do not).")
            if self.reads_regions and (regions is None or len(regions) != len(questions)):
                photo_source(self.run_dir, self.run)  # the sentence asking for --regions
            if not self.reads_regions:
                _ = self.backbone  # a run without a backbone says so before any work is done
        top_k = min(top_k, len(self.answers))
        chunk = QUESTION_BATCH * 4
        for start in range(0, len(questions), chunk):
            batch = questions[start:start + chunk]
            ids, notes = self.encode([item.question for item in batch])
            features = found = None
            if self.reads_regions:
                found = regions[start:start + chunk]
                features = model_inputs(found, self.source.kind)
            elif self.uses_image:
                features = self.image_features([item.image for item in batch], [item.image_source for item in batch])
            scores = self.scores(ids, features)
            maps = self.attention_maps(ids, features) if with_attention and self.has_attention else None
            for row, item in enumerate(batch):
                answer = Answer(item.question, str(item.image) if item.image is not None else None,
                                self.top_answers(scores[row], top_k), notes[row],
                                maps[row] if maps is not None else None)
                if found is not None:
                    answer.region_id = found[row].image_id
                    if maps is not None:
                        answer.attention = maps[row][:, :len(found[row].boxes)]
                        answer.boxes = found[row].boxes_in(*photo_size(item.image))
                yield answer

    def top_answers(self, scores: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        """The ``top_k`` (answer, score) pairs of one question's scores (num_answers,), best first (ties: vocabulary order)."""
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(self.answers[i], float(scores[i])) for i in order]

    def answer(self, images: Sequence[str | Path | None], questions: Sequence[str], top_k: int = 5,
               with_attention: bool = False, regions: Sequence[PhotoRegions] | None = None) -> list[Answer]:
        """Top-k answers for each (image, question) pair, batched (with an attention run's maps, if asked)."""
        items = [Question(question, Path(image) if image is not None else None)
                 for image, question in zip(images, questions)]
        return list(self.answer_all(items, top_k, with_attention, regions))


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` with zero rows appended up to ``size``."""
    if len(rows) == size:
        return rows
    padding = np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)
    return np.concatenate([rows, padding])


def predict_cli(run_dir: Path, image: Path | None = None, question: str | None = None, top_k: int = 5,
                as_json: bool = False, questions_file: Path | None = None, attention: Path | None = None,
                regions: Path | None = None, region_id: int | None = None,
                log: Callable[[str], None] = print) -> int:
    """``vqa predict``: print the top-k answers for one question or a file of them.

    Prints one block per question (or one JSON object per line with ``as_json``, with the
    attention maps of an attention run); notes about unknown words or truncation, and where
    the pictures went, go to ``log``. With ``attention`` (an attention run only), each
    question's maps are drawn over its image into ``attention_paths``. A run on detector
    regions reads each photo's boxes from ``regions`` (``vqa.photo_regions``), the image
    ``region_id`` of it when given.
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
    pictures = attention_paths(attention, len(questions), questions_file is not None) if attention else None
    run = check_run_dir(run_dir)
    if pictures is not None:
        check_attention(Path(run_dir), run, questions, pictures, questions_file)
    found = None  # a run on detector regions: each question's regions, read before the model loads
    if regions is not None or region_id is not None:
        found = regions_for_questions(Path(run_dir), run, questions, regions, region_id)
    asks_about_images = any(item.image is not None for item in questions)
    if asks_about_images and run.model != "question-only" and found is None:
        from vqa import backbone as backbone_lib

        source = photo_source(Path(run_dir), run)  # detector regions are said before the model is loaded
        spec = backbone_lib.check_backbone(run_dir)  # so is a missing or .mat backbone
        if source is not None and source.from_grid:
            check_grid_backbone(Path(run_dir), run, spec)
    predictor = Predictor(run_dir)
    names = None
    for number, result in enumerate(predictor.answer_all(questions, top_k=top_k, regions=found,
                                                         with_attention=as_json or pictures is not None)):
        if pictures is not None:
            if names is None:
                from vqa.heatmap import map_names

                names = map_names(run.model, len(result.attention))
            draw_attention(pictures[number], result, questions[number], names)
            log(f"attention maps: {pictures[number]}")
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
