"""Reliability benchmark: memory per photo and over many photos, a burst through the bot, /stats at a million rows.

    python benchmarks/reliability.py [--quick] [--model deeplab|unet] [--weights-dir DIR]

Prints:
- peak resident memory of one 40 MP photo and of one 1280x960 photo through the engine, each in a fresh
  interpreter (model loaded and warmed up first, then the peak is reset, so the figure is what the photo adds);
- resident memory after 100 and after 1,000 small photos through the engine (20 and 100 with --quick);
- a burst of 3x the queue size through the bot (one photo per user) against the local Bot API stand-in of the
  tests, counting the answers: PNG, busy, another answer (timeout, apology, restarting), or nothing at all;
- the time of /stats' store query at a million request rows.
A script that prints figures, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the Bot API stand-in lives with the tests

MIB = 1024 * 1024


def resident_kib(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM to the current resident size (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def photo(width: int, height: int, seed: int = 0) -> bytes:
    """A person photo (the test fixture) on a noisy canvas of the given size, as a quality-90 JPEG."""
    from bot_fixtures import fixture_photo

    rng = np.random.default_rng(seed)
    canvas = rng.integers(90, 170, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(canvas)
    person = fixture_photo()
    scale = 0.9 * height / person.height
    person = person.resize((max(1, round(person.width * scale)), max(1, round(person.height * scale))))
    image.paste(person, ((width - person.width) // 2, height - person.height))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def engine_for(args: argparse.Namespace, queue_size: int = 32):
    """An engine on the shipped (or given) weights, as the bot builds it."""
    from segmentation.engine import EngineConfig, InferenceEngine

    weights = Path(args.weights_dir) if args.weights_dir else None
    return InferenceEngine(EngineConfig(queue_size=queue_size, workers=1, weights_dir=weights))


# ---------------------------------------------------------------------------------------------- child: one photo
async def _one_photo(args: argparse.Namespace) -> dict[str, float]:
    width, height = map(int, args.child_photo.split("x"))
    data = photo(width, height)
    async with engine_for(args) as engine:
        await engine.submit(photo(320, 240), model=args.model)  # load and warm up the model first
        loaded = resident_kib()
        reset_peak()
        started = time.perf_counter()
        await engine.submit(data, model=args.model)
        seconds = time.perf_counter() - started
        peak = resident_kib("VmHWM")
    return {"loaded_mib": loaded / 1024, "peak_mib": peak / 1024, "added_mib": (peak - loaded) / 1024, "s": seconds}


def peak_of_one_photo(args: argparse.Namespace, size: str) -> dict[str, float]:
    """Run one photo through the engine in a fresh interpreter, so peaks of different photos never mix."""
    command = [sys.executable, __file__, "--child-photo", size, "--model", args.model]
    if args.weights_dir:
        command += ["--weights-dir", args.weights_dir]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- many photos
async def rss_over_many_photos(args: argparse.Namespace, checkpoints: list[int]) -> dict[int, float]:
    """Resident memory (MiB) after each checkpoint count of small photos through the engine, 4 callers at a time."""
    photos = [photo(320, 240, seed) for seed in range(8)]
    figures: dict[int, float] = {}
    async with engine_for(args) as engine:
        await engine.submit(photos[0], model=args.model)
        figures[0] = resident_kib() / 1024
        done = 0
        for checkpoint in checkpoints:
            while done < checkpoint:
                batch = min(4, checkpoint - done)
                await asyncio.gather(*(engine.submit(photos[(done + i) % 8], model=args.model) for i in range(batch)))
                done += batch
            figures[checkpoint] = resident_kib() / 1024
    return figures


# ---------------------------------------------------------------------------------------------- burst via the bot
async def burst_through_the_bot(args: argparse.Namespace, queue_size: int) -> dict[str, int]:
    """3x queue_size photos from as many users at once; counts PNG answers, busy answers and silence."""
    from bot_fixtures import TOKEN, make_settings, running_bot
    from botapi_stub import BotApiStub

    from bot import texts

    stub = BotApiStub(TOKEN).start()
    photos = 3 * queue_size
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = make_settings(Path(tmp), stub, queue_size=queue_size, request_timeout=300.0, log_level="WARNING")
            async with running_bot(settings, engine_for(args, queue_size)):
                data = photo(640, 480)
                chats = range(5001, 5001 + photos)
                started = time.perf_counter()
                for chat in chats:
                    stub.push_photo(chat, data, (640, 480))

                def final(chat: int) -> bool:
                    shown = [t for t in stub.texts(chat) if not t.startswith("You're number")]
                    return bool(stub.documents(chat) or shown)

                deadline = time.monotonic() + 300
                while not all(final(chat) for chat in chats) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                seconds = time.perf_counter() - started
                await asyncio.sleep(0.5)  # any late extra message shows up now
            png = sum(1 for chat in chats if stub.documents(chat))
            busy = sum(1 for chat in chats if texts.BUSY in stub.texts(chat))
            # Any other final answer (a timeout, an apology, "restarting"): an answer, but not one hoped for.
            other = sum(1 for chat in chats if final(chat) and not stub.documents(chat)) - busy
            in_line = sum(
                1
                for chat in chats
                for m in stub.transcript(chat, include_deleted=True)
                if m.text and m.text.startswith("You're number")
            )
            downloads = len(stub.calls_of("download"))
    finally:
        stub.stop()
    return {
        "photos": photos,
        "png": png,
        "busy": busy,
        "other": other,
        "nothing": photos - png - busy - other,
        "in_line_messages": in_line,
        "downloads": downloads,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------- /stats at 1M rows
def stats_at_rows(rows: int, runs: int = 5) -> dict[str, float]:
    """Fill a store with `rows` request events over 30 days (plus their daily counts) and time Store.stats()."""
    from bot.outcomes import Outcome
    from bot.store import SECONDS_PER_DAY, Store

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bot.sqlite3"
        Store(path).close()  # the schema, as the bot creates it
        rng = np.random.default_rng(0)
        now = time.time()
        at = now - rng.random(rows) * 30 * SECONDS_PER_DAY
        chat = rng.integers(1, 50_000, rows)
        model = np.where(rng.random(rows) < 0.7, "deeplab", "unet")
        kinds = np.array([o.value for o in (Outcome.OK, Outcome.NO_PERSON, Outcome.BUSY, Outcome.NOT_IMAGE)])
        outcome = kinds[rng.choice(4, rows, p=[0.8, 0.1, 0.05, 0.05])]
        latency = np.where(np.isin(outcome, ["ok", "no_person"]), rng.gamma(2.0, 0.3, rows), np.nan)
        started = time.perf_counter()
        db = sqlite3.connect(path)
        with db:
            db.executemany(
                "INSERT INTO request_events (at, chat_id, model, outcome, latency_s) VALUES (?, ?, ?, ?, ?)",
                (
                    (float(a), int(c), str(m), str(o), None if np.isnan(lat) else float(lat))
                    for a, c, m, o, lat in zip(at, chat, model, outcome, latency, strict=True)
                ),
            )
            db.execute(
                "INSERT INTO daily_stats (day, model, outcome, count) "
                "SELECT CAST(at / 86400 AS INTEGER), model, outcome, COUNT(*) FROM request_events GROUP BY 1, 2, 3"
            )
            db.execute("INSERT OR IGNORE INTO chats (chat_id) SELECT DISTINCT chat_id FROM request_events")
        db.close()
        filled = time.perf_counter() - started
        store = Store(path)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            stats = store.stats()
            times.append(time.perf_counter() - started)
        pruned_started = time.perf_counter()
        deleted = store.prune(before=now - 29 * SECONDS_PER_DAY)  # one batch, as the bot's pruning task runs it
        prune_batch = time.perf_counter() - pruned_started
        store.close()
    return {
        "rows": rows,
        "total": stats.total,
        "fill_s": filled,
        "stats_p50_s": statistics.median(times),
        "stats_max_s": max(times),
        "prune_batch_rows": deleted,
        "prune_batch_s": prune_batch,
    }


def main() -> None:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and a smaller queue: about two minutes")
    parser.add_argument("--model", default="deeplab", choices=("deeplab", "unet"))
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--child-photo", default=None, help=argparse.SUPPRESS)  # internal: one photo, JSON out
    args = parser.parse_args()
    if args.child_photo:
        print(json.dumps(asyncio.run(_one_photo(args))))
        return

    import torch

    print(f"model {args.model}, torch {torch.__version__}, {'quick' if args.quick else 'full'} run")
    for size in ("7300x5475", "1280x960"):
        figures = peak_of_one_photo(args, size)
        print(
            f"one {size} photo: peak RSS {figures['peak_mib']:.0f} MiB = model loaded {figures['loaded_mib']:.0f} "
            f"MiB + {figures['added_mib']:.0f} MiB for the photo ({figures['s']:.2f} s)"
        )

    checkpoints = [20, 100] if args.quick else [100, 1000]
    started = time.perf_counter()
    rss = asyncio.run(rss_over_many_photos(args, checkpoints))
    line = ", ".join(f"after {count}: {mib:.0f} MiB" for count, mib in rss.items() if count)
    print(
        f"RSS through the engine (320x240 photos): warmed up {rss[0]:.0f} MiB; {line} "
        f"({time.perf_counter() - started:.0f} s)"
    )

    queue_size = 4 if args.quick else 8
    burst = asyncio.run(burst_through_the_bot(args, queue_size))
    print(
        f"burst of {burst['photos']} photos (3x queue {queue_size}) through the bot: {burst['png']} PNG, "
        f"{burst['busy']} busy, {burst['other']} other answers, {burst['nothing']} nothing; "
        f"{burst['in_line_messages']} place-in-line messages, "
        f"{burst['downloads']} downloads, {burst['seconds']:.1f} s"
    )

    stats = stats_at_rows(1_000_000)
    print(
        f"/stats at {stats['rows']:,} rows: p50 {stats['stats_p50_s'] * 1000:.0f} ms, max "
        f"{stats['stats_max_s'] * 1000:.0f} ms (filled in {stats['fill_s']:.0f} s); one prune batch of "
        f"{stats['prune_batch_rows']} rows {stats['prune_batch_s'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
