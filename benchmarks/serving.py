"""The local engine vs Ray Serve: photos per minute and the latency Serve adds per photo.

    python benchmarks/serving.py [--photos 24] [--concurrency 8] [--model deeplab] [--size 1280x960]

For the in-process engine (one worker) and for Ray Serve with one and two replicas, each with and without
batching, it prints: photos per minute with `--concurrency` photos in flight at once, and the p50 latency
of one photo at a time, with the latency Serve adds over the local engine (transfer, routing, batching
wait). Ray starts in-process on a local cluster with the CPUs this process may use. Needs the ray extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import photo_bytes

from segmentation.engine import EngineConfig, InferenceEngine
from segmentation.engine_api import Engine


async def one_at_a_time(engine: Engine, data: bytes, model: str, count: int) -> float:
    """The p50 latency (seconds) of `count` photos sent one after another."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await engine.submit(data, model=model)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


async def throughput(engine: Engine, data: bytes, model: str, photos: int, concurrency: int) -> float:
    """Photos per minute with `concurrency` photos in flight at once."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await engine.submit(data, model=model)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(photos)))
    return photos / (time.perf_counter() - started) * 60


async def measure(engine: Engine, data: bytes, args: argparse.Namespace) -> tuple[float, float]:
    """Warm the engine up (models loaded, replicas ready), then (photos per minute, p50 latency)."""
    await engine.submit(data, model=args.model)
    latency = await one_at_a_time(engine, data, args.model, args.sequential)
    per_minute = await throughput(engine, data, args.model, args.photos, args.concurrency)
    return per_minute, latency


async def main() -> None:
    """Run every configuration and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24, help="photos per throughput run")
    parser.add_argument("--sequential", type=int, default=5, help="photos for the one-at-a-time latency")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", default="deeplab")
    parser.add_argument("--size", default="1280x960")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    data = photo_bytes(width, height)
    cpus = len(os.sched_getaffinity(0))
    print(f"{platform.processor() or platform.machine()}, {cpus} CPU(s) for this process; {args.model} {args.size}")
    print(f"{args.photos} photos, {args.concurrency} in flight; latency: p50 of {args.sequential} one at a time")

    rows = []
    async with InferenceEngine(EngineConfig(queue_size=args.photos + 1, workers=1)) as local:
        local_rate, local_latency = await measure(local, data, args)
    rows.append(("local engine, 1 worker", local_rate, local_latency))

    import ray
    from ray import serve

    from segmentation.serving import RayServeEngine, ServingConfig

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for replicas in (1, 2):
            for batch_size in (1, 4):
                config = ServingConfig(
                    app_name=f"bench-{replicas}-{batch_size}",
                    min_replicas=replicas,
                    max_replicas=replicas,
                    max_ongoing_requests=4,
                    max_queued_requests=args.photos,
                    batch_size=batch_size,
                    batch_wait_s=0.01,
                    # Replicas share the CPUs given to this process: none reserved, torch split between them.
                    replica_cpus=0,
                    torch_threads=max(1, cpus // replicas),
                    pending_limit=args.photos + 1,
                )
                async with RayServeEngine(config) as engine:
                    rate, latency = await measure(engine, data, args)
                serve.delete(config.app_name)
                batching = f"batch up to {batch_size}" if batch_size > 1 else "no batching"
                rows.append((f"Ray Serve, {replicas} replica(s), {batching}", rate, latency))
    finally:
        serve.shutdown()
        ray.shutdown()

    # Once more at the end: on a shared machine the load drifts, and this row shows by how much.
    async with InferenceEngine(EngineConfig(queue_size=args.photos + 1, workers=1)) as local:
        rate, latency = await measure(local, data, args)
    rows.append(("local engine, 1 worker (again, at the end)", rate, latency))

    print(f"\n{'configuration':44} {'photos/min':>10} {'p50 s':>7} {'added s':>8}")
    for name, rate, latency in rows:
        print(f"{name:44} {rate:10.0f} {latency:7.3f} {latency - local_latency:+8.3f}")


if __name__ == "__main__":
    asyncio.run(main())
