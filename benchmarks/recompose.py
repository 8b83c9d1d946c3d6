"""Re-compose benchmark: a result button answered from the cache vs the first answer, and the cache's memory.

    python benchmarks/recompose.py [--runs 5] [--model deeplab] [--weights-dir DIR]

For a 1280x960 photo (what Telegram delivers for a compressed photo) and a 4000x3000 one, prints the p50 over
several runs of the first answer (engine.submit: decode, network, refine, render, encode; the queue is empty)
and of re-composing the cached photo and matte in another look (engine.recompose / engine.sticker: decode,
render, encode, no network), then what the bot's matte cache holds at its default limits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere: the sibling module

from inference import photo_bytes

from bot.config import Settings
from bot.matte_cache import CachedPhoto, MatteCache
from segmentation.engine import EngineConfig, InferenceEngine, Look

SIZES = ((1280, 960), (4000, 3000))
LOOKS = {"white": Look("white"), "blur": Look("blur"), "colour": Look("#1e88e5"), "crop": Look("transparent", True)}


async def p50(make: Callable[[], Awaitable[object]], runs: int) -> float:
    """The median seconds of `runs` awaits of make() (after one warm-up)."""
    await make()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await make()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def measure(model: str, weights_dir: Path | None, runs: int) -> None:
    """Print first answer vs re-compose per size, and the cache's holding per size at the default limits."""
    config = EngineConfig(queue_size=4, workers=1, weights_dir=weights_dir)
    defaults = Settings.model_fields
    cache_entries, cache_bytes = defaults["cache_entries"].default, defaults["cache_bytes"].default
    print(f"model {model}, p50 of {runs} runs, seconds (ratio: re-compose / first answer)")
    print(f"{'photo':>10} {'first':>7} " + " ".join(f"{name:>14}" for name in (*LOOKS, "sticker")))
    holdings = []
    async with InferenceEngine(config) as engine:
        for width, height in SIZES:
            data = photo_bytes(width, height)
            matte = (await engine.submit(data, model=model, look=Look())).matte
            first = await p50(lambda data=data: engine.submit(data, model=model, look=Look()), runs)
            cells = []
            for look in LOOKS.values():
                seconds = await p50(lambda data=data, matte=matte, look=look: engine.recompose(data, matte, look), runs)
                cells.append(f"{seconds:6.3f} ({seconds / first:4.0%})")
            seconds = await p50(lambda data=data, matte=matte: engine.sticker(data, matte), runs)
            cells.append(f"{seconds:6.3f} ({seconds / first:4.0%})")
            print(f"{width}x{height:<5} {first:7.3f} " + " ".join(f"{cell:>14}" for cell in cells))
            holdings.append((width, height, len(data), matte.nbytes))
    print(f"\nmatte cache at its defaults: {cache_entries} photos, {cache_bytes / 1e6:.0f} MB, one hour")
    for width, height, file_bytes, matte_bytes in holdings:
        cache = MatteCache(cache_entries, cache_bytes, 3600)
        for _ in range(cache_entries + 10):  # more photos than it may hold (a stand-in matte of the same bytes)
            cache.put(CachedPhoto(1, b"\0" * file_bytes, np.zeros(matte_bytes, np.uint8), model, "photo", True))
        per_photo = (file_bytes + matte_bytes) / 1e6
        print(
            f"{width}x{height}: {per_photo:.1f} MB a photo (JPEG {file_bytes / 1e6:.1f}"
            f" + matte {matte_bytes / 1e6:.1f}), full cache {len(cache)} photos, {cache.nbytes / 1e6:.0f} MB"
        )


def main() -> None:
    """Parse arguments and run the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default="deeplab")
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(measure(args.model, args.weights_dir, args.runs))


if __name__ == "__main__":
    main()
