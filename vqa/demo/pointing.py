"""Does an attention run look at the object a question names? Measured on the demo's scenes.

For each question "What color is the {shape}?" of a split, the run's attention maps
(``vqa.attention.attention_model``) are summed over the glimpses (or hops), and the
highest-weight part of the image counts as a hit when it is the named object:
    over a grid (``attention_pointing``): the cell's centre, in image pixels, lies inside
        the box of an object of that shape;
    over regions (``region_pointing``): the box's intersection over union with the box of
        an object of that shape is at least ``REGION_IOU``, the boxes read from the split's
        region file (``vqa.regions.RegionReader``), as they are fed to the model.
The objects' boxes come from the demo generator's scene labels (``vqa.demo.data.read_scenes``);
the question texts, token ids and image ids from the preprocessed split (``vqa.split_files``),
and the image input from the run's own visual source (``vqa.visual``: the grid file, the grid
read as regions, or the region file), so the model sees exactly what evaluation feeds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vqa import regions, split_files, visual
from vqa.demo import data as demo_data
from vqa.errors import VQAError
from vqa.names import QUESTION_IDS

COLOR_QUESTION = re.compile(r"^what colou?r is the (\w+)\?$")
REGION_IOU = 0.5  # a detection's usual match: the attended box and the object's overlap by half their union


@dataclass(frozen=True)
class Pointing:
    """How often the highest-weight cell or region is the named object.

    Attributes:
        questions: the "What color is the {shape}?" questions scored.
        hits: those whose highest-weight cell centre lies inside a box of that shape (grid), or whose
            highest-weight box overlaps one by ``REGION_IOU`` (regions).
        grid: (H, W) of the attention maps; None for maps over regions.
    """

    questions: int
    hits: int
    grid: tuple[int, int] | None = None

    @property
    def rate(self) -> float:
        """hits / questions, 0.0 when there are none."""
        return self.hits / self.questions if self.questions else 0.0


def cell_centres(height: int, width: int, image_size: int = demo_data.IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel x and y of each cell's centre, for an image of ``image_size`` square pixels cut in H x W cells."""
    xs = (np.arange(width) + 0.5) * image_size / width
    ys = (np.arange(height) + 0.5) * image_size / height
    return xs, ys


def attention_pointing(run_dir: str | Path, data_dir: str | Path, raw_dir: str | Path,
                       split: str = "val2014", batch_size: int = 256) -> Pointing:
    """Score the run's attention on the split's colour questions against the demo boxes.

    Args:
        run_dir: an attention run on a grid (a model with attention layers, reading the grid itself
            or the grid read as regions).
        data_dir: the preprocessed folder the run was trained on (with grid features).
        raw_dir: the demo dataset (``vqa demo-data``), for its scene labels.
        split: the split to score.
        batch_size: questions per model call.

    Raises:
        VQAError: the run has no attention over a grid, or the split no grid file or scene labels.
    """
    split_dir = Path(data_dir) / split
    run = _run_features(run_dir)
    # The grid itself, or its cells read as regions: a grid-mean run has no maps (attention_model says so).
    source = visual.SOURCES.get(run)
    if source is None or not source.from_grid:
        raise VQAError(f"{run_dir} reads {run} image features, not a grid its attention could point into; "
                       "score an attention run trained on grid features (region runs: region_pointing).")
    image_input = visual.open_source(run, split_dir)
    try:
        height, width, _ = image_input.grid_shape
        xs, ys = cell_centres(height, width)

        def hits(maps: np.ndarray, rows: np.ndarray, boxes: list[list[list[float]]]) -> list[bool]:
            # (batch, G, H, W) over a grid, (batch, G, H * W) over its cells read as regions (row-major).
            maps = maps.reshape(len(rows), -1, height, width).sum(axis=1)
            cells = [np.unravel_index(int(np.argmax(weights)), weights.shape) for weights in maps]
            return [any(x0 <= xs[x] <= x1 and y0 <= ys[y] <= y1 for x0, y0, x1, y1 in named)
                    for (y, x), named in zip(cells, boxes)]

        questions, hit_count = _score(run_dir, split_dir, raw_dir, split, image_input, hits, batch_size)
    finally:
        image_input.close()
    return Pointing(questions=questions, hits=hit_count, grid=(height, width))


def region_pointing(run_dir: str | Path, data_dir: str | Path, raw_dir: str | Path,
                    split: str = "val2014", batch_size: int = 256) -> Pointing:
    """Score a region run's attention on the split's colour questions against the demo boxes.

    The highest-weight box (the maps summed over glimpses) is a hit when its intersection over union
    with the named object's labelled box is at least ``REGION_IOU``.

    Args:
        run_dir: an attention run on region features (updown, mcan, or san and multi-glimpse on
            ``data.features=regions``).
        data_dir: the preprocessed folder the run was trained on, with the split's region file.
        raw_dir: the demo dataset (``vqa demo-data``), for its scene labels.
        split: the split to score.
        batch_size: questions per model call.

    Raises:
        VQAError: the run has no attention over regions, or the split no region file or scene labels.
    """
    split_dir = Path(data_dir) / split
    run = _run_features(run_dir)
    if run != "regions":
        raise VQAError(f"{run_dir} reads {run} image features, not the region boxes of {split_dir}; score an "
                       "attention run trained on region features (grid runs: attention_pointing).")
    image_input = visual.open_source(run, split_dir)
    box_reader = regions.RegionReader(regions.region_path(split_dir))
    try:
        def hits(maps: np.ndarray, rows: np.ndarray, boxes: list[list[list[float]]]) -> list[bool]:
            # (batch, G, K): K the file's largest box count; padded boxes have no weight.
            attended = maps.reshape(len(rows), -1, maps.shape[-1]).sum(axis=1).argmax(axis=1)
            batch = box_reader.read(rows)
            return [attended[i] < batch.mask.shape[1] and bool(batch.mask[i, attended[i]])
                    and any(box_iou(batch.boxes[i, attended[i]], box) >= REGION_IOU for box in named)
                    for i, named in enumerate(boxes)]

        questions, hit_count = _score(run_dir, split_dir, raw_dir, split, image_input, hits, batch_size)
    finally:
        image_input.close()
        box_reader.close()
    return Pointing(questions=questions, hits=hit_count)


def box_iou(first, second) -> float:
    """Intersection over union of two boxes x1, y1, x2, y2 (0.0 when either has no area)."""
    x1, y1 = max(first[0], second[0]), max(first[1], second[1])
    x2, y2 = min(first[2], second[2]), min(first[3], second[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = ((first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
             - inter)
    return float(inter / union) if union > 0 else 0.0


def _run_features(run_dir: str | Path) -> str:
    from vqa.run_folder import check_run_dir

    return check_run_dir(Path(run_dir)).features


def _score(run_dir: str | Path, split_dir: Path, raw_dir: str | Path, split: str, image_input,
           hits: Callable[[np.ndarray, np.ndarray, list], list[bool]], batch_size: int) -> tuple[int, int]:
    """(questions, hits) over the split's colour questions whose image ``image_input`` holds.

    ``hits(maps, image rows, named boxes)`` judges a batch: the attention maps as the model gives them,
    the image input's rows, and for each question the boxes of the objects of the named shape.
    """
    from vqa.attention import attention_model
    from vqa.run_folder import load_run_model

    maps_model = attention_model(load_run_model(Path(run_dir)))
    arrays = split_files.read_questions(split_dir)
    texts = split_files.read_text_columns(split_dir).questions
    scenes = demo_data.read_scenes(raw_dir).get(split)
    if scenes is None:
        raise VQAError(f"{Path(raw_dir) / demo_data.SCENES_FILE} has no scenes for {split}; write the demo data "
                       "again with `vqa demo-data`.")
    picked = [(row, match.group(1)) for row, text in enumerate(texts)
              if (match := COLOR_QUESTION.match(text.strip().lower()))]
    image_row = visual.rows_for(arrays.image_ids, image_input.image_ids)
    picked = [(row, shape) for row, shape in picked if image_row[row] >= 0]
    hit_count = 0
    for start in range(0, len(picked), batch_size):
        chunk = picked[start:start + batch_size]
        rows = [row for row, _ in chunk]
        inputs = {QUESTION_IDS: arrays.token_ids[rows], **image_input.read(image_row[rows])}
        maps = np.asarray(maps_model.predict_on_batch(inputs))
        named = [[obj["box"] for obj in scenes.get(int(arrays.image_ids[row]), []) if obj["shape"] == shape]
                 for row, shape in chunk]
        hit_count += sum(hits(maps, image_row[rows], named))
    return len(picked), hit_count
