"""The bot's embedded SQLite store: per-chat settings and request statistics that do not grow forever.

Statistics are kept twice: one row per request for a window (BOT_STATS_RETENTION_DAYS; the last 24 hours
and the latency percentiles read it), and compact per-day counts by model and outcome, kept for good
(totals and outcomes read those). `prune` drops events older than the window in small batches.

`Store` is plain synchronous sqlite3. `AsyncStore` runs it off the event loop: chat settings and
recording on one thread, /stats on a second thread with its own connection (WAL lets a reader run beside
the writer), so a /stats never delays the `get_model` in front of every photo.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from bot.outcomes import SUCCESSES, Outcome

T = TypeVar("T")

DB_NAME = "bot.sqlite3"
SECONDS_PER_DAY = 86_400
# Latency percentiles are taken over the most recent successes of each model: enough for a stable p95,
# and a bounded read however many rows the window holds.
PERCENTILE_WINDOW = 10_000
# Rows deleted per pruning statement: each batch is short, so settings and recording calls slip in between.
PRUNE_BATCH = 5_000
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_settings (
    chat_id    INTEGER PRIMARY KEY,
    model      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS request_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    chat_id   INTEGER NOT NULL,
    model     TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    latency_s REAL
);
CREATE TABLE IF NOT EXISTS daily_stats (
    day     INTEGER NOT NULL,  -- days since 1970-01-01 (UTC)
    model   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (day, model, outcome)
) WITHOUT ROWID;
-- Per-chat output defaults (/bg, /crop) and per-user language (/lang): kept across restarts.
CREATE TABLE IF NOT EXISTS chat_looks (
    chat_id    INTEGER PRIMARY KEY,
    background TEXT,
    crop       INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS user_languages (
    user_id    INTEGER PRIMARY KEY,
    language   TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chats (
    chat_id INTEGER PRIMARY KEY
);
-- The last 24 hours and pruning read events by time.
CREATE INDEX IF NOT EXISTS request_events_at ON request_events (at);
-- Percentiles read the latest latencies of one model; covering, so the table itself is never touched.
CREATE INDEX IF NOT EXISTS request_events_latency ON request_events (model, at, latency_s)
    WHERE latency_s IS NOT NULL;
DROP INDEX IF EXISTS request_events_model_outcome;
"""

# A store written before daily_stats and chats existed: rebuild both from the events it kept.
_BACKFILL = """
INSERT OR IGNORE INTO daily_stats (day, model, outcome, count)
    SELECT CAST(at / 86400 AS INTEGER), model, outcome, COUNT(*) FROM request_events GROUP BY 1, 2, 3;
INSERT OR IGNORE INTO chats (chat_id) SELECT DISTINCT chat_id FROM request_events;
"""


@dataclass
class ModelStats:
    """Completed requests of one model and their latency percentiles (seconds; None with no data)."""

    count: int
    p50: float | None
    p95: float | None


@dataclass
class StoreStats:
    """Persistent request statistics, as shown by /stats."""

    total: int = 0
    last_24h: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    models: dict[str, ModelStats] = field(default_factory=dict)
    distinct_chats: int = 0

    @property
    def successes(self) -> int:
        """Requests that produced a result."""
        return sum(count for kind, count in self.outcomes.items() if kind in SUCCESSES)

    @property
    def failures(self) -> int:
        """Requests that did not."""
        return self.total - self.successes


def percentiles(values: list[float], *qs: float) -> list[float | None]:
    """numpy's percentiles (linear interpolation) of values; None for each q when there are none."""
    if not values:
        return [None for _ in qs]
    return [float(value) for value in np.percentile(np.asarray(values, dtype=np.float64), qs)]


class Store:
    """Synchronous SQLite access; use it from one thread (AsyncStore does that for the bot)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        # WAL: readers never block the writer, and a commit is one sequential append.
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against an application crash under WAL; only a power cut can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._db:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._db.executescript("BEGIN;" + _SCHEMA + (_BACKFILL if version < SCHEMA_VERSION else ""))
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def get_model(self, chat_id: int) -> str | None:
        """The model a chat chose, or None if it never chose one."""
        row = self._db.execute("SELECT model FROM chat_settings WHERE chat_id = ?", (chat_id,)).fetchone()
        return row[0] if row else None

    def set_model(self, chat_id: int, model: str) -> None:
        """Remember a chat's model."""
        with self._db:
            self._db.execute(
                "INSERT INTO chat_settings (chat_id, model, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (chat_id) DO UPDATE SET model = excluded.model, updated_at = excluded.updated_at",
                (chat_id, model, time.time()),
            )

    def get_look(self, chat_id: int) -> tuple[str | None, bool | None]:
        """A chat's background and crop settings (None for each it never set)."""
        row = self._db.execute("SELECT background, crop FROM chat_looks WHERE chat_id = ?", (chat_id,)).fetchone()
        if row is None:
            return None, None
        return row[0], (None if row[1] is None else bool(row[1]))

    def set_look(self, chat_id: int, *, background: str | None = None, crop: bool | None = None) -> None:
        """Remember a chat's background and/or crop setting (None leaves that one as it is)."""
        with self._db:
            self._db.execute(
                "INSERT INTO chat_looks (chat_id, background, crop, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (chat_id) DO UPDATE SET background = COALESCE(excluded.background, background), "
                "crop = COALESCE(excluded.crop, crop), updated_at = excluded.updated_at",
                (chat_id, background, None if crop is None else int(crop), time.time()),
            )

    def get_language(self, user_id: int) -> str | None:
        """The language a user chose with /lang, or None."""
        row = self._db.execute("SELECT language FROM user_languages WHERE user_id = ?", (user_id,)).fetchone()
        return row[0] if row else None

    def set_language(self, user_id: int, language: str) -> None:
        """Remember a user's language."""
        with self._db:
            self._db.execute(
                "INSERT INTO user_languages (user_id, language, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET language = excluded.language, updated_at = excluded.updated_at",
                (user_id, language, time.time()),
            )

    def record(
        self, chat_id: int, model: str, outcome: Outcome, latency_s: float | None = None, at: float | None = None
    ) -> None:
        """Record one request and how it ended (latency_s: for requests that produced a result)."""
        at = time.time() if at is None else at
        outcome = Outcome(outcome)
        with self._db:
            self._db.execute(
                "INSERT INTO request_events (at, chat_id, model, outcome, latency_s) VALUES (?, ?, ?, ?, ?)",
                (at, chat_id, model, outcome.value, latency_s),
            )
            self._db.execute(
                "INSERT INTO daily_stats (day, model, outcome, count) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (day, model, outcome) DO UPDATE SET count = count + 1",
                (int(at // SECONDS_PER_DAY), model, outcome.value),
            )
            self._db.execute("INSERT OR IGNORE INTO chats (chat_id) VALUES (?)", (chat_id,))

    def prune(self, before: float, batch: int = PRUNE_BATCH) -> int:
        """Delete up to `batch` of the oldest events recorded before `before`; returns how many went."""
        with self._db:
            cursor = self._db.execute(
                "DELETE FROM request_events WHERE id IN "
                "(SELECT id FROM request_events WHERE at < ? ORDER BY at LIMIT ?)",
                (before, batch),
            )
        return cursor.rowcount

    def event_count(self) -> int:
        """Events kept in the window (for tests and benchmarks)."""
        return self._db.execute("SELECT COUNT(*) FROM request_events").fetchone()[0]

    def stats(self, now: float | None = None) -> StoreStats:
        """Totals, the last 24 hours, outcomes by kind, per-model latency and the number of distinct chats."""
        now = time.time() if now is None else now
        db = self._db
        stats = StoreStats()
        stats.outcomes = dict(
            db.execute("SELECT outcome, SUM(count) FROM daily_stats GROUP BY outcome ORDER BY 2 DESC, 1")
        )
        stats.total = sum(stats.outcomes.values())
        stats.last_24h = db.execute(
            "SELECT COUNT(*) FROM request_events WHERE at >= ?", (now - SECONDS_PER_DAY,)
        ).fetchone()[0]
        success_values = sorted(outcome.value for outcome in SUCCESSES)
        placeholders = ",".join("?" * len(success_values))
        counts = db.execute(
            f"SELECT model, SUM(count) FROM daily_stats WHERE outcome IN ({placeholders}) "
            "GROUP BY model ORDER BY model",
            success_values,
        ).fetchall()
        for model, count in counts:
            latencies = [
                row[0]
                for row in db.execute(
                    "SELECT latency_s FROM request_events INDEXED BY request_events_latency "
                    "WHERE model = ? AND latency_s IS NOT NULL ORDER BY at DESC LIMIT ?",
                    (model, PERCENTILE_WINDOW),
                )
            ]
            p50, p95 = percentiles(latencies, 50, 95)
            stats.models[model] = ModelStats(count, p50, p95)
        stats.distinct_chats = db.execute(
            "SELECT COUNT(*) FROM (SELECT chat_id FROM chats UNION SELECT chat_id FROM chat_settings)"
        ).fetchone()[0]
        return stats


class AsyncStore:
    """The Store off the event loop: settings and recording on one thread, /stats on another."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DB_NAME
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bot-store")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bot-stats")
        self._store: Store | None = None
        self._stats_store: Store | None = None

    async def _call(self, executor: ThreadPoolExecutor, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    def _require(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store is not open")
        return self._store

    async def open(self) -> None:
        """Open (and create or upgrade, on first use) the database."""
        if self._store is None:
            self._store = await self._call(self._writer, Store, self.path)
            self._stats_store = await self._call(self._reader, Store, self.path)

    async def close(self) -> None:
        """Close the database and its threads."""
        if self._stats_store is not None:
            await self._call(self._reader, self._stats_store.close)
            self._stats_store = None
        if self._store is not None:
            await self._call(self._writer, self._store.close)
            self._store = None
        self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)

    async def get_model(self, chat_id: int) -> str | None:
        """The model a chat chose, or None."""
        return await self._call(self._writer, self._require().get_model, chat_id)

    async def set_model(self, chat_id: int, model: str) -> None:
        """Remember a chat's model."""
        await self._call(self._writer, self._require().set_model, chat_id, model)

    async def get_look(self, chat_id: int) -> tuple[str | None, bool | None]:
        """A chat's background and crop settings (None for each it never set)."""
        return await self._call(self._writer, self._require().get_look, chat_id)

    async def set_look(self, chat_id: int, *, background: str | None = None, crop: bool | None = None) -> None:
        """Remember a chat's background and/or crop setting."""
        update = functools.partial(self._require().set_look, chat_id, background=background, crop=crop)
        await self._call(self._writer, update)

    async def get_language(self, user_id: int) -> str | None:
        """The language a user chose with /lang, or None."""
        return await self._call(self._writer, self._require().get_language, user_id)

    async def set_language(self, user_id: int, language: str) -> None:
        """Remember a user's language."""
        await self._call(self._writer, self._require().set_language, user_id, language)

    async def record(self, chat_id: int, model: str, outcome: Outcome, latency_s: float | None = None) -> None:
        """Record one request and how it ended."""
        await self._call(self._writer, self._require().record, chat_id, model, outcome, latency_s)

    async def prune(self, retention_s: float, batch: int = PRUNE_BATCH) -> int:
        """Delete events older than the retention window, one short batch at a time; returns how many went."""
        before = time.time() - retention_s
        deleted = 0
        while True:
            removed = await self._call(self._writer, self._require().prune, before, batch)
            deleted += removed
            if removed < batch:
                return deleted

    async def stats(self) -> StoreStats:
        """Persistent request statistics, read beside (not in front of) the settings and recording calls."""
        self._require()
        return await self._call(self._reader, self._stats_store.stats)
