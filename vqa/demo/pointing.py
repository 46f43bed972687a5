"""Does an attention run look at the object a question names? Measured on the demo's scenes.

For each question "What color is the {shape}?" of a split, the run's attention maps
(``vqa.attention.attention_model``) are summed over the glimpses (or hops), and the
highest-weight cell counts as a hit when its centre, in image pixels, lies inside the
box of an object of that shape. The boxes come from the demo generator's scene labels
(``vqa.demo.data.read_scenes``); the question texts, token ids and image ids from the
preprocessed split (``vqa.split_files``), and the grids from its grid file
(``vqa.grid_features``), so the model sees exactly what evaluation feeds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqa import grid_features, split_files
from vqa.demo import data as demo_data
from vqa.errors import VQAError

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
        run_dir: an attention run (a model with attention layers).
        data_dir: the preprocessed folder the run was trained on (with grid features).
        raw_dir: the demo dataset (``vqa demo-data``), for its scene labels.
        split: the split to score.
        batch_size: questions per model call.

    Raises:
        VQAError: the run has no attention, or the split no grid file or scene labels.
    """
    from vqa.attention import attention_model
    from vqa.run_folder import load_run_model

    split_dir = Path(data_dir) / split
    maps_model = attention_model(load_run_model(Path(run_dir)))
    arrays = split_files.read_questions(split_dir)
    texts = split_files.read_text_columns(split_dir).questions
    scenes = demo_data.read_scenes(raw_dir).get(split)
    if scenes is None:
        raise VQAError(f"{Path(raw_dir) / demo_data.SCENES_FILE} has no scenes for {split}; write the demo data "
                       "again with `vqa demo-data`.")
    picked = [(row, match.group(1)) for row, text in enumerate(texts)
              if (match := COLOR_QUESTION.match(text.strip().lower()))]
    with grid_features.GridReader(grid_features.grid_path(split_dir)) as grids:
        grid_row = {int(image_id): row for row, image_id in enumerate(grids.image_ids)}
        picked = [(row, shape) for row, shape in picked if int(arrays.image_ids[row]) in grid_row]
        height, width, _ = grids.shape
        xs, ys = cell_centres(height, width)
        hits = 0
        for start in range(0, len(picked), batch_size):
            chunk = picked[start:start + batch_size]
            rows = [row for row, _ in chunk]
            inputs = {"question_ids": arrays.token_ids[rows],
                      "image_grid": grids.read([grid_row[int(arrays.image_ids[r])] for r in rows]).astype(np.float32)}
            maps = np.asarray(maps_model.predict_on_batch(inputs)).sum(axis=1)  # (batch, H, W)
            for (row, shape), weights in zip(chunk, maps):
                y, x = np.unravel_index(int(np.argmax(weights)), weights.shape)
                boxes = [obj["box"] for obj in scenes.get(int(arrays.image_ids[row]), []) if obj["shape"] == shape]
                hits += any(x0 <= xs[x] <= x1 and y0 <= ys[y] <= y1 for x0, y0, x1, y1 in boxes)
    return Pointing(questions=len(picked), hits=hits, grid=(height, width))
