"""A small synthetic VQA v2 dataset, so the whole pipeline runs offline in minutes.

Each image is a plain, lightly noisy grey background holding one to four large
shapes (circle, square, triangle) in five well-separated colours, one shape per
quadrant so that objects never touch. Questions ask about presence, counts, colours
and shapes, and two relational families (``vqa.demo.relations``) ask about one object
relative to another: the colour of the object just left of a shape, and which of two
shapes is bigger. They are chosen so that every question wording has a near-uniform
answer distribution, which means a model that ignores the image cannot do well
(the demo's point is the gap between the image model and a question-only one).

Writes, under ``out_dir``, exactly the official VQA v2 layout (names from ``vqa.layout``):
    the questions file      {info, task_type, data_type, license, data_subtype, questions}
    the annotations file    {info, license, data_subtype, annotations}
    <split>/ images         IMAGE_SIZE x IMAGE_SIZE RGB JPEGs
for the splits train2014 and val2014, and one file that is NOT part of the official
layout:
    demo_scenes.json   {split: {image_id: [{"shape", "color", "box": [x0, y0, x1, y1]}]}}
                       the scene labels ``vqa.demo.backbone`` pretrains its CNN on.

Human answers imitate the real release: ten per question, mostly the canonical
answer, sometimes written "Red", "red.", "two" or "a circle", sometimes a minority of
wrong answers, with varied ``answer_confidence``. As in the release, the ten answers
are only ever all the same string when that string is the canonical lower-case form,
because the official metric skips normalisation in exactly that case.
"""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vqa import layout
from vqa.demo.relations import BIGGER_TYPE, LEFT_OF_TYPE, relational_questions
from vqa.errors import VQAError
from vqa.progress import progress
from vqa.storage import atomic_path, read_json, write_json

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
# Far apart in hue so that a small CNN tells them apart after JPEG compression.
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 35),
    "purple": (150, 50, 185),
}
MAX_OBJECTS = 4  # one per quadrant
MAX_COUNT = 3  # "How many circles?" is answered 0..3: no scene holds four of one shape
SPLITS = ("train2014", "val2014")
SCENES_FILE = "demo_scenes.json"

_JPEG_QUALITY = 90
_SUPERSAMPLE = 2  # draw at twice the size and shrink, for anti-aliased edges
_CELL = IMAGE_SIZE // 2  # one object per quadrant keeps objects well separated
_NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_BALANCE_TOLERANCE = 2  # how far one answer may run ahead of the rarest, per wording
# Side in px, both included, of an object's square box in its 32 px quadrant: varied enough that one
# box is often 25% larger than another ("Is the circle bigger than the square?").
_OBJECT_SIZES = (16, 28)
_COUNTING_SCENES = 0.5  # share of scenes drawn for counting; the rest for the relational questions

_INFO = {
    "description": "Synthetic demo data in the VQA v2 format, written by vqa.demo.data (not the VQA dataset).",
    "url": "http://visualqa.org",
    "version": "2.0",
    "year": 2017,
    "contributor": "vqa demo",
    "date_created": "2017-04-26 17:07:13",
}
_LICENSE = {
    "url": "http://creativecommons.org/licenses/by/4.0/",
    "name": "Creative Commons Attribution 4.0 International License",
}


def write_demo_dataset(out_dir: str | os.PathLike, train_images: int = 600, val_images: int = 200,
                       seed: int = 0) -> dict:
    """Write the synthetic demo dataset in the official VQA v2 layout.

    The same arguments always give byte-identical JSON and images.

    Args:
        out_dir: folder to write into (created if needed; files already there with
            the same names are replaced).
        train_images: number of train2014 images (about 5 questions each).
        val_images: number of val2014 images.
        seed: seed for scenes, questions and human answers.

    Returns:
        A summary: ``{"out_dir", "image_size", "splits": {split: {"images",
        "questions", "answer_types": {type: n}, "question_types": {type: n}}}}``.
    """
    for option, value in (("--train-images", train_images), ("--val-images", val_images)):
        if not isinstance(value, int) or value < 1:
            raise VQAError(f"{option} must be a positive whole number of images, not {value!r}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    id_rng = np.random.default_rng([seed, 0])
    # Random, COCO-like ids, distinct across splits, in increasing order within a split.
    all_ids = id_rng.choice(np.arange(1, 600_000), size=train_images + val_images, replace=False)
    split_ids = {
        "train2014": sorted(int(i) for i in all_ids[:train_images]),
        "val2014": sorted(int(i) for i in all_ids[train_images:]),
    }

    scenes_by_split: dict[str, dict[str, list[dict]]] = {}
    summary = {"out_dir": str(out_dir), "image_size": IMAGE_SIZE, "splits": {}}
    for split_index, split in enumerate(SPLITS, start=1):
        rng = np.random.default_rng([seed, split_index])
        image_dir = out_dir / split
        image_dir.mkdir(exist_ok=True)
        balancer = _Balancer()
        questions, annotations, scenes = [], [], {}
        for image_id in progress(split_ids[split], desc=f"demo {split}", unit="img"):
            scene = _make_scene(rng)
            scenes[str(image_id)] = scene
            _write_jpeg(layout.image_path(out_dir, split, image_id), _render(scene, rng))
            for k, asked in enumerate(_ask_questions(scene, balancer, rng)):
                question_id = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": asked["question"],
                                  "question_id": question_id})
                annotations.append({
                    "question_type": asked["question_type"],
                    "multiple_choice_answer": asked["answer"],
                    "answers": _human_answers(asked["answer"], asked["wrong_answers"], rng),
                    "image_id": image_id,
                    "answer_type": asked["answer_type"],
                    "question_id": question_id,
                })
        scenes_by_split[split] = scenes
        write_json(out_dir / layout.questions_filename(split), {
            "info": _INFO, "task_type": "Open-Ended", "data_type": "mscoco", "license": _LICENSE,
            "data_subtype": split, "questions": questions,
        }, indent=None)
        write_json(out_dir / layout.annotations_filename(split), {
            "info": _INFO, "license": _LICENSE, "data_subtype": split, "annotations": annotations,
        }, indent=None)
        summary["splits"][split] = {
            "images": len(split_ids[split]),
            "questions": len(questions),
            "answer_types": dict(sorted(Counter(a["answer_type"] for a in annotations).items())),
            "question_types": dict(sorted(Counter(a["question_type"] for a in annotations).items())),
        }
    write_json(out_dir / SCENES_FILE, scenes_by_split, indent=None)
    return summary


# ---------------------------------------------------------------------------
# Scenes and images

def _make_scene(rng: np.random.Generator) -> list[dict]:
    """One to four objects, one per quadrant, in reading order of the quadrants.

    Half the scenes are drawn for counting, half for the relational questions, which
    name shapes that occur once (``_counting_shapes``, ``_distinct_shapes``).
    """
    shapes = _counting_shapes(rng) if rng.random() < _COUNTING_SCENES else _distinct_shapes(rng)
    num_objects = len(shapes)
    cells = sorted(rng.choice(4, size=num_objects, replace=False).tolist())
    color_names = list(COLORS)
    scene = []
    for shape, cell in zip(shapes, cells):
        size = int(rng.integers(_OBJECT_SIZES[0], _OBJECT_SIZES[1] + 1))
        x0 = (cell % 2) * _CELL + int(rng.integers(2, _CELL - size - 2 + 1))
        y0 = (cell // 2) * _CELL + int(rng.integers(2, _CELL - size - 2 + 1))
        scene.append({"shape": shape, "color": color_names[rng.integers(len(color_names))],
                      "box": [x0, y0, x0 + size, y0 + size]})
    return scene


def _counting_shapes(rng: np.random.Generator) -> list[str]:
    """Counting questions need scenes with two or three objects of one shape, which
    independent shapes rarely give (three circles: 1 in 27), so a target shape gets
    a count drawn uniformly from 0..3 and the other objects take the other shapes
    (at most ``MAX_COUNT`` of each)."""
    target_shape = SHAPES[rng.integers(len(SHAPES))]
    target_count = int(rng.integers(MAX_COUNT + 1))
    num_objects = int(rng.integers(max(target_count, 1), MAX_OBJECTS + 1))
    other_shapes = [s for s in SHAPES if s != target_shape]
    while True:
        shapes = [target_shape] * target_count + [
            other_shapes[rng.integers(len(other_shapes))] for _ in range(num_objects - target_count)]
        if max(Counter(shapes).values()) <= MAX_COUNT:
            return [shapes[i] for i in rng.permutation(num_objects)]


def _distinct_shapes(rng: np.random.Generator) -> list[str]:
    """Three or four objects, of as many different shapes as there can be (a fourth repeats one),
    so at least two shapes occur once and another object can stand beside the one asked about:
    what the relational questions need. Counting scenes alone ask them of one scene in four
    ("just left of") and one in seven ("bigger than")."""
    num_objects = int(rng.integers(3, MAX_OBJECTS + 1))
    shapes = [str(s) for s in rng.permutation(SHAPES)[:min(num_objects, len(SHAPES))]]
    shapes += [SHAPES[rng.integers(len(SHAPES))] for _ in range(num_objects - len(shapes))]
    return [shapes[i] for i in rng.permutation(num_objects)]


def _render(scene: list[dict], rng: np.random.Generator) -> np.ndarray:
    """Draw a scene: uint8 (IMAGE_SIZE, IMAGE_SIZE, 3)."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    grey = int(rng.integers(95, 166))
    image = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for obj in scene:
        x0, y0, x1, y1 = (v * _SUPERSAMPLE for v in obj["box"])
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj["color"]], jitter))
        if obj["shape"] == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
    small = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)
    noise = rng.normal(0.0, 4.0, size=small.shape)
    return np.clip(np.rint(small + noise), 0, 255).astype(np.uint8)


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


# ---------------------------------------------------------------------------
# Questions

class _Balancer:
    """Keeps each question wording's answers near-uniform over its answer space.

    A question is only asked when its answer is at most ``_BALANCE_TOLERANCE`` ahead
    of the rarest answer of the same wording so far; among several candidates the
    one whose answer is furthest behind wins, so priors learnt from the question
    alone stay near chance.
    """

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def choose(self, candidates: list[dict], answer_space: tuple[str, ...],
               rng: np.random.Generator) -> dict | None:
        if not candidates:
            return None

        def lead(candidate: dict) -> int:
            counts = self.counts[candidate["question"]]
            return counts[candidate["answer"]] - min(counts[a] for a in answer_space)

        best = min(lead(c) for c in candidates)
        if best > _BALANCE_TOLERANCE:
            return None
        tied = [c for c in candidates if lead(c) == best]
        chosen = tied[rng.integers(len(tied))]
        self.counts[chosen["question"]][chosen["answer"]] += 1
        return chosen


def _plural(shape: str) -> str:
    return shape + "s"


def _ask_questions(scene: list[dict], balancer: _Balancer, rng: np.random.Generator) -> list[dict]:
    """Up to eight questions about a scene, one per template, balanced per wording.

    Each question is a dict with question, question_type, answer_type, answer (the
    canonical, normalised form) and wrong_answers (what a careless annotator says).
    """
    colors, shapes = tuple(COLORS), SHAPES
    shape_counts = Counter(obj["shape"] for obj in scene)
    color_counts = Counter(obj["color"] for obj in scene)
    kinds = {(obj["color"], obj["shape"]) for obj in scene}
    unique_shapes = [obj for obj in scene if shape_counts[obj["shape"]] == 1]
    unique_colors = [obj for obj in scene if color_counts[obj["color"]] == 1]
    counts_space = tuple(str(n) for n in range(MAX_COUNT + 1))

    def others(answer: str, space: tuple[str, ...]) -> list[str]:
        return [a for a in space if a != answer]

    def near_counts(answer: str) -> list[str]:
        n = int(answer)
        return [str(m) for m in (n - 1, n + 1) if 0 <= m <= MAX_COUNT + 1]

    templates: list[tuple[list[dict], tuple[str, ...]]] = [
        ([_question(f"Is there a {color} {shape}?", "is there a", "yes/no",
                    "yes" if (color, shape) in kinds else "no")
          for color in colors for shape in shapes], ("yes", "no")),
        ([_question(f"Is the {obj['shape']} {color}?", "is the", "yes/no",
                    "yes" if obj["color"] == color else "no")
          for obj in unique_shapes for color in colors], ("yes", "no")),
        ([_question(f"How many {_plural(shape)} are there?", "how many", "number", str(shape_counts[shape]))
          for shape in shapes], counts_space),
        ([_question("How many objects are there?", "how many", "number", str(len(scene)))],
         tuple(str(n) for n in range(1, MAX_OBJECTS + 1))),
        ([_question(f"What color is the {obj['shape']}?", "what color is the", "other", obj["color"])
          for obj in unique_shapes], colors),
        ([_question(f"What shape is the {obj['color']} object?", "what shape is the", "other", obj["shape"])
          for obj in unique_colors], shapes),
    ]
    relational = relational_questions(scene)
    templates += [(relational[LEFT_OF_TYPE], colors), (relational[BIGGER_TYPE], ("yes", "no"))]
    asked = []
    for candidates, answer_space in templates:
        chosen = balancer.choose(candidates, answer_space, rng)
        if chosen is None:
            continue
        answer = chosen["answer"]
        if chosen["answer_type"] == "yes/no":
            chosen["wrong_answers"] = others(answer, ("yes", "no"))
        elif chosen["answer_type"] == "number":
            chosen["wrong_answers"] = near_counts(answer)
        else:
            chosen["wrong_answers"] = others(answer, answer_space)
        asked.append(chosen)
    return asked


def _question(question: str, question_type: str, answer_type: str, answer: str) -> dict:
    return {"question": question, "question_type": question_type, "answer_type": answer_type,
            "answer": answer}


# ---------------------------------------------------------------------------
# Human answers

def _variants(answer: str) -> list[str]:
    """Ways people write ``answer`` that the official normalisation maps back to it."""
    if answer.isdigit():
        word = _NUMBER_WORDS[int(answer)]
        forms = [word, word.capitalize(), answer + "."]
        return forms + ["none", "None"] if answer == "0" else forms
    forms = [answer.capitalize(), answer + ".", answer.capitalize() + "."]
    if answer in SHAPES:
        forms += [f"a {answer}", f"A {answer}", f"the {answer}"]
    if answer in ("yes", "no"):
        forms += [answer + "!"]
    return forms


def _human_answers(canonical: str, wrong_answers: list[str], rng: np.random.Generator) -> list[dict]:
    """Ten answers: canonical majority, some spelling variation, a minority of mistakes."""
    num_wrong = int(rng.choice([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3])) if wrong_answers else 0
    variants = _variants(canonical)
    texts, correct = [], []
    for _ in range(10 - num_wrong):
        texts.append(variants[rng.integers(len(variants))] if rng.random() < 0.2 else canonical)
        correct.append(True)
    for _ in range(num_wrong):
        texts.append(wrong_answers[rng.integers(len(wrong_answers))])
        correct.append(False)
    if len(set(texts)) == 1:
        # The official metric compares ten identical answers without normalising them,
        # so (as in the lower-cased release) they must be the canonical form itself.
        texts = [canonical] * 10
    order = rng.permutation(10)
    answers = []
    for answer_id, i in enumerate(order, start=1):
        weights = [0.85, 0.12, 0.03] if correct[i] else [0.35, 0.45, 0.2]
        confidence = ("yes", "maybe", "no")[rng.choice(3, p=weights)]
        answers.append({"answer": texts[i], "answer_confidence": confidence, "answer_id": answer_id})
    return answers


def read_scenes(data_dir: str | os.PathLike) -> dict[str, dict[int, list[dict]]]:
    """Read ``demo_scenes.json`` back as ``{split: {image_id (int): [object, ...]}}``.

    Raises:
        VQAError: when the file is missing or malformed (it is only written by
            ``write_demo_dataset``, not part of the official layout).
    """
    path = Path(data_dir) / SCENES_FILE
    raw = read_json(path, "demo scene labels")
    try:
        return {split: {int(image_id): objects for image_id, objects in scenes.items()}
                for split, scenes in raw.items()}
    except (AttributeError, ValueError):
        raise VQAError(f"demo scene labels {path} are malformed; write the demo data again "
                       "with `vqa demo-data`.") from None
