"""A bounded in-memory cache of recent photos and their mattes, so a button re-renders without a network.

Bounded three ways (entries, bytes, age); the least recently used photo goes first. Only the event loop
touches it, so it needs no lock.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CachedPhoto:
    """A photo as the user sent it (file bytes), its uint8 matte, and what its result was made with."""

    chat_id: int
    data: bytes
    matte: np.ndarray
    model: str
    filename: str
    person_found: bool
    photo_id: str = ""  # the same for every result of one upload (another model's included)
    stored_at: float = field(default=0.0)

    @property
    def nbytes(self) -> int:
        """Memory it holds: the file and the matte (a photo shared by two results is counted for each)."""
        return len(self.data) + int(self.matte.nbytes)


class MatteCache:
    """Recent photos by a short random key, evicted by count, by bytes and by age (least recently used first)."""

    def __init__(
        self, max_entries: int, max_bytes: int, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[str, CachedPhoto] = OrderedDict()
        self._bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def put(self, photo: CachedPhoto) -> str | None:
        """Keep a photo; returns its key, or None when it alone is larger than the whole cache."""
        if photo.nbytes > self.max_bytes:
            return None
        key = secrets.token_hex(4)
        while key in self._entries:
            key = secrets.token_hex(4)
        photo.stored_at = self._clock()
        photo.photo_id = photo.photo_id or key
        self._entries[key] = photo
        self._bytes += photo.nbytes
        self._evict()
        return key

    def get(self, key: str) -> CachedPhoto | None:
        """The photo under a key (now the most recently used), or None when it expired or was evicted."""
        self._expire()
        photo = self._entries.get(key)
        if photo is not None:
            self._entries.move_to_end(key)
        return photo

    def _drop(self, key: str) -> None:
        photo = self._entries.pop(key)
        self._bytes -= photo.nbytes
        self.evicted += 1

    def _expire(self) -> None:
        deadline = self._clock() - self.max_age_s
        # Ages follow insertion order, not use: scan all (a few hundred entries at most), cheap next to a render.
        for key in [key for key, photo in self._entries.items() if photo.stored_at < deadline]:
            self._drop(key)

    def _evict(self) -> None:
        self._expire()
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            self._drop(next(iter(self._entries)))
