"""The asyncio inference engine: a bounded queue in front of a pool of inference threads.

`await engine.submit(data, model=...)` is the whole interface; a deployment that outgrows one
machine can put a distributed serving engine behind the same call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmentation import MODEL_NAMES
from segmentation.decoding import DEFAULT_MAX_PIXELS
from segmentation.pipeline import RemovalResult, remove_background
from segmentation.predictor import Predictor
from segmentation.rendering import RenderOptions
from segmentation.weights_io import WeightsError

__all__ = [
    "EngineClosedError",
    "EngineConfig",
    "InferenceEngine",
    "ModelUnavailableError",
    "QueueFullError",
    "RemovalResult",
    "RequestTimeoutError",
]


class QueueFullError(RuntimeError):
    """The queue is full: the request was refused at once instead of waiting."""


class EngineClosedError(RuntimeError):
    """The engine was shut down before this request could run."""


class ModelUnavailableError(RuntimeError):
    """The requested model's weights are missing or broken on this server."""


class RequestTimeoutError(TimeoutError):
    """The request did not finish within its timeout."""


@dataclass(frozen=True)
class EngineConfig:
    """Queue size, worker count, input limits and where the weights are."""

    queue_size: int = 32
    workers: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    weights_dir: Path | None = None  # None: the weights shipped inside the package
    torch_threads: int = 0  # 0: the machine's cores shared evenly between the workers
    fast: bool | None = None  # bf16 + channels_last; None: where the CPU supports bf16


@dataclass
class _Job:
    data: bytes
    model: str
    options: RenderOptions
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class InferenceEngine:
    """Runs background removal for many concurrent callers on a fixed pool of worker threads."""

    def __init__(self, config: EngineConfig = EngineConfig(), predictors: dict[str, Predictor] | None = None) -> None:
        self.config = config
        self._predictors: dict[str, Predictor] = dict(predictors or {})
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue[_Job] | None = None
        self._workers: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._in_flight = 0
        self._completed = 0
        self._failed = 0
        self._latencies: dict[str, deque[float]] = {name: deque(maxlen=1000) for name in MODEL_NAMES}

    async def start(self) -> None:
        """Start the worker tasks; models load lazily on first use."""
        if self._queue is not None:
            return
        threads = self.config.torch_threads or max(1, (os.cpu_count() or 1) // self.config.workers)
        torch.set_num_threads(threads)
        self._queue = asyncio.Queue(maxsize=self.config.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="inference")
        self._workers = [asyncio.create_task(self._work(), name=f"inference-{i}") for i in range(self.config.workers)]

    @property
    def queue_depth(self) -> int:
        """Requests accepted and waiting for a worker."""
        return self._queue.qsize() if self._queue else 0

    @property
    def in_flight(self) -> int:
        """Requests being processed right now."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        """Whether the engine has stopped taking requests."""
        return self._closed

    async def submit(
        self, data: bytes, *, model: str = "deeplab", options: RenderOptions | None = None, timeout: float | None = None
    ) -> RemovalResult:
        """Queue one photo and wait for its result; refuses at once when the queue is full."""
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        if self._closed:
            raise EngineClosedError("the engine is shutting down")
        if self._queue is None:
            await self.start()
        job = _Job(data, model, options or RenderOptions(), asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(f"the queue is full ({self.config.queue_size} waiting)") from None
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            # A worker skips a job whose future is already done, so a timed-out job costs nothing later.
            if not job.future.done():
                job.future.cancel()
            raise RequestTimeoutError(f"no result within {timeout:g} s") from None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            try:
                if job.future.done():  # timed out or cancelled while it waited
                    continue
                self._in_flight += 1
                queued = time.perf_counter() - job.enqueued
                try:
                    result = await loop.run_in_executor(self._executor, self._run, job)
                except asyncio.CancelledError:
                    if not job.future.done():
                        error = EngineClosedError("the engine shut down while this photo was processed")
                        job.future.set_exception(error)
                    raise
                except Exception as error:
                    self._failed += 1
                    if not job.future.done():
                        job.future.set_exception(error)
                else:
                    result.timings["queue"] = queued
                    self._completed += 1
                    self._latencies[job.model].append(result.timings["total"] + queued)
                    if not job.future.done():
                        job.future.set_result(result)
                finally:
                    self._in_flight -= 1
            finally:
                self._queue.task_done()

    def predictor(self, name: str) -> Predictor:
        """The predictor of a model, loading its weights on first use (thread-safe, once)."""
        if name not in self._predictors:
            with self._load_lock:
                if name not in self._predictors:
                    weights_dir, fast = self.config.weights_dir, self.config.fast
                    self._predictors[name] = Predictor.from_weights(name, weights_dir, fast=fast)
        return self._predictors[name]

    def _run(self, job: _Job) -> RemovalResult:
        def load() -> Predictor:
            try:
                return self.predictor(job.model)
            except WeightsError as error:
                raise ModelUnavailableError(f"the {job.model} model is not available: {error}") from None

        return remove_background(job.data, load, job.options, max_pixels=self.config.max_pixels)

    def stats(self) -> dict[str, Any]:
        """Queue depth, in-flight work, counts and per-model latency percentiles (seconds)."""
        models = {}
        for name, latencies in self._latencies.items():
            values = np.array(latencies) if latencies else None
            models[name] = {
                "count": len(latencies),
                "p50": float(np.percentile(values, 50)) if values is not None else None,
                "p95": float(np.percentile(values, 95)) if values is not None else None,
                "loaded": name in self._predictors,
            }
        return {
            "queue_depth": self.queue_depth,
            "in_flight": self.in_flight,
            "completed": self._completed,
            "failed": self._failed,
            "models": models,
        }

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, let accepted work finish within timeout, then cancel what is left."""
        if self._closed:
            return
        self._closed = True
        if self._queue is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(EngineClosedError("the engine shut down before this photo was processed"))
            self._queue.task_done()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        # A thread mid-inference cannot be interrupted; its caller has its answer already, so don't wait.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> InferenceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
