"""Batches whose image input is streamed from disk (grids, regions), read ahead on a thread.

``StreamedBatches`` is ``vqa.dataset.QuestionBatches`` (same filtering, same (seed, epoch)
shuffle, same targets and padding) for a split whose visual input reads from its file
batch by batch (``VisualReader.streamed``): each batch's rows in one sorted read, a missing
image (-1) as zeros or all padding.

Prefetch: when batch i is asked, one background thread reads batches i+1 .. i+``prefetch``
of the current order; an entry is used only when its rows are the rows asked for, so a
new epoch's order never gets an old read. Memory: at most ``prefetch`` batches read ahead
plus the one being served, whatever the number of images; nothing holds the file in memory.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from vqa.dataset import QuestionBatches, SplitData
from vqa.errors import VQAError

DEFAULT_PREFETCH = 2  # batches read ahead


class StreamedBatches(QuestionBatches):
    """``QuestionBatches`` reading each batch's image inputs ahead, on a background thread.

    Args:
        data: a split whose visual input is streamed (``data.visual.streamed``).
        batch_size, num_answers: as ``QuestionBatches``.
        prefetch: batches read ahead on a background thread; 0 reads each batch when asked.
        **kwargs: the other ``QuestionBatches`` arguments.

    Attributes:
        max_ahead: the most batches ever held read ahead at once (at most ``prefetch``).
    """

    def __init__(self, data: SplitData, batch_size: int, num_answers: int, prefetch: int = DEFAULT_PREFETCH,
                 **kwargs):
        if data.visual is None or not data.visual.streamed:
            raise VQAError(f"split {data.split} has no streamed image input to read ahead.")
        super().__init__(data, batch_size, num_answers, **kwargs)
        if prefetch < 0:
            raise VQAError(f"the prefetch depth must be at least 0, got {prefetch}.")
        self.prefetch = prefetch
        self.max_ahead = 0
        self._guard = threading.Lock()
        self._ahead: dict[int, tuple[np.ndarray, Future]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def read_inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The image inputs of split rows ``rows`` (``VisualReader.read``)."""
        return self.data.visual.read(self.data.image_index[rows])

    def image_inputs(self, index: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        with self._guard:
            entry = self._ahead.pop(index, None)
            # Reads for batches already passed, or of another epoch's order, are dropped.
            for stale in [i for i, (ahead_rows, _) in self._ahead.items()
                          if i < index or not np.array_equal(ahead_rows, self.padded_rows(i)[0])]:
                self._ahead.pop(stale)[1].cancel()
            if self.prefetch:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="input-prefetch")
                for ahead in range(index + 1, min(index + 1 + self.prefetch, len(self))):
                    if ahead not in self._ahead:
                        ahead_rows = self.padded_rows(ahead)[0]
                        self._ahead[ahead] = (ahead_rows, self._pool.submit(self.read_inputs, ahead_rows))
                self.max_ahead = max(self.max_ahead, len(self._ahead))
        if entry is not None and np.array_equal(entry[0], rows):
            return entry[1].result()
        if entry is not None:
            entry[1].cancel()
        return self.read_inputs(rows)

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


def batches_for(data: SplitData, batch_size: int, num_answers: int, **kwargs) -> QuestionBatches:
    """``StreamedBatches`` for a split whose image input is streamed, ``QuestionBatches`` for any other."""
    if data.visual is not None and data.visual.streamed and kwargs.get("include_images", True):
        return StreamedBatches(data, batch_size, num_answers, **kwargs)
    return QuestionBatches(data, batch_size, num_answers, **kwargs)
