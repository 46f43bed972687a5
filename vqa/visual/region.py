"""Region inputs: a set of boxes per image, each with a feature vector and its place in the image.

Model inputs: ``region_features`` (B, K, D), ``region_geometry`` (B, K, 5) (x1/w, y1/h,
x2/w, y2/h and the box's share of the image, ``vqa.regions.geometry``) and ``region_mask``
(B, K), 1 for a real box and 0 for padding. K is the file's largest box count for every
batch: Keras' TensorFlow data adapter fixes the shape of a batch from the first ones it
sees, so a later batch of another box count would stop training (and one shape compiles
once on any backend). The file's reads stay per image, sorted; padding is zeros.

Two sources fill it: a bottom-up-attention region file (``vqa.regions``, imported with
``vqa preprocess --regions``), and a grid file read as regions, one box per cell, so a
region model also runs on a backbone's grid and answers about a photo from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqa import grid_features, regions
from vqa.names import REGION_FEATURES, REGION_GEOMETRY, REGION_MASK
from vqa.visual.base import Kind, Source, VisualSpec

GEOMETRY_DIM = 5


def _model_inputs(spec: VisualSpec) -> dict:
    import keras

    return {
        REGION_FEATURES: keras.Input(shape=(None, spec.feature_dim), dtype="float32", name=REGION_FEATURES),
        REGION_GEOMETRY: keras.Input(shape=(None, GEOMETRY_DIM), dtype="float32", name=REGION_GEOMETRY),
        REGION_MASK: keras.Input(shape=(None,), dtype="float32", name=REGION_MASK),
    }


KIND = Kind("regions", (REGION_FEATURES, REGION_GEOMETRY, REGION_MASK), _model_inputs,
            lambda inputs: VisualSpec("regions", (int(inputs[REGION_FEATURES].shape[-1]),)))


def _padded(array: np.ndarray, boxes: int) -> np.ndarray:
    if array.shape[1] >= boxes:
        return array
    padding = np.zeros((array.shape[0], boxes - array.shape[1], *array.shape[2:]), array.dtype)
    return np.concatenate([array, padding], axis=1)


class RegionStream:
    """An open region file read batch by batch; see ``vqa.visual.base.VisualReader``."""

    streamed = True
    grid_shape = None

    def __init__(self, split_dir: Path):
        self.reader = regions.RegionReader(regions.region_path(split_dir))
        self.image_ids = self.reader.image_ids
        self.spec = VisualSpec("regions", (int(self.reader.feature_dim),))

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The three region inputs of ``rows``; an image without regions (-1) is all padding."""
        batch = self.reader.read(rows)
        boxes = max(1, self.reader.max_boxes, batch.mask.shape[1])
        geometry = regions.geometry(batch.boxes, batch.sizes, batch.mask)
        return {REGION_FEATURES: _padded(batch.features, boxes), REGION_GEOMETRY: _padded(geometry, boxes),
                REGION_MASK: _padded(batch.mask.astype(np.float32), boxes)}

    def close(self) -> None:
        self.reader.close()


def grid_as_regions(grids: np.ndarray, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Grids (B, H, W, C) as regions: H * W boxes in row-major order, one per cell.

    Args:
        grids: (B, H, W, C), any float dtype (kept).
        present: bool (B,), False for a missing image (all padding); None means all present.
    """
    count, height, width, channels = grids.shape
    cells = np.broadcast_to(regions.cell_boxes(height, width)[None], (count, height * width, 4))
    mask = np.ones((count, height * width), bool)
    if present is not None:
        mask[~np.asarray(present, bool)] = False
    sizes = np.ones((count, 2), np.float32)
    return {REGION_FEATURES: grids.reshape(count, height * width, channels),
            REGION_GEOMETRY: regions.geometry(np.ascontiguousarray(cells, np.float32), sizes, mask),
            REGION_MASK: mask.astype(np.float32)}


class GridRegionStream:
    """A grid file read as regions, one box per cell; see ``vqa.visual.base.VisualReader``."""

    streamed = True

    def __init__(self, split_dir: Path):
        self.reader = grid_features.GridReader(grid_features.grid_path(split_dir))
        self.image_ids = self.reader.image_ids
        self.grid_shape = tuple(int(n) for n in self.reader.shape)
        self.spec = VisualSpec("regions", (self.grid_shape[2],))

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(rows)
        return grid_as_regions(self.reader.read(rows), rows >= 0)

    def close(self) -> None:
        self.reader.close()


SOURCES = (
    Source("regions", "regions", "region features (bottom-up attention boxes)", regions.region_path,
           RegionStream),
    Source("grid-regions", "regions", "grid features read as regions, one box per cell", grid_features.grid_path,
           GridRegionStream, from_grid=True,
           photo_inputs=lambda grids: grid_as_regions(np.asarray(grids, np.float32))),
)
