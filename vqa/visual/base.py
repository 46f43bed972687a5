"""The contract of a visual input: what a run reads of each image, whatever file it comes from.

Three kinds of model input (``Kind``): a vector per image, a grid per image, or a set of
regions per image. A ``Source`` is one way of filling a kind from a split folder of OUT
(fc7 rows, a grid file, the grid's cell means, a region file, ...): it names the file it
reads, opens a ``VisualReader`` on it, and says how to make the same input from a photo
when it can. Train, evaluate, predict and serve only ever talk to these three classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class VisualSpec:
    """The shape of what a model reads of one image.

    Attributes:
        kind: "vector", "grid" or "regions".
        shape: (D,) for a vector, (H, W, C) for a grid, (D,) for regions (their count varies).
    """

    kind: str
    shape: tuple[int, ...]

    @property
    def feature_dim(self) -> int:
        """D (or C, the channels of a grid)."""
        return int(self.shape[-1])


@dataclass(frozen=True)
class Kind:
    """One kind of model input.

    Attributes:
        name: "vector", "grid" or "regions".
        input_names: the model inputs it fills (``vqa.names``), the first one carrying the features.
        model_inputs: spec -> the named ``keras.Input`` tensors a model of this kind starts from.
        spec_of: the model's input tensors by name -> the spec they read.
        parts: whether an image is several parts a model can attend over (grid cells, boxes).
    """

    name: str
    input_names: tuple[str, ...]
    model_inputs: Callable[[VisualSpec], dict[str, Any]]
    spec_of: Callable[[dict[str, Any]], VisualSpec]
    parts: bool = True


class VisualReader(Protocol):
    """An open visual input of one split.

    Attributes:
        spec: what the model reads of each image.
        image_ids: int64 (M,), the image of each row.
        streamed: True when rows are read from disk batch by batch (worth reading ahead).
        grid_shape: (H, W, C) of the grid behind it, or None (runs record it so predict can
            make the same input from a photo).
    """

    spec: VisualSpec
    image_ids: np.ndarray
    streamed: bool
    grid_shape: tuple[int, int, int] | None

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The model inputs of file rows ``rows`` (-1: an image without a row, read as zeros or all padding)."""

    def close(self) -> None:
        """Release the file (a no-op for inputs held in memory)."""


@dataclass(frozen=True)
class Source:
    """One way of filling a kind of input from a split folder.

    Attributes:
        name: the ``data.features`` value that picks it, e.g. "fc7", "grid-mean", "regions".
        kind: the ``Kind`` name it fills.
        what: a few words for messages, e.g. "region features mean-pooled over their boxes".
        path: split folder -> the file it reads there.
        open: split folder -> an open ``VisualReader``.
        from_grid: True when a photo's input is made from the backbone's grid (else from its fc7 vector).
        photo_inputs: what the backbone gives for n photos (fc7 (n, D) or grids (n, H, W, C)) ->
            the model inputs; None when a photo cannot be turned into this input (detector regions).
    """

    name: str
    kind: str
    what: str
    path: Callable[[Path], Path]
    open: Callable[[Path], VisualReader]
    from_grid: bool = False
    photo_inputs: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None


def rows_for(question_image_ids: np.ndarray, file_image_ids: np.ndarray) -> np.ndarray:
    """int32 (N,): the file row of each question's image, -1 where the file has no row for it.

    Whether a question is usable is decided here, by the file its run actually reads.
    """
    question_image_ids = np.asarray(question_image_ids, np.int64)
    if len(file_image_ids) == 0:
        return np.full(len(question_image_ids), -1, np.int32)
    order = np.argsort(file_image_ids, kind="stable")
    sorted_ids = np.asarray(file_image_ids, np.int64)[order]
    position = np.minimum(np.searchsorted(sorted_ids, question_image_ids), len(sorted_ids) - 1)
    found = sorted_ids[position] == question_image_ids
    return np.where(found, order[position], -1).astype(np.int32)


def pad_inputs(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Each array with zero rows appended up to ``size`` rows (a fixed batch shape for predict)."""
    padded = {}
    for name, rows in inputs.items():
        if len(rows) < size:
            rows = np.concatenate([rows, np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)])
        padded[name] = rows
    return padded
