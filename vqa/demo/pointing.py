"""Does an attention run look at the object a question names? Measured on the demo's scenes.

For each question "What color is the {shape}?" of a split, the run's attention maps
(``vqa.attention.attention_model``) are summed over the glimpses (or hops), and the
highest-weight cell counts as a hit when its centre, in image pixels, lies inside the
box of an object of that shape. The boxes come from the demo generator's scene labels
(``vqa.demo.data.read_scenes``); the question texts, token ids and image ids from the
preprocessed split (``vqa.split_files``), and the image input from the run's own visual
source (``vqa.visual``: the grid file, or the grid read as regions), so the model sees
exactly what evaluation feeds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqa import split_files, visual
from vqa.demo import data as demo_data
from vqa.errors import VQAError
from vqa.names import QUESTION_IDS

COLOR_QUESTION = re.compile(r"^what colou?r is the (\w+)\?$")


@dataclass(frozen=True)
class Pointing:
    """How often the highest-weight cell lies inside the named object's box.

    Attributes:
        questions: the "What color is the {shape}?" questions scored.
        hits: those whose highest-weight cell centre lies inside a box of that shape.
        grid: (H, W) of the attention maps.
    """

    questions: int
    hits: int
    grid: tuple[int, int]

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
    from vqa.attention import attention_model
    from vqa.run_folder import check_run_dir, load_run_model

    split_dir = Path(data_dir) / split
    run = check_run_dir(Path(run_dir))
    # The grid itself, or its cells read as regions: a grid-mean run has no maps (attention_model says so).
    source = visual.SOURCES.get(run.features)
    if source is None or not source.from_grid:
        raise VQAError(f"{run_dir} reads {run.features} image features, not a grid its attention could point into; "
                       "score an attention run trained on grid features.")
    maps_model = attention_model(load_run_model(Path(run_dir)))
    arrays = split_files.read_questions(split_dir)
    texts = split_files.read_text_columns(split_dir).questions
    scenes = demo_data.read_scenes(raw_dir).get(split)
    if scenes is None:
        raise VQAError(f"{Path(raw_dir) / demo_data.SCENES_FILE} has no scenes for {split}; write the demo data "
                       "again with `vqa demo-data`.")
    picked = [(row, match.group(1)) for row, text in enumerate(texts)
              if (match := COLOR_QUESTION.match(text.strip().lower()))]
    image_input = visual.open_source(run.features, split_dir)
    try:
        image_row = visual.rows_for(arrays.image_ids, image_input.image_ids)
        picked = [(row, shape) for row, shape in picked if image_row[row] >= 0]
        height, width, _ = image_input.grid_shape
        xs, ys = cell_centres(height, width)
        hits = 0
        for start in range(0, len(picked), batch_size):
            chunk = picked[start:start + batch_size]
            rows = [row for row, _ in chunk]
            inputs = {QUESTION_IDS: arrays.token_ids[rows], **image_input.read(image_row[rows])}
            # (batch, G, H, W) over a grid, (batch, G, H * W) over its cells read as regions (row-major).
            maps = np.asarray(maps_model.predict_on_batch(inputs)).reshape(len(rows), -1, height, width).sum(axis=1)
            for (row, shape), weights in zip(chunk, maps):
                y, x = np.unravel_index(int(np.argmax(weights)), weights.shape)
                boxes = [obj["box"] for obj in scenes.get(int(arrays.image_ids[row]), []) if obj["shape"] == shape]
                hits += any(x0 <= xs[x] <= x1 and y0 <= ys[y] <= y1 for x0, y0, x1, y1 in boxes)
    finally:
        image_input.close()
    return Pointing(questions=len(picked), hits=hits, grid=(height, width))
