"""Batches of grid features streamed from a split's grid file, for the attention models.

``GridBatches`` is ``vqa.dataset.QuestionBatches`` (same filtering, same (seed, epoch)
shuffle, same targets and padding) with the image input ``image_grid`` (B, H, W, C) read
from the split's open ``GridReader`` (``vqa.dataset.load_split(..., features="grid")``):
each batch's rows in one sorted read (``GridReader.read``), a missing image (-1) as zeros.

Prefetch: when batch i is asked, one background thread reads batches i+1 .. i+``prefetch``
of the current order; an entry is used only when its rows are the rows asked for, so a
new epoch's order never gets an old read. Memory: at most ``prefetch`` batches read ahead
plus the one being served, (prefetch + 1) x batch x H x W x C x 2 bytes, whatever the
number of images; nothing holds the grid file in memory.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from vqa.dataset import QuestionBatches, SplitData
from vqa.errors import VQAError

DEFAULT_PREFETCH = 2  # batches read ahead


class GridBatches(QuestionBatches):
    """``QuestionBatches`` yielding ``{"question_ids", "image_grid"}`` from a streamed grid split.

    Args:
        data: a split loaded with ``features="grid"`` (its ``grids`` reader open).
        batch_size, num_answers: as ``QuestionBatches``.
        prefetch: batches read ahead on a background thread; 0 reads each batch when asked.
        **kwargs: the other ``QuestionBatches`` arguments.

    Attributes:
        max_ahead: the most batches ever held read ahead at once (at most ``prefetch``).
    """

    def __init__(self, data: SplitData, batch_size: int, num_answers: int, prefetch: int = DEFAULT_PREFETCH,
                 **kwargs):
        if data.grids is None:
            raise VQAError(f"split {data.split} was loaded without its grid features; load it with "
                           "features='grid' to stream them.")
        super().__init__(data, batch_size, num_answers, **kwargs)
        if prefetch < 0:
            raise VQAError(f"the grid prefetch depth must be at least 0, got {prefetch}.")
        self.prefetch = prefetch
        self.max_ahead = 0
        self._guard = threading.Lock()
        self._ahead: dict[int, tuple[np.ndarray, Future]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def read_grids(self, rows: np.ndarray) -> np.ndarray:
        """(B, H, W, C) grids of split rows ``rows`` in the stored dtype; zeros for a missing image."""
        return self.data.grids.read(self.data.image_index[rows])

    def image_inputs(self, index: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        with self._guard:
            entry = self._ahead.pop(index, None)
            # Reads for batches already passed, or of another epoch's order, are dropped.
            for stale in [i for i, (ahead_rows, _) in self._ahead.items()
                          if i < index or not np.array_equal(ahead_rows, self.padded_rows(i)[0])]:
                self._ahead.pop(stale)[1].cancel()
            if self.prefetch:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grid-prefetch")
                for ahead in range(index + 1, min(index + 1 + self.prefetch, len(self))):
                    if ahead not in self._ahead:
                        ahead_rows = self.padded_rows(ahead)[0]
                        self._ahead[ahead] = (ahead_rows, self._pool.submit(self.read_grids, ahead_rows))
                self.max_ahead = max(self.max_ahead, len(self._ahead))
        if entry is not None and np.array_equal(entry[0], rows):
            return {"image_grid": entry[1].result()}
        if entry is not None:
            entry[1].cancel()
        return {"image_grid": self.read_grids(rows)}

    def on_epoch_end(self) -> None:
        with self._guard:
            for _, future in self._ahead.values():
                future.cancel()
            self._ahead.clear()

    def close(self) -> None:
        """Drop the reads ahead and stop the prefetch thread (the reader stays open: ``SplitData.close``)."""
        self.on_epoch_end()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def grid_batches_for(data: SplitData, batch_size: int, num_answers: int, **kwargs) -> QuestionBatches:
    """``GridBatches`` for a streamed grid split, ``QuestionBatches`` for any other."""
    if data.grids is not None:
        return GridBatches(data, batch_size, num_answers, **kwargs)
    return QuestionBatches(data, batch_size, num_answers, **kwargs)
