"""What the handlers share: settings, the engine, the store, the photos in progress, and store upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from telegram import User
from telegram.ext import ContextTypes

from bot import texts
from bot.config import Settings
from bot.matte_cache import MatteCache
from bot.store import AsyncStore
from segmentation.effects import TRANSPARENT, Look
from segmentation.engine_api import Engine

logger = logging.getLogger(__name__)

SERVICES_KEY = "services"
SECONDS_PER_DAY = 86_400
# Statistics older than the retention window are pruned this often (and once at start-up).
PRUNE_INTERVAL_S = 6 * 3600


@dataclass
class Services:
    """What the handlers share: settings, the engine, the store, and the photos in progress."""

    settings: Settings
    engine: Engine  # the in-process engine or the Ray Serve client: the same interface
    store: AsyncStore
    model_names: tuple[str, ...]
    started_at: float = field(default_factory=time.monotonic)
    # Photos each user has in progress (downloading, queued or running). The event loop is single-threaded,
    # so plain increments are race-free.
    pending: Counter[int] = field(default_factory=Counter)
    # Recent photos and mattes for the result buttons (built from the settings when not given).
    cache: MatteCache | None = None
    # Photos a button is working on (by photo id), and users whose last tap is still being handled.
    busy_photos: set[str] = field(default_factory=set)
    tapping_users: set[int] = field(default_factory=set)
    last_tap: dict[int, float] = field(default_factory=dict)
    # Albums being gathered: media_group_id -> the photos seen so far (see bot/albums.py).
    albums: dict[str, Any] = field(default_factory=dict)
    _maintenance: asyncio.Task | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cache is None:
            settings = self.settings
            self.cache = MatteCache(settings.cache_entries, settings.cache_bytes, settings.cache_seconds)

    async def texts_for(self, user: User | None) -> texts.Texts:
        """The texts in a user's language: their /lang choice, else Russian for a ru* Telegram language."""
        if user is None:
            return texts.ENGLISH
        chosen = await self.store.get_language(user.id)
        return texts.for_language(chosen or texts.language_of(user.language_code))

    async def chat_model(self, chat_id: int) -> str:
        """The chat's chosen model, or the default (also when a stored choice is no longer offered)."""
        chosen = await self.store.get_model(chat_id)
        return chosen if chosen in self.model_names else self.settings.default_model

    async def chat_look(self, chat_id: int) -> Look:
        """The chat's default look (/bg, /crop): a transparent, uncropped result unless it chose otherwise."""
        background, crop = await self.store.get_look(chat_id)
        try:
            return Look(background or TRANSPARENT, bool(crop))
        except ValueError:  # a value a newer version stored: fall back to the default
            return Look(TRANSPARENT, bool(crop))

    @contextlib.contextmanager
    def pending_slot(self, user_id: int) -> Iterator[None]:
        """Count a photo against its user's limit for the duration of the block, on every path."""
        self.pending[user_id] += 1
        try:
            yield
        finally:
            self.pending[user_id] -= 1
            if self.pending[user_id] <= 0:
                del self.pending[user_id]

    async def prune_statistics(self) -> int:
        """Drop per-request statistics older than the retention window (on the store's thread); returns the count."""
        deleted = await self.store.prune(self.settings.stats_retention_days * SECONDS_PER_DAY)
        if deleted:
            logger.info("pruned %d request events older than %g days", deleted, self.settings.stats_retention_days)
        return deleted

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune_statistics()
            except Exception:  # upkeep is best-effort: try again next time
                logger.exception("could not prune the statistics")
            await asyncio.sleep(PRUNE_INTERVAL_S)

    def start_maintenance(self) -> None:
        """Prune the statistics now and every PRUNE_INTERVAL_S."""
        if self._maintenance is None:
            self._maintenance = asyncio.create_task(self._prune_forever(), name="prune-statistics")

    def stop_maintenance(self) -> None:
        """Stop the pruning task (a batch in progress finishes on the store's thread)."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None


def services(context: ContextTypes.DEFAULT_TYPE) -> Services:
    """The shared services of the application that runs this handler."""
    return context.bot_data[SERVICES_KEY]
