"""The learning section's three small datasets, made here, written as preprocessed OUTs.

Each is a VQA v2-format release (questions and annotations JSON, ten human answers per
question) beside the image input another project would ship, preprocessed by
``vqa.preprocess`` with a stand-in spaCy pipeline (``vqa.vectors.make_vectors_pipeline``), so
every file of OUT comes from its real writer and importer:

- ``scenes-regions``: the demo scenes (``vqa.demo.data``) with stand-in bottom-up regions
  (``vqa.demo.label_regions``, peteanderson80's TSV layout), imported with no image
  (``--regions``); global models read their mean over the boxes (region-mean).
- ``fc7-scenes``: neuraltalk-style fc7 vectors (``vgg_feats.mat`` + id map, ``--features-mat``)
  of COCO-like scenes: 4096-d, non-negative, a large component every image shares plus a
  smaller one coding the scene's place, animal, its colour and the number of people, which
  five question templates ask about (17 answers).
- ``grid-shapes``: pytorch-vqa-style grids (``--grid-features``: ``features`` (N, C, H, W),
  ``ids``) of objects in cells: each object's cell codes its colour and its shape, so the
  questions that bind the two ("what color is the square?", "is there a red circle?") need
  the object's own cell, which a grid's mean blurs with the others.

Sizes: ``train_questions`` for train2014 (about 2,000 at 1x, 8,000 at 4x) and
``val_questions`` for val2014; image counts follow from the questions per image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from vqa import layout
from vqa.storage import write_json

SPLITS = ("train2014", "val2014")
MAX_QUESTION_LENGTH = 13  # the demo scenes' longest: "what is the color of the object just left of the circle ?"
DATASETS = ("scenes-regions", "fc7-scenes", "grid-shapes")
# What each dataset's OUT gives a model, by input kind (``vqa.visual``), for choosing the models it trains.
KINDS = {"scenes-regions": ("vector", "regions"), "fc7-scenes": ("vector",), "grid-shapes": ("vector", "grid")}

_DEMO_QUESTIONS_PER_IMAGE = 5.3  # what vqa.demo.data asks per scene, on average (5.23 train, 5.44 val)
_FC7_TEMPLATES = 5
_GRID_QUESTIONS_PER_IMAGE = 3.6


@dataclasses.dataclass(frozen=True)
class LearningData:
    """One dataset at one size, preprocessed.

    Attributes:
        name: one of ``DATASETS``.
        out_dir: the preprocessed OUT (``vqa.preprocess``).
        kinds: the input kinds its files give (``KINDS``).
        train_questions, val_questions: questions written per split.
        images: train2014 and val2014 images.
        truncated_questions: questions longer than ``MAX_QUESTION_LENGTH`` tokens (0: none lost words).
        note: what the image input is, in a few words.
    """

    name: str
    out_dir: Path
    kinds: tuple[str, ...]
    train_questions: int
    val_questions: int
    images: dict
    truncated_questions: int
    note: str


def write_learning_data(name: str, folder: Path, train_questions: int, val_questions: int, quick: bool = False,
                        seed: int = 0, log: Callable[[str], None] = print) -> LearningData:
    """Write dataset ``name`` (raw release, stand-in vectors, OUT) under ``folder``.

    Args:
        name: one of ``DATASETS``.
        folder: created; holds ``raw/``, ``vectors/`` and ``out/``.
        train_questions, val_questions: about how many questions each split gets.
        quick: narrower features (the smoke test's sizes).
        seed: seeds scenes, features and human answers.
        log: where preprocessing's lines go.
    """
    from vqa.config import PreprocessConfig
    from vqa.manifest import load_manifest
    from vqa.preprocess import preprocess

    writers = {"scenes-regions": _write_scenes_regions, "fc7-scenes": _write_fc7_scenes,
               "grid-shapes": _write_grid_shapes}
    if name not in writers:
        raise ValueError(f"unknown learning dataset {name!r}; one of {', '.join(DATASETS)}")
    raw, out = folder / "raw", folder / "out"
    raw.mkdir(parents=True, exist_ok=True)
    imports, note = writers[name](raw, train_questions, val_questions, quick, seed)
    vectors = _stand_in_vectors(raw, folder / "vectors")
    preprocess(PreprocessConfig(data_dir=str(raw), splits=",".join(SPLITS), vectors=str(vectors),
                                max_question_length=MAX_QUESTION_LENGTH, **imports), out, log=log)
    manifest = load_manifest(out)
    return LearningData(name=name, out_dir=out, kinds=KINDS[name],
                        train_questions=manifest.splits["train2014"].num_questions,
                        val_questions=manifest.splits["val2014"].num_questions,
                        images={split: manifest.splits[split].num_images for split in SPLITS},
                        truncated_questions=sum(manifest.splits[split].truncated_questions for split in SPLITS),
                        note=note)


# --- a. the demo scenes with stand-in regions ---------------------------------------------------------


def _write_scenes_regions(raw: Path, train_questions: int, val_questions: int, quick: bool,
                          seed: int) -> tuple[dict, str]:
    from vqa.demo.data import write_demo_dataset
    from vqa.demo.label_regions import write_label_regions

    train_images = max(2, round(train_questions / _DEMO_QUESTIONS_PER_IMAGE))
    val_images = max(2, round(val_questions / _DEMO_QUESTIONS_PER_IMAGE))
    write_demo_dataset(raw, train_images=train_images, val_images=val_images, seed=seed)
    tsv_dir = raw.parent / "regions_tsv"
    dim = 16 if quick else 32
    write_label_regions(raw, tsv_dir, dim=dim, seed=seed)
    return {"regions": str(tsv_dir)}, f"demo scenes, 1-4 objects + 2 background boxes of {dim}-d stand-in regions"


# --- b. fc7-like vectors of COCO-like scenes ------------------------------------------------------------

_PLACES = ("kitchen", "street", "beach", "field")
_ANIMALS = ("dog", "cat", "horse", "bird")
_FURS = ("white", "black", "brown", "gray")
_PEOPLE = ("1", "2", "3")


def _write_fc7_scenes(raw: Path, train_questions: int, val_questions: int, quick: bool,
                      seed: int) -> tuple[dict, str]:
    """Five questions an image; the .mat file holds every image of both splits (as neuraltalk's does)."""
    from scipy.io import savemat

    dim = 256 if quick else 4096
    rng = np.random.default_rng([seed, 2])
    attributes = {"place": _PLACES, "animal": _ANIMALS, "fur": _FURS, "people": _PEOPLE}
    codes = {key: rng.standard_normal((len(values), dim)).astype(np.float32) for key, values in attributes.items()}
    # What every photo's fc7 shares (the large mean of VGG-16's ReLU features), far above the scene's own signal.
    shared = (2.0 + np.abs(rng.standard_normal(dim))).astype(np.float32)
    image_ids, columns, next_id = [], [], 1
    for split, questions in zip(SPLITS, (train_questions, val_questions)):
        records = []
        for _ in range(max(2, round(questions / _FC7_TEMPLATES))):
            image_id, next_id = next_id, next_id + int(rng.integers(1, 40))
            scene = {key: int(rng.integers(len(values))) for key, values in attributes.items()}
            signal = sum(codes[key][value] for key, value in scene.items()) + rng.standard_normal(dim)
            columns.append(np.maximum(shared + 0.3 * signal, 0).astype(np.float32))
            image_ids.append(image_id)
            place, animal, fur = _PLACES[scene["place"]], _ANIMALS[scene["animal"]], _FURS[scene["fur"]]
            asked = animal if rng.random() < 0.5 else _ANIMALS[int(rng.integers(len(_ANIMALS)))]
            records += [
                _record(image_id, "Where was this picture taken?", "where was", "other", place, _PLACES),
                _record(image_id, "What animal is in the picture?", "what animal is", "other", animal, _ANIMALS),
                _record(image_id, f"What color is the {animal}?", "what color is the", "other", fur, _FURS),
                _record(image_id, "How many people are in the picture?", "how many", "number",
                        _PEOPLE[scene["people"]], _PEOPLE),
                _record(image_id, f"Is there a {asked} in the picture?", "is there a", "yes/no",
                        "yes" if asked == animal else "no", ("yes", "no")),
            ]
        _write_release(raw, split, records, rng)
    mat, id_map = raw / "vgg_feats.mat", raw / "coco_vgg_IDMap.txt"
    savemat(mat, {"feats": np.stack(columns, axis=1)})  # (D, N), one column an image
    id_map.write_text("".join(f"{image_id} {column}\n" for column, image_id in enumerate(image_ids)))
    return ({"features_mat": str(mat), "id_map": str(id_map)},
            f"{dim}-d fc7-like vectors: relu(shared + 0.3 * (attribute codes + noise))")


# --- c. grids of coloured shapes ------------------------------------------------------------------------

_GRID_COLORS = ("red", "green", "blue", "yellow")
_GRID_SHAPES = ("circle", "square", "triangle")
_GRID_COUNTS = ("0", "1", "2", "3")


def _write_grid_shapes(raw: Path, train_questions: int, val_questions: int, quick: bool,
                       seed: int) -> tuple[dict, str]:
    """Two to four objects an image, one per cell; the grid file holds every image of both splits."""
    import h5py

    side, channels = (3, 16) if quick else (4, 64)
    rng = np.random.default_rng([seed, 3])
    color_codes = np.abs(rng.standard_normal((len(_GRID_COLORS), channels))).astype(np.float32)
    shape_codes = np.abs(rng.standard_normal((len(_GRID_SHAPES), channels))).astype(np.float32)
    grids, image_ids, next_id = [], [], 1
    for split, questions in zip(SPLITS, (train_questions, val_questions)):
        records = []
        for _ in range(max(2, round(questions / _GRID_QUESTIONS_PER_IMAGE))):
            image_id, next_id = next_id, next_id + int(rng.integers(1, 40))
            count = int(rng.integers(2, 5))
            cells = rng.choice(side * side, size=count, replace=False)
            objects = [(int(rng.integers(len(_GRID_COLORS))), int(rng.integers(len(_GRID_SHAPES)))) for _ in cells]
            grid = np.abs(0.3 * rng.standard_normal((side, side, channels))).astype(np.float32)
            for cell, (color, shape) in zip(cells, objects):
                row, column = divmod(int(cell), side)
                code = color_codes[color] + shape_codes[shape]
                grid[row, column] += code + 0.2 * rng.standard_normal(channels).astype(np.float32)
                # A conv feature map's receptive fields overlap: a little of an object reaches its neighbours.
                for near_row, near_column in ((row - 1, column), (row + 1, column), (row, column - 1),
                                              (row, column + 1)):
                    if 0 <= near_row < side and 0 <= near_column < side:
                        grid[near_row, near_column] += 0.15 * code
            grids.append(np.maximum(grid, 0).transpose(2, 0, 1))  # pytorch-vqa stores (C, H, W)
            image_ids.append(image_id)
            records += _grid_questions(image_id, objects, rng)
        _write_release(raw, split, records, rng)
    path = raw / "pytorch_vqa_grids.h5"  # what preprocess-images.py writes, under another name
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.stack(grids).astype(np.float16))
        f.create_dataset("ids", data=np.asarray(image_ids, np.int64))
    return {"grid_features": str(path)}, f"{side} x {side} x {channels} grids, one object per cell, 2-4 objects"


def _grid_questions(image_id: int, objects: list[tuple[int, int]], rng: np.random.Generator) -> list[dict]:
    """What color is the <shape> (a shape seen once), how many <colour> objects, is there a <colour> <shape>,
    what shape is the <colour> object (a colour seen once)."""
    shapes = [shape for _, shape in objects]
    colors = [color for color, _ in objects]
    records = []
    unique_shapes = [s for s in set(shapes) if shapes.count(s) == 1]
    if unique_shapes:
        shape = unique_shapes[int(rng.integers(len(unique_shapes)))]
        records.append(_record(image_id, f"What color is the {_GRID_SHAPES[shape]}?", "what color is the", "other",
                               _GRID_COLORS[colors[shapes.index(shape)]], _GRID_COLORS))
    color = int(rng.integers(len(_GRID_COLORS)))
    records.append(_record(image_id, f"How many {_GRID_COLORS[color]} objects are there?", "how many", "number",
                           str(min(colors.count(color), 3)), _GRID_COUNTS))
    # Half the time a pair that is there, else a pair that is not: yes and no about equally often.
    present = set(objects)
    if rng.random() < 0.5:
        color, shape = list(present)[int(rng.integers(len(present)))]
    else:
        absent = [(c, s) for c in range(len(_GRID_COLORS)) for s in range(len(_GRID_SHAPES)) if (c, s) not in present]
        color, shape = absent[int(rng.integers(len(absent)))]
    records.append(_record(image_id, f"Is there a {_GRID_COLORS[color]} {_GRID_SHAPES[shape]}?", "is there a",
                           "yes/no", "yes" if (color, shape) in present else "no", ("yes", "no")))
    unique_colors = [c for c in set(colors) if colors.count(c) == 1]
    if unique_colors:
        color = unique_colors[int(rng.integers(len(unique_colors)))]
        records.append(_record(image_id, f"What shape is the {_GRID_COLORS[color]} object?", "what shape is the",
                               "other", _GRID_SHAPES[shapes[colors.index(color)]], _GRID_SHAPES))
    return records


# --- the release: questions, annotations, ten human answers ---------------------------------------------


def _record(image_id: int, question: str, question_type: str, answer_type: str, answer: str,
            space: tuple[str, ...]) -> dict:
    return {"image_id": image_id, "question": question, "question_type": question_type,
            "answer_type": answer_type, "answer": answer, "space": space}


def _human_answers(answer: str, space: tuple[str, ...], rng: np.random.Generator) -> list[dict]:
    """Ten answers, the canonical one mostly, and zero to three others of the same space (as people disagree)."""
    others = [a for a in space if a != answer]
    wrong = int(rng.choice([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3])) if others else 0
    texts = [answer] * (10 - wrong) + [others[int(rng.integers(len(others)))] for _ in range(wrong)]
    texts = [texts[i] for i in rng.permutation(10)]
    return [{"answer": text, "answer_confidence": "yes", "answer_id": i + 1} for i, text in enumerate(texts)]


def _write_release(raw: Path, split: str, records: list[dict], rng: np.random.Generator) -> None:
    """The split's official questions and annotations files (``vqa.layout`` names them)."""
    questions, annotations = [], []
    for index, record in enumerate(records):
        question_id = 10_000_000 * SPLITS.index(split) + index + 1  # distinct across the splits
        questions.append({"image_id": record["image_id"], "question": record["question"], "question_id": question_id})
        annotations.append({"question_id": question_id, "image_id": record["image_id"],
                            "question_type": record["question_type"], "answer_type": record["answer_type"],
                            "multiple_choice_answer": record["answer"],
                            "answers": _human_answers(record["answer"], record["space"], rng)})
    info = {"description": "vqa bench learning data (synthetic, VQA v2 format)", "version": "2.0"}
    write_json(raw / layout.questions_filename(split), {
        "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
        "questions": questions}, indent=None)
    write_json(raw / layout.annotations_filename(split), {
        "info": info, "license": {}, "data_subtype": split, "annotations": annotations}, indent=None)


def _stand_in_vectors(raw: Path, folder: Path) -> Path:
    """A stand-in spaCy pipeline with a vector for every token of the questions (``--vectors``)."""
    from vqa import text
    from vqa.storage import read_json
    from vqa.vectors import make_vectors_pipeline

    nlp = text.blank_tokenizer("en")
    words: set[str] = set()
    for split in SPLITS:
        questions = read_json(raw / layout.questions_filename(split), "questions", layout.OFFICIAL_JSON_MAX_BYTES)["questions"]
        for tokens in text.tokenize(nlp, [q["question"] for q in questions]):
            words.update(tokens)
    return make_vectors_pipeline(sorted(words), folder)
