"""The asyncio inference engine: a bounded queue in front of a pool of inference threads.

`await engine.submit(data, model=...)` is the whole interface (`segmentation.engine_api.Engine`, which this
engine implements; `segmentation.serving` is the Ray Serve backend of the same interface). A caller that must do work
before it has the photo (a download) takes its place first: `async with engine.reserve() as place:`
refuses at once when the queue is full, and `await place.submit(...)` uses the reserved slot.

For the bot's one-tap redo, `submit(..., look=Look(...))` also returns the uint8 matte (a `CutoutResult`), and
`recompose(data, matte, look)` / `sticker(data, matte)` render a cached photo again on a small thread pool of their
own: no network, and never an inference worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segmentation import MODEL_NAMES, effects
from segmentation.cpu import configure_torch_threads
from segmentation.decoding import DEFAULT_MAX_PIXELS, decode_image
from segmentation.effects import Look
from segmentation.engine_api import (
    EngineClosedError,
    ModelUnavailableError,
    QueueFullError,
    RequestTimeoutError,
)
from segmentation.pipeline import MIN_PERSON_FRACTION, RemovalResult, person_share, remove_background
from segmentation.predictor import Predictor
from segmentation.rendering import RenderOptions
from segmentation.weights_io import WeightsError

__all__ = [
    "CutoutResult",
    "EngineClosedError",
    "EngineConfig",
    "InferenceEngine",
    "Look",
    "ModelUnavailableError",
    "QueueFullError",
    "RemovalResult",
    "RequestTimeoutError",
    "Reservation",
]


@dataclass
class CutoutResult(RemovalResult):
    """A result rendered in a Look, with the uint8 matte it was made from (for a cache of recent photos)."""

    matte: np.ndarray | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Queue size, worker count, input limits and where the weights are."""

    queue_size: int = 32
    workers: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    weights_dir: Path | None = None  # None: the weights shipped inside the package
    torch_threads: int = 0  # 0: the cores this process may use, shared evenly between the workers
    recompose_threads: int = 2  # re-renders of cached photos (no network); they never take an inference worker
    fast: bool | None = None  # bf16 + channels_last; None: where the CPU supports bf16


class _JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    ABANDONED = "abandoned"  # its caller went away (cancelled, timed out) before a worker took it
    DONE = "done"


@dataclass
class _Job:
    data: bytes
    model: str
    options: RenderOptions
    future: asyncio.Future
    look: Look | None = None
    state: _JobState = _JobState.QUEUED
    enqueued: float = field(default_factory=time.perf_counter)


class _DaemonThreadPool(Executor):
    """A fixed pool of daemon threads: unlike ThreadPoolExecutor, the interpreter does not join them at exit.

    A running inference cannot be interrupted; with daemon threads a bounded shutdown stays bounded even
    when one is still busy, instead of the process hanging in its exit until the photo is done.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        self._busy = 0
        self._busy_lock = threading.Lock()
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> int:
        """Threads running a call right now."""
        return self._busy

    def _serve(self) -> None:
        while (item := self._tasks.get()) is not None:
            future, function, args = item
            if not future.set_running_or_notify_cancel():
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                future.set_result(function(*args))
            except BaseException as error:
                future.set_exception(error)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run function(*args) on a pool thread."""
        future: Future = Future()
        self._tasks.put((future, functools.partial(function, *args, **kwargs), ()))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let each thread finish its current call and end; waits for that only when asked to."""
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class Reservation:
    """A place in the engine's queue, held before the photo is at hand (e.g. while it downloads).

    Use it as an async context manager: leaving the block gives the place back unless `submit` used it.
    """

    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine
        self._held = True
        self._job: _Job | None = None

    def ahead(self) -> int:
        """Photos that must finish before this one starts, once submitted (0 when it runs, is done, or is not in)."""
        return self._engine._ahead_of(self._job)

    @property
    def held(self) -> bool:
        """Whether the place is still reserved (neither used by submit nor released)."""
        return self._held

    async def submit(
        self,
        data: bytes,
        *,
        model: str = "deeplab",
        options: RenderOptions | None = None,
        timeout: float | None = None,
        look: Look | None = None,
    ) -> RemovalResult:
        """Queue the photo in the reserved place and wait for its result (see InferenceEngine.submit)."""
        if not self._held:
            raise RuntimeError("this reservation was already used or released")
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        self._held = False
        return await self._engine._submit_reserved(data, model, options or RenderOptions(), timeout, look, self)

    def release(self) -> None:
        """Give the place back (idempotent; a no-op after submit)."""
        if self._held:
            self._held = False
            self._engine._release_reservation()

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class InferenceEngine:
    """Runs background removal for many concurrent callers on a fixed pool of worker threads."""

    def __init__(self, config: EngineConfig = EngineConfig(), predictors: dict[str, Predictor] | None = None) -> None:
        self.config = config
        self._predictors: dict[str, Predictor] = dict(predictors or {})
        self._load_lock = threading.Lock()
        self._queue: asyncio.Queue[_Job] | None = None
        self._workers: list[asyncio.Task] = []
        self._executor: _DaemonThreadPool | None = None
        self._closing = False  # no new places; reserved and queued work may still finish
        self._closed = False  # nothing runs any more
        self._drained: asyncio.Event | None = None
        # Places taken: reserved (the photo is not here yet) and waiting (queued, not cancelled, not started).
        self._reserved = 0
        self._waiting = 0
        self._in_flight = 0
        self._completed = 0
        self._failed = 0
        self._latencies: dict[str, deque[float]] = {name: deque(maxlen=1000) for name in MODEL_NAMES}
        # Queued jobs in arrival order (dicts keep it), for each caller's place in line.
        self._waiting_jobs: dict[int, _Job] = {}
        self._recompose_pool: ThreadPoolExecutor | None = None
        # Re-renders in progress (queued on or running in the pool), so that close() can wait for or end them.
        self._recomposing: set[asyncio.Future] = set()

    def _start(self) -> None:
        if self._queue is not None:
            return
        configure_torch_threads(self.config.workers, self.config.torch_threads)
        # Unbounded: the queue_size bound is enforced by reserve(), which also counts reserved places.
        self._queue = asyncio.Queue()
        self._drained = asyncio.Event()
        self._executor = _DaemonThreadPool(self.config.workers, "inference")
        self._recompose_pool = ThreadPoolExecutor(max(1, self.config.recompose_threads), "recompose")
        self._workers = [asyncio.create_task(self._work(), name=f"inference-{i}") for i in range(self.config.workers)]

    async def start(self) -> None:
        """Start the worker tasks and set torch's thread count; models load lazily on first use."""
        self._start()

    @property
    def queue_depth(self) -> int:
        """Requests accepted and waiting for a worker (reserved places whose photo is not here yet excluded)."""
        return self._waiting

    @property
    def reserved(self) -> int:
        """Places reserved by callers that have not submitted their photo yet."""
        return self._reserved

    @property
    def in_flight(self) -> int:
        """Requests being processed right now."""
        return self._in_flight

    @property
    def busy_threads(self) -> int:
        """Inference threads still computing (a photo whose caller is gone included)."""
        return self._executor.busy if self._executor else 0

    @property
    def closed(self) -> bool:
        """Whether the engine has stopped taking requests."""
        return self._closing

    def ahead_of_next(self) -> int:
        """Photos that must finish before one submitted now starts: the waiting ones, plus busy workers."""
        return self._waiting + max(0, self._in_flight - self.config.workers + 1)

    def _ahead_of(self, job: _Job | None) -> int:
        if job is None or job.state is not _JobState.QUEUED:
            return 0
        before = 0
        for waiting in self._waiting_jobs.values():  # at most queue_size entries
            if waiting is job:
                break
            before += 1
        return before + max(0, self._in_flight - self.config.workers + 1)

    def reserve(self) -> Reservation:
        """Take a place in the queue now, before the photo is at hand; QueueFullError at once when there is none."""
        if self._closing:
            raise EngineClosedError("the engine is shutting down")
        self._start()
        # An idle worker is a place too: the photo it will take never waits in the queue.
        idle_workers = max(0, self.config.workers - self._in_flight)
        if self._reserved + self._waiting >= self.config.queue_size + idle_workers:
            raise QueueFullError(f"the queue is full ({self.config.queue_size} waiting)")
        self._reserved += 1
        return Reservation(self)

    async def submit(
        self,
        data: bytes,
        *,
        model: str = "deeplab",
        options: RenderOptions | None = None,
        timeout: float | None = None,
        look: Look | None = None,
    ) -> RemovalResult:
        """Queue one photo and wait for its result; refuses at once when the queue is full.

        With `look`, the result is rendered in that Look and is a CutoutResult carrying the uint8 matte.
        Cancelling the caller (or its timeout) cancels a photo that has not started; one already running
        finishes on its thread, but its caller is released at once and the result is dropped.
        """
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        async with self.reserve() as place:
            return await place.submit(data, model=model, options=options, timeout=timeout, look=look)

    async def recompose(self, data: bytes, matte: np.ndarray, look: Look) -> bytes:
        """Render a photo already seen (its file bytes and uint8 matte) in another Look, as a PNG; no network.

        Runs on the re-compose threads, never on an inference worker, so it does not wait behind the queue.
        """
        return await self._off_loop(self._recompose_png, data, matte, look)

    async def sticker(self, data: bytes, matte: np.ndarray) -> bytes | None:
        """A 512 px WEBP sticker of the people in a photo already seen; None when there is nobody in it."""
        return await self._off_loop(self._sticker_webp, data, matte)

    async def _off_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._closing:
            raise EngineClosedError("the engine is shutting down")
        self._start()
        future = asyncio.get_running_loop().run_in_executor(self._recompose_pool, function, *args)
        self._recomposing.add(future)
        try:
            return await future
        except asyncio.CancelledError:
            # close() ended this re-render, not our caller: tell the caller as every photo is told.
            task = asyncio.current_task()
            if future.cancelled() and self._closing and (task is None or not task.cancelling()):
                raise EngineClosedError("the engine shut down before this picture was rendered") from None
            raise
        finally:
            self._recomposing.discard(future)

    def _decode_for(self, data: bytes, matte: np.ndarray) -> Image.Image:
        image = decode_image(data, max_pixels=self.config.max_pixels)
        if matte.shape != (image.height, image.width):
            raise ValueError("the matte does not belong to this photo")
        return image

    def _recompose_png(self, data: bytes, matte: np.ndarray, look: Look) -> bytes:
        return effects.render_png(self._decode_for(data, matte), matte, look, in_place=True)

    def _sticker_webp(self, data: bytes, matte: np.ndarray) -> bytes | None:
        return effects.sticker_webp(self._decode_for(data, matte), matte)

    def _release_reservation(self) -> None:
        self._reserved -= 1
        self._notify_if_drained()

    def _notify_if_drained(self) -> None:
        if self._drained is not None and self._reserved + self._waiting + self._in_flight == 0:
            self._drained.set()

    async def _submit_reserved(
        self,
        data: bytes,
        model: str,
        options: RenderOptions,
        timeout: float | None,
        look: Look | None = None,
        place: Reservation | None = None,
    ) -> RemovalResult:
        self._reserved -= 1
        if self._closed:
            self._notify_if_drained()
            raise EngineClosedError("the engine shut down before this photo was processed")
        job = _Job(data, model, options, asyncio.get_running_loop().create_future(), look)
        if place is not None:
            place._job = job
        self._waiting += 1
        self._waiting_jobs[id(job)] = job
        self._queue.put_nowait(job)
        try:
            # No shield: when the caller is cancelled or times out, wait_for cancels the job's future too.
            return await asyncio.wait_for(job.future, timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"no result within {timeout:g} s") from None
        finally:
            if job.state is _JobState.QUEUED:  # never started: give its place back now, the worker skips it
                job.state = _JobState.ABANDONED
                self._waiting_jobs.pop(id(job), None)
                self._waiting -= 1
                self._notify_if_drained()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.state is not _JobState.QUEUED:  # its caller is gone, or close() answered it
                continue
            job.state = _JobState.RUNNING
            self._waiting_jobs.pop(id(job), None)
            self._waiting -= 1
            self._in_flight += 1
            queued = time.perf_counter() - job.enqueued
            try:
                result = await loop.run_in_executor(self._executor, self._run, job)
            except asyncio.CancelledError:
                if not job.future.done():
                    job.future.set_exception(EngineClosedError("the engine shut down while this photo was processed"))
                raise
            except Exception as error:
                self._failed += 1
                if not job.future.done():
                    job.future.set_exception(error)
            else:
                result.timings["queue"] = queued
                self._completed += 1
                self._latencies[job.model].append(result.timings["total"] + queued)
                if not job.future.done():  # a cancelled caller's result is simply dropped
                    job.future.set_result(result)
            finally:
                job.state = _JobState.DONE
                self._in_flight -= 1
                self._notify_if_drained()

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

        if job.look is None:
            return remove_background(job.data, load, job.options, max_pixels=self.config.max_pixels)
        return self._cutout(job.data, load, job.look)

    def _cutout(self, data: bytes, load: Callable[[], Predictor], look: Look) -> CutoutResult:
        """Decode, predict the uint8 matte, render the Look; the matte comes back for the caller's cache."""
        started = time.perf_counter()
        image = decode_image(data, max_pixels=self.config.max_pixels)
        decoded = time.perf_counter()
        predictor = load()  # after decoding: a bad upload gets its own answer even when the model cannot load
        matte, timings = predictor.predict_alpha8_timed(image)
        foreground = person_share(matte, predictor.threshold8)
        composed = time.perf_counter()
        png = effects.render_png(image, matte, look, in_place=True)  # the photo was decoded for this result only
        finished = time.perf_counter()
        return CutoutResult(
            png=png,
            width=image.width,
            height=image.height,
            model=predictor.name,
            timings={
                "decode": decoded - started,
                **timings,
                "encode": finished - composed,
                "total": finished - started,
            },
            foreground_fraction=foreground,
            person_found=foreground >= MIN_PERSON_FRACTION,
            matte=matte,
        )

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
            "reserved": self.reserved,
            "in_flight": self.in_flight,
            "completed": self._completed,
            "failed": self._failed,
            "models": models,
        }

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests; let accepted work (reserved, queued, running) finish within timeout; answer the rest.

        Returns within about `timeout` even when an inference is still running: its thread is a daemon thread,
        its caller is told the engine shut down, and the process may exit without waiting for it.
        """
        if self._closing:
            return
        self._closing = True
        if self._queue is None:
            self._closed = True
            return
        deadline = asyncio.get_running_loop().time() + timeout
        # The event was set every time the engine went idle before: only what is outstanding now counts.
        self._drained.clear()
        self._notify_if_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)
        # Re-renders take a moment: those under way get what is left of the time, then end like queued photos.
        if self._recomposing:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(set(self._recomposing), timeout=remaining)
            for future in list(self._recomposing):
                future.cancel()
        self._closed = True  # from here a reserved place that submits is told the engine shut down
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job.state is _JobState.QUEUED:
                job.state = _JobState.DONE
                self._waiting_jobs.pop(id(job), None)
                self._waiting -= 1
                if not job.future.done():
                    job.future.set_exception(EngineClosedError("the engine shut down before this photo was processed"))
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False)
        self._recompose_pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> InferenceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
