"""The bot's embedded SQLite store: per-chat settings and one row per request for statistics.

`Store` is plain synchronous sqlite3. `AsyncStore` runs every call on one dedicated thread: the calls
are tiny, but a commit may wait on an fsync (or on a WAL checkpoint) for milliseconds on a slow disk,
and that wait should not stall the event loop that serves every chat. One thread also means the
connection is only ever used from the thread that opened it, which is what sqlite3 expects.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DB_NAME = "bot.sqlite3"
# Latency percentiles are computed in Python over the most recent successes of each model: enough for a
# stable p95 and bounded in memory however long the bot runs.
PERCENTILE_WINDOW = 10_000

# Outcome kinds of a request. The first two are successes; everything else is a failure kind.
SUCCESS_KINDS = ("ok", "no_person")

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
CREATE INDEX IF NOT EXISTS request_events_at ON request_events (at);
CREATE INDEX IF NOT EXISTS request_events_model_outcome ON request_events (model, outcome);
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
        return sum(count for kind, count in self.outcomes.items() if kind in SUCCESS_KINDS)

    @property
    def failures(self) -> int:
        """Requests that did not."""
        return self.total - self.successes


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, like numpy's default; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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
        self._db.executescript(_SCHEMA)
        self._db.commit()

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

    def record(
        self, chat_id: int, model: str, outcome: str, latency_s: float | None = None, at: float | None = None
    ) -> None:
        """Record one request and how it ended."""
        with self._db:
            self._db.execute(
                "INSERT INTO request_events (at, chat_id, model, outcome, latency_s) VALUES (?, ?, ?, ?, ?)",
                (time.time() if at is None else at, chat_id, model, outcome, latency_s),
            )

    def stats(self, now: float | None = None) -> StoreStats:
        """Totals, the last 24 hours, outcomes by kind, per-model latency and the number of distinct chats."""
        now = time.time() if now is None else now
        db = self._db
        stats = StoreStats()
        stats.total = db.execute("SELECT COUNT(*) FROM request_events").fetchone()[0]
        stats.last_24h = db.execute("SELECT COUNT(*) FROM request_events WHERE at >= ?", (now - 86_400,)).fetchone()[0]
        stats.outcomes = dict(
            db.execute("SELECT outcome, COUNT(*) FROM request_events GROUP BY outcome ORDER BY 2 DESC")
        )
        placeholders = ",".join("?" * len(SUCCESS_KINDS))
        counts = db.execute(
            f"SELECT model, COUNT(*) FROM request_events WHERE outcome IN ({placeholders}) "
            "GROUP BY model ORDER BY model",
            SUCCESS_KINDS,
        ).fetchall()
        for model, count in counts:
            latencies = [
                row[0]
                for row in db.execute(
                    f"SELECT latency_s FROM request_events WHERE model = ? AND outcome IN ({placeholders}) "
                    "AND latency_s IS NOT NULL ORDER BY id DESC LIMIT ?",
                    (model, *SUCCESS_KINDS, PERCENTILE_WINDOW),
                )
            ]
            stats.models[model] = ModelStats(count, percentile(latencies, 50), percentile(latencies, 95))
        stats.distinct_chats = db.execute(
            "SELECT COUNT(*) FROM (SELECT chat_id FROM request_events UNION SELECT chat_id FROM chat_settings)"
        ).fetchone()[0]
        return stats


class AsyncStore:
    """The Store behind one dedicated thread, so no disk wait ever runs on the event loop."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DB_NAME
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bot-store")
        self._store: Store | None = None

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _require(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store is not open")
        return self._store

    async def open(self) -> None:
        """Open (and create, on first use) the database."""
        if self._store is None:
            self._store = await self._call(Store, self.path)

    async def close(self) -> None:
        """Close the database and its thread."""
        if self._store is not None:
            await self._call(self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    async def get_model(self, chat_id: int) -> str | None:
        """The model a chat chose, or None."""
        return await self._call(self._require().get_model, chat_id)

    async def set_model(self, chat_id: int, model: str) -> None:
        """Remember a chat's model."""
        await self._call(self._require().set_model, chat_id, model)

    async def record(self, chat_id: int, model: str, outcome: str, latency_s: float | None = None) -> None:
        """Record one request and how it ended."""
        await self._call(self._require().record, chat_id, model, outcome, latency_s)

    async def stats(self) -> StoreStats:
        """Persistent request statistics."""
        return await self._call(self._require().stats)
