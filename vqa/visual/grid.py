"""Grid inputs: a backbone's spatial grid per image (``image_grid`` (B, H, W, C)), streamed from disk.

The one source reads a split's grid file (``vqa.grid_features``) batch by batch: each
batch's rows in one sorted read, nothing of the file held in memory (full COCO at
14 x 14 x 512 is 25 GB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqa import grid_features
from vqa.names import IMAGE_GRID
from vqa.visual.base import Kind, Source, VisualSpec


def _model_inputs(spec: VisualSpec) -> dict:
    import keras

    return {IMAGE_GRID: keras.Input(shape=tuple(spec.shape), dtype="float32", name=IMAGE_GRID)}


KIND = Kind("grid", (IMAGE_GRID,), _model_inputs,
            lambda inputs: VisualSpec("grid", tuple(int(n) for n in inputs[IMAGE_GRID].shape[1:])))


class GridStream:
    """An open grid file read batch by batch; see ``vqa.visual.base.VisualReader``."""

    streamed = True

    def __init__(self, split_dir: Path):
        self.reader = grid_features.GridReader(grid_features.grid_path(split_dir))
        self.image_ids = self.reader.image_ids
        self.grid_shape = tuple(int(n) for n in self.reader.shape)
        self.spec = VisualSpec("grid", self.grid_shape)

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``image_grid`` (B, H, W, C) in the stored dtype; zeros for a missing image (-1)."""
        return {IMAGE_GRID: self.reader.read(rows)}

    def close(self) -> None:
        self.reader.close()


SOURCES = (
    Source("grid", "grid", "grid features", grid_features.grid_path, GridStream, from_grid=True,
           photo_inputs=lambda grids: {IMAGE_GRID: np.asarray(grids, np.float32)}),
)
