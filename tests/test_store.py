"""The bot's SQLite store: settings, statistics over a window plus daily counts, pruning, upgrade, indexes."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bot.outcomes import Outcome
from bot.store import SECONDS_PER_DAY, AsyncStore, Store, percentiles


def test_store_settings_and_stats_persist(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = Store(path)
    assert store.get_model(1) is None
    store.set_model(1, "unet")
    store.set_model(1, "deeplab")
    store.set_model(2, "unet")
    now = time.time()
    store.record(1, "deeplab", "ok", 0.5, at=now - 10)
    store.record(1, "deeplab", "ok", 1.5, at=now - 5)
    store.record(3, "unet", "no_person", 2.0, at=now - 2 * 86_400)
    store.record(3, "unet", "busy", at=now)
    store.record(4, "deeplab", "not_image", at=now)
    store.close()

    store = Store(path)  # reopened: everything is still there
    assert store.get_model(1) == "deeplab"
    assert store.get_model(2) == "unet"
    stats = store.stats(now=now)
    store.close()
    assert stats.total == 5
    assert stats.last_24h == 4
    assert stats.outcomes == {"ok": 2, "busy": 1, "no_person": 1, "not_image": 1}
    assert (stats.successes, stats.failures) == (3, 2)
    assert stats.models["deeplab"].count == 2
    assert stats.models["deeplab"].p50 == pytest.approx(1.0)
    assert stats.models["deeplab"].p95 == pytest.approx(1.45)
    assert stats.models["unet"].count == 1 and stats.models["unet"].p95 == pytest.approx(2.0)
    assert stats.distinct_chats == 4  # 1, 2 (settings only), 3, 4


async def test_async_store_runs_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, set[str]] = {}
    for name in ("set_model", "record", "get_model", "stats"):
        method = getattr(Store, name)

        def on_thread(*args: object, _method=method, _name=name, **kwargs: object) -> object:
            threads.setdefault(_name, set()).add(threading.current_thread().name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(Store, name, on_thread)
    store = AsyncStore(tmp_path / "nested")
    await store.open()
    await store.set_model(7, "unet")
    await store.record(7, "unet", "ok", 0.25)
    assert await store.get_model(7) == "unet"
    assert (await store.stats()).total == 1
    await store.close()
    assert (tmp_path / "nested" / "bot.sqlite3").is_file()
    # Writes and settings on the store's thread, /stats' long reads on its own, none on the event loop's.
    writer = {name for key, names in threads.items() if key != "stats" for name in names}
    assert len(writer) == 1 and writer.pop().startswith("bot-store")
    assert len(threads["stats"]) == 1 and threads["stats"].pop().startswith("bot-stats")


def test_percentiles_are_numpys() -> None:
    values = list(np.random.default_rng(1).random(101))
    assert percentiles(values, 50, 95) == pytest.approx([np.percentile(values, 50), np.percentile(values, 95)])
    assert percentiles([], 50, 95) == [None, None]


def test_pruning_drops_old_events_and_keeps_the_daily_counts(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.sqlite3")
    now = time.time()
    for day in range(40):  # one success and one refusal a day for 40 days
        store.record(day, "deeplab", Outcome.OK, 1.0 + day, at=now - day * SECONDS_PER_DAY - 60)
        store.record(day, "deeplab", Outcome.BUSY, at=now - day * SECONDS_PER_DAY - 60)
    before = store.stats(now=now)
    deleted = 0
    while removed := store.prune(before=now - 30 * SECONDS_PER_DAY, batch=7):  # small batches, as in the bot
        deleted += removed
    after = store.stats(now=now)
    store.close()

    assert deleted == 2 * 10  # days 30..39
    assert Store(tmp_path / "bot.sqlite3").event_count() == 2 * 30
    # Totals, outcomes, per-model counts and chats come from the daily counts: pruning does not change them.
    assert (after.total, after.outcomes, after.distinct_chats) == (80, {"busy": 40, "ok": 40}, 40)
    assert after.models["deeplab"].count == 40
    assert (before.total, before.last_24h) == (after.total, after.last_24h) == (80, 2)
    # Latency percentiles read the events still in the window: the 30 most recent successes.
    assert after.models["deeplab"].p50 == pytest.approx(np.percentile([1.0 + day for day in range(30)], 50))
    assert before.models["deeplab"].p50 == pytest.approx(np.percentile([1.0 + day for day in range(40)], 50))


async def test_async_prune_uses_the_retention_window(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    seed = Store(path)
    now = time.time()
    for index in range(25):
        seed.record(1, "unet", Outcome.OK, 0.5, at=now - 3 * SECONDS_PER_DAY - index)
    seed.record(1, "unet", Outcome.OK, 0.5, at=now - 60)
    seed.close()
    store = AsyncStore(tmp_path)
    await store.open()
    assert await store.prune(retention_s=2 * SECONDS_PER_DAY, batch=10) == 25  # three batches: 10, 10, 5
    assert await store.prune(retention_s=2 * SECONDS_PER_DAY, batch=10) == 0
    assert (await store.stats()).total == 26
    await store.close()
    assert Store(path).event_count() == 1


def test_a_store_from_before_the_daily_counts_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE request_events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, chat_id INTEGER NOT NULL,"
        " model TEXT NOT NULL, outcome TEXT NOT NULL, latency_s REAL);"
        "CREATE INDEX request_events_model_outcome ON request_events (model, outcome);"
    )
    now = time.time()
    old.executemany(
        "INSERT INTO request_events (at, chat_id, model, outcome, latency_s) VALUES (?, ?, ?, ?, ?)",
        [(now - 10, 5, "deeplab", "ok", 0.3), (now - 5, 6, "deeplab", "timeout", None)],
    )
    old.commit()
    old.close()
    store = Store(path)
    stats = store.stats(now=now)
    store.close()
    assert (stats.total, stats.outcomes, stats.distinct_chats) == (2, {"ok": 1, "timeout": 1}, 2)
    assert stats.models["deeplab"].count == 1 and stats.models["deeplab"].p95 == pytest.approx(0.3)
    store = Store(path)  # opening again does not count the old events twice
    assert store.stats(now=now).total == 2
    store.close()


def test_stats_queries_read_indexes_not_the_whole_event_table(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.sqlite3")
    store.record(1, "deeplab", Outcome.OK, 0.2)
    store.record(2, "unet", Outcome.OK, 0.3)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)  # the statements stats() really runs, values bound
    store.stats()
    store._db.set_trace_callback(None)
    events = [statement for statement in statements if "request_events" in statement]
    plans = {statement: store._db.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall() for statement in events}
    store.close()
    assert len(events) >= 3  # the last 24 h, and the recent latencies of each model
    for statement, plan in plans.items():
        detail = " ".join(row[-1] for row in plan)
        assert "COVERING INDEX" in detail, (statement, detail)
        assert "TEMP B-TREE" not in detail, (statement, detail)  # no sort of the whole window


def test_an_unknown_stored_outcome_is_shown_as_stored(tmp_path: Path) -> None:
    from bot import texts

    store = Store(tmp_path / "bot.sqlite3")
    store.record(1, "deeplab", Outcome.OK, 0.2)
    with pytest.raises(ValueError):
        store.record(1, "deeplab", "exploded")  # only Outcome values are recorded
    store._db.execute("INSERT INTO daily_stats VALUES (0, 'deeplab', 'from_the_future', 3)")
    report = texts.stats_report(store.stats(), 60, 0, 0)
    store.close()
    assert "Succeeded: 1 (person found 1)" in report
    assert "Failed: 3 (from_the_future 3)" in report


def test_looks_and_languages_are_kept_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = Store(path)
    assert store.get_look(7) == (None, None) and store.get_language(70) is None
    store.set_look(7, background="#00ff00")
    store.set_look(7, crop=True)  # one setting at a time leaves the other as it was
    store.set_look(8, crop=False)
    store.set_language(70, "ru")
    store.set_language(70, "en")
    store.close()
    store = Store(path)
    assert store.get_look(7) == ("#00ff00", True)
    assert store.get_look(8) == (None, False)
    assert store.get_language(70) == "en" and store.get_language(71) is None
    store.close()


def test_a_store_from_before_looks_gains_their_tables(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = Store(path)
    store.set_model(7, "unet")
    store._db.executescript("DROP TABLE chat_looks; DROP TABLE user_languages;")
    store.close()
    store = Store(path)  # as a store written by the previous version opens
    assert store.get_model(7) == "unet"
    store.set_look(7, background="blur")
    assert store.get_look(7) == ("blur", None)
    store.close()
