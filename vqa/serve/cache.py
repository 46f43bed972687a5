"""A bounded LRU of what the model reads of each image, keyed by the sha256 of the image's bytes.

A second question about the same picture (the same upload again, or one of the run's images)
finds its features or grid here and skips decoding and the backbone. The cache is bounded
both in entries and in bytes of the arrays it holds; the least recently used entry goes
first. It is shared by the request threads (look-ups) and the inference thread (inserts),
so every method takes one lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

DEFAULT_ENTRIES = 1024
DEFAULT_BYTES = 256 * 2**20  # 256 MiB: ~650 VGG-16 448 px grids (14 x 14 x 512 float32), 16 000 fc7 rows


@dataclass(frozen=True)
class CachedImage:
    """One image as the model reads it.

    Attributes:
        rows: float32, what ``Predictor.image_features`` gives for the image (fc7 (D,),
            a grid (H, W, C) or its cell means (C,)).
        width, height: of the image as uploaded, in pixels.
    """

    rows: np.ndarray
    width: int
    height: int


class FeatureCache:
    """Least-recently-used image features by content hash, at most ``max_entries`` and ``max_bytes``."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES, max_bytes: int = DEFAULT_BYTES):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"a cache needs room for one entry, not {max_entries} entries of {max_bytes} bytes")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedImage | None:
        """The entry of ``key`` (now the most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: CachedImage) -> None:
        """Store ``entry`` as the most recently used, dropping the least recently used ones to make room.

        An entry larger than ``max_bytes`` on its own is not stored.
        """
        size = int(entry.rows.nbytes)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= int(old.rows.nbytes)
            self._entries[key] = entry
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= int(dropped.rows.nbytes)

    def peek(self, key: str) -> CachedImage | None:
        """The entry of ``key`` or None, leaving the order and the counts as they are."""
        with self._lock:
            return self._entries.get(key)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict:
        """Entries, bytes held, limits, hits and misses so far (for ``GET /api/health``)."""
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "max_entries": self.max_entries,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}
