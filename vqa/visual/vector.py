"""Vector inputs: one feature vector per image, held in memory (``image_features`` (B, D)).

Three sources fill it: the fc7 rows of ``vqa.features``, a grid file's mean over its cells
(``vqa.grid_features``) and a region file's mean over its boxes (``vqa.regions``), so the
global models compare with the attention models on the very file those read.

Memory: the rows are read once in their stored dtype (full train2014 fc7 in float16 is
678 MB) and shared by every question of an image; a batch gathers its rows by index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqa import features as features_lib
from vqa import grid_features, regions
from vqa.names import IMAGE_FEATURES
from vqa.visual.base import Kind, Source, VisualSpec


def _model_inputs(spec: VisualSpec) -> dict:
    import keras

    return {IMAGE_FEATURES: keras.Input(shape=(spec.feature_dim,), dtype="float32", name=IMAGE_FEATURES)}


KIND = Kind("vector", (IMAGE_FEATURES,), _model_inputs,
            lambda inputs: VisualSpec("vector", (int(inputs[IMAGE_FEATURES].shape[1]),)), parts=False)


class VectorReader:
    """Vectors (M, D) in memory, one per image id; see ``vqa.visual.base.VisualReader``."""

    streamed = False

    def __init__(self, image_ids: np.ndarray, vectors: np.ndarray, grid_shape: tuple[int, int, int] | None = None):
        self.image_ids = np.asarray(image_ids, np.int64)
        self.vectors = vectors
        self.spec = VisualSpec("vector", (int(vectors.shape[1]),))
        self.grid_shape = grid_shape

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``image_features`` (B, D) in the stored dtype (the model's float32 input casts float16
        several times cheaper than numpy on the feeding thread); a missing image (-1) gets zeros."""
        rows = np.asarray(rows)
        missing = rows < 0
        vectors = self.vectors[np.where(missing, 0, rows)] if len(self.vectors) else (
            np.zeros((len(rows), self.vectors.shape[1]), self.vectors.dtype))
        if missing.any():
            vectors[missing] = 0.0
        return {IMAGE_FEATURES: vectors}

    def close(self) -> None:
        """Nothing to release: the vectors are in memory."""


def _open_fc7(split_dir: Path) -> VectorReader:
    stored = features_lib.read_features(features_lib.features_path(split_dir))
    return VectorReader(stored.image_ids, stored.features)


def _open_grid_mean(split_dir: Path) -> VectorReader:
    with grid_features.GridReader(grid_features.grid_path(split_dir)) as reader:
        return VectorReader(reader.image_ids, reader.mean_pooled(), tuple(reader.shape))


def _open_region_mean(split_dir: Path) -> VectorReader:
    with regions.RegionReader(regions.region_path(split_dir)) as reader:
        return VectorReader(reader.image_ids, reader.mean_pooled())


def _vectors(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {IMAGE_FEATURES: np.asarray(rows, np.float32)}


def _cell_means(grids: np.ndarray) -> dict[str, np.ndarray]:
    # As GridReader.mean_pooled pools a stored grid.
    return {IMAGE_FEATURES: np.asarray(grids, np.float32).mean(axis=(1, 2), dtype=np.float32)}


SOURCES = (
    Source("fc7", "vector", "image features (fc7)", features_lib.features_path, _open_fc7,
           photo_inputs=_vectors),
    Source("grid-mean", "vector", "grid features mean-pooled over their cells", grid_features.grid_path,
           _open_grid_mean, from_grid=True, photo_inputs=_cell_means),
    Source("region-mean", "vector", "region features mean-pooled over their boxes", regions.region_path,
           _open_region_mean),
)
