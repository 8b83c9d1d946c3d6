"""Inference benchmark: per-stage and end-to-end time, peak memory and engine throughput.

    python benchmarks/inference.py [--runs 7] [--weights-dir DIR]

Prints, per model, the p50 over several runs of decode, predict, refine, encode and end to end for a
1280x960 photo (what Telegram delivers for a compressed photo) and a 4000x3000 photo; the peak
resident memory with both models loaded; and engine throughput with 8 concurrent submits.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from segmentation.cpu import cpu_supports_bf16, use_bf16
from segmentation.engine import EngineConfig, InferenceEngine
from segmentation.models import MODEL_NAMES
from segmentation.pipeline import remove_background
from segmentation.predictor import Predictor

SAMPLE = Path(__file__).resolve().parent.parent / "segmentation" / "samples" / "street.jpg"
STAGES = ("decode", "predict", "refine", "encode", "total")


def photo_bytes(width: int, height: int) -> bytes:
    """The sample photo placed on a canvas of the given size, as a quality-90 JPEG like a phone's."""
    person = Image.open(SAMPLE).convert("RGB")
    canvas = Image.new("RGB", (width, height), (128, 140, 150))
    scale = 0.9 * height / person.height
    person = person.resize((round(person.width * scale), round(person.height * scale)), Image.Resampling.LANCZOS)
    canvas.paste(person, ((width - person.width) // 2, height - person.height))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def stage_times(predictor: Predictor, data: bytes, runs: int) -> dict[str, float]:
    """p50 of each stage over runs, after one warm-up run."""
    remove_background(data, predictor)
    samples = [remove_background(data, predictor).timings for _ in range(runs)]
    return {stage: statistics.median(t[stage] for t in samples) for stage in STAGES}


async def throughput(weights_dir: Path | None, model: str, data: bytes, requests: int = 8, rounds: int = 2) -> float:
    """Photos per minute through the engine with `requests` concurrent submits."""
    async with InferenceEngine(EngineConfig(queue_size=requests, workers=1, weights_dir=weights_dir)) as engine:
        await engine.submit(data, model=model)  # load the model and warm up
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(engine.submit(data, model=model) for _ in range(requests)))
        return requests * rounds / (time.perf_counter() - started) * 60


def main() -> None:
    """Run every measurement and print a table."""
    parser = argparse.ArgumentParser(description="inference benchmark")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()
    predictors = {name: Predictor.from_weights(name, args.weights_dir) for name in MODEL_NAMES}
    layout = "channels_last" if any(p.channels_last for p in predictors.values()) else "default"
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"bf16 units: {cpu_supports_bf16()}, bf16 autocast: {use_bf16()}, layout: {layout}, torch {torch.__version__}"
    )
    photos = {"1280x960": photo_bytes(1280, 960), "4000x3000": photo_bytes(4000, 3000)}
    print(f"\n{'model':8} {'photo':10} " + " ".join(f"{s:>8}" for s in STAGES) + "   (seconds, p50)")
    for name, predictor in predictors.items():
        for label, data in photos.items():
            times = stage_times(predictor, data, args.runs)
            print(f"{name:8} {label:10} " + " ".join(f"{times[s]:8.3f}" for s in STAGES))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory over the run (both models loaded, photos up to 4000x3000): {peak_mb:.0f} MB")
    for name in MODEL_NAMES:
        rate = asyncio.run(throughput(args.weights_dir, name, photos["1280x960"]))
        print(f"engine throughput, {name}, 1280x960, 8 concurrent submits: {rate:.0f} photos/minute")


if __name__ == "__main__":
    main()
