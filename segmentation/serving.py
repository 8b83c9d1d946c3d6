"""The Ray Serve backend of the engine interface: the networks on a cluster of autoscaled replicas.

`build_app(config)` is the Serve application: one deployment, `SegmentationReplica`, that holds the networks
and runs the whole path of a photo (decode, network, refine, encode) on its replica, so the bot host only
moves bytes. The network stage is `@serve.batch`ed: the photos a replica works on at once share a forward
pass when their tensors have the same shape. `RayServeEngine` is the client the bot uses, implementing
`segmentation.engine_api.Engine` with the same errors as the in-process engine. No Telegram here.

Started by `bgremover serve` (on a running cluster, or a local one for a try-out), or by the client itself
when it is given no cluster address.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from torch import nn

from segmentation import MODEL_NAMES
from segmentation.decoding import DEFAULT_MAX_PIXELS, ImageTooLargeError, UnsupportedImageError
from segmentation.effects import Look
from segmentation.engine import EngineConfig, InferenceEngine, _Job
from segmentation.engine_api import (
    EngineClosedError,
    ModelUnavailableError,
    QueueFullError,
    ReplicaFailedError,
    RequestTimeoutError,
)
from segmentation.pipeline import RemovalResult
from segmentation.predictor import Predictor
from segmentation.rendering import RenderOptions

__all__ = ["RayServeEngine", "SegmentationReplica", "ServingConfig", "build_app"]

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "segmentation"
# Errors that mean the replica (its actor) is gone, not that the photo was bad: worth one retry elsewhere.
REPLICA_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
# A pipeline thread never waits longer than this for its batched forward pass (a stuck batch must not hang it).
NETWORK_WAIT_S = 600.0
# How long a client that does not deploy waits for the application to be running, and how often it looks.
APP_WAIT_S = 300.0
APP_POLL_S = 2.0


@dataclass(frozen=True)
class ServingConfig:
    """The Serve application's shape (replicas, batching, limits) and the client's own bound."""

    app_name: str = "bgremover"
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0  # autoscaling aims at this many requests per replica
    max_ongoing_requests: int = 4  # photos one replica works on at once (its batch can be at most this)
    # Photos that may wait for a free replica, per caller process (Serve counts them in each handle's router);
    # beyond it Serve answers back-pressure, which the client turns into QueueFullError.
    max_queued_requests: int = 32
    batch_size: int = 4  # photos sharing one forward pass (1: no batching)
    batch_wait_s: float = 0.01  # how long a replica waits for a batch to fill
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica
    torch_threads: int = 0  # per replica; 0: the replica's reserved CPUs (at least 1)
    max_pixels: int = DEFAULT_MAX_PIXELS
    weights_dir: str | None = None  # on the replicas' machines; None: the weights shipped inside the package
    fast: bool | None = None  # bf16 + channels_last; None: where the replica's CPU supports bf16
    # Places this client holds at once (reserved for a download, or on the cluster); beyond it QueueFullError.
    pending_limit: int = 64
    # Seconds a re-render (another look, a sticker) may take on a replica before RequestTimeoutError.
    render_timeout_s: float = 120.0

    @classmethod
    def from_bot_settings(cls, settings: Any) -> ServingConfig:
        """The config a bot's settings (BOT_RAY_*, BOT_MAX_PIXELS, BOT_QUEUE_SIZE) describe."""
        return cls(
            app_name=settings.ray_app_name,
            min_replicas=settings.ray_min_replicas,
            max_replicas=settings.ray_max_replicas,
            target_ongoing_requests=settings.ray_target_ongoing_requests,
            max_ongoing_requests=settings.ray_max_ongoing_requests,
            max_queued_requests=settings.ray_max_queued_requests,
            batch_size=settings.ray_batch_size,
            batch_wait_s=settings.ray_batch_wait_s,
            max_pixels=settings.max_pixels,
            pending_limit=settings.queue_size + settings.ray_max_replicas * settings.ray_max_ongoing_requests,
            render_timeout_s=settings.request_timeout,
        )


class _BatchedNetwork(nn.Module):
    """Stands in for a network inside a Predictor: each forward call joins the replica's next batch.

    The predictor runs on a pipeline thread exactly as in the in-process engine; only its network call is
    handed to the replica's event loop, where `@serve.batch` gathers the calls of concurrent photos.
    """

    def __init__(self, network: nn.Module, name: str, replica: SegmentationReplica) -> None:
        super().__init__()
        self.network = network  # a submodule: parameters(), eval() and channels_last reach the real network
        self.model_name = name
        self._replica = replica

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Queue this call's tensor for the batched pass and wait for its logits."""
        replica = self._replica
        with replica.counter_lock:
            replica.network_calls += 1
        try:
            pending = asyncio.run_coroutine_threadsafe(replica.network_batch((self.model_name, batch)), replica.loop)
            return pending.result(NETWORK_WAIT_S)
        finally:
            with replica.counter_lock:
                replica.network_calls -= 1


class _ReplicaPipeline(InferenceEngine):
    """The in-process engine's own per-photo path (never started): the same code, so the same results."""

    def __init__(self, config: EngineConfig, wrap: Callable[[str, Predictor], Predictor], preset: dict) -> None:
        super().__init__(config, predictors={name: wrap(name, predictor) for name, predictor in preset.items()})
        self._wrap = wrap

    def predictor(self, name: str) -> Predictor:
        """Load on first use like the engine does, with the network behind the replica's batching."""
        if name not in self._predictors:
            with self._load_lock:
                if name not in self._predictors:
                    loaded = Predictor.from_weights(name, self.config.weights_dir, fast=self.config.fast)
                    self._predictors[name] = self._wrap(name, loaded)
        return self._predictors[name]


def _failure(error: Exception) -> tuple[str, Any]:
    """A known error as plain data (custom exception classes do not survive pickling reliably)."""
    if isinstance(error, ImageTooLargeError):
        return "too_large", (error.pixels, error.limit)
    if isinstance(error, UnsupportedImageError):
        return "unsupported", str(error)
    if isinstance(error, ModelUnavailableError):
        return "unavailable", str(error)
    if isinstance(error, ValueError):
        return "value", str(error)
    raise error


def _raise_failure(kind: str, detail: Any) -> None:
    if kind == "too_large":
        raise ImageTooLargeError(*detail)
    if kind == "unsupported":
        raise UnsupportedImageError(detail)
    if kind == "unavailable":
        raise ModelUnavailableError(detail)
    raise ValueError(detail)


class SegmentationReplica:
    """One Serve replica: the networks, the per-photo path on a few threads, and one batched network stage."""

    def __init__(
        self, config: ServingConfig, make_predictors: Callable[[], dict[str, Predictor]] | None = None
    ) -> None:
        threads = config.torch_threads or max(1, int(config.replica_cpus))
        torch.set_num_threads(threads)
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self._fast: dict[str, bool] = {}
        self._networks: dict[str, nn.Module] = {}
        engine_config = EngineConfig(
            max_pixels=config.max_pixels,
            weights_dir=Path(config.weights_dir) if config.weights_dir else None,
            fast=config.fast,
        )
        preset = make_predictors() if make_predictors is not None else {}
        self._pipeline = _ReplicaPipeline(engine_config, self._batched, preset)
        # The photos a replica takes at once each run on a thread; the network stage is one more thread.
        self._threads = ThreadPoolExecutor(config.max_ongoing_requests, "replica-photo")
        self._network_thread = ThreadPoolExecutor(1, "replica-network")
        self.network_batch.set_max_batch_size(config.batch_size)
        self.network_batch.set_batch_wait_timeout_s(config.batch_wait_s)
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of recent batches, for stats and tests
        self.network_calls = 0  # photos at the network stage: waiting for a batch, or in the running one
        self.counter_lock = threading.Lock()

    def _batched(self, name: str, predictor: Predictor) -> Predictor:
        self._networks[name] = predictor.model
        self._fast[name] = predictor.fast
        return Predictor(
            _BatchedNetwork(predictor.model, name, self),
            predictor.card,
            fast=predictor.fast,
            soft_band=predictor.soft_band,
            contrast=predictor.contrast,
            second_pass=predictor.second_pass,
        )

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def network_batch(self, calls: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The network stage of several photos at once: one forward pass per model and tensor shape."""
        self.batches.append(len(calls))
        return await asyncio.get_running_loop().run_in_executor(self._network_thread, self._forward, calls)

    def _forward(self, calls: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        groups: dict[tuple, list[int]] = {}
        for index, (name, tensor) in enumerate(calls):
            groups.setdefault((name, tuple(tensor.shape[1:]), tensor.dtype), []).append(index)
        outputs: list[torch.Tensor | None] = [None] * len(calls)
        for (name, _, _), indices in groups.items():
            tensors = [calls[index][1] for index in indices]
            # Autocast and inference mode are per thread: the caller's do not reach this one, so set them here.
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self._fast[name] else nullcontext()
            with torch.inference_mode(), autocast:
                logits = self._networks[name](torch.cat(tensors) if len(tensors) > 1 else tensors[0])
            for index, part in zip(indices, logits.split([t.shape[0] for t in tensors]), strict=True):
                outputs[index] = part
        return outputs

    async def remove(self, data: bytes, model: str, options: RenderOptions, look: Look | None) -> tuple[str, Any]:
        """One photo, the in-process engine's way: ("ok", result) or (error kind, detail)."""
        self.loop = asyncio.get_running_loop()
        job = _Job(data, model, options, future=None, look=look)
        try:
            return "ok", await self.loop.run_in_executor(self._threads, self._pipeline._run, job)
        except Exception as error:
            return _failure(error)

    async def recompose(self, data: bytes, matte: np.ndarray, look: Look) -> tuple[str, Any]:
        """A photo already seen, in another Look (no network)."""
        return await self._off_loop(self._pipeline._recompose_png, data, matte, look)

    async def sticker(self, data: bytes, matte: np.ndarray) -> tuple[str, Any]:
        """A sticker of a photo already seen (no network)."""
        return await self._off_loop(self._pipeline._sticker_webp, data, matte)

    async def _off_loop(self, function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
        try:
            return "ok", await asyncio.get_running_loop().run_in_executor(self._threads, function, *args)
        except Exception as error:
            return _failure(error)

    async def replica_stats(self) -> dict[str, Any]:
        """What one replica is doing: photos at its network stage, and the sizes of its recent batches."""
        return {"network_calls": self.network_calls, "batch_sizes": list(self.batches)}


def build_app(
    config: ServingConfig, make_predictors: Callable[[], dict[str, Predictor]] | None = None
) -> serve.Application:
    """The Serve application: the replica deployment with its autoscaling, concurrency and queue limits."""
    deployment = serve.deployment(
        SegmentationReplica,
        name=DEPLOYMENT_NAME,
        autoscaling_config={
            "min_replicas": config.min_replicas,
            "initial_replicas": max(1, config.min_replicas),
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        },
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        ray_actor_options={"num_cpus": config.replica_cpus},
    )
    return deployment.bind(config, make_predictors)


def deploy(config: ServingConfig, make_predictors: Callable[[], dict[str, Predictor]] | None = None) -> Any:
    """Start (or update) the Serve application on the connected cluster; returns its handle when ready."""
    return serve.run(build_app(config, make_predictors), name=config.app_name, route_prefix=None)


class _RayReservation:
    """A place held in the client's bound before the photo is at hand (see engine.Reservation)."""

    def __init__(self, engine: RayServeEngine) -> None:
        self._engine = engine
        self._held = True
        self._ticket: int | None = None

    @property
    def held(self) -> bool:
        """Whether the place is still reserved."""
        return self._held

    def ahead(self) -> int:
        """This bot's photos on the cluster before this one, beyond what the replicas can take at once."""
        return self._engine._ahead_of(self._ticket)

    async def submit(
        self,
        data: bytes,
        *,
        model: str = "deeplab",
        options: RenderOptions | None = None,
        timeout: float | None = None,
        look: Look | None = None,
    ) -> RemovalResult:
        """Send the photo to the cluster in the reserved place and wait for its result."""
        if not self._held:
            raise RuntimeError("this reservation was already used or released")
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        self._held = False
        return await self._engine._submit_reserved(self, data, model, options or RenderOptions(), timeout, look)

    def release(self) -> None:
        """Give the place back (idempotent; a no-op after submit)."""
        if self._held:
            self._held = False
            self._engine._reserved -= 1
            self._engine._notify_if_drained()

    async def __aenter__(self) -> _RayReservation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class RayServeEngine:
    """The engine interface over a Ray Serve application: same calls, same errors as the in-process engine."""

    def __init__(
        self,
        config: ServingConfig = ServingConfig(),
        *,
        address: str | None = None,
        deploy: bool = True,
        make_predictors: Callable[[], dict[str, Predictor]] | None = None,
    ) -> None:
        self.config = config
        self._address = address
        self._deploy = deploy
        self._make_predictors = make_predictors
        self._handle: Any = None
        self._closing = False
        self._closed = False
        self._reserved = 0
        self._calls: dict[int, asyncio.Future] = {}  # ticket -> the abort future of a call on the cluster
        self._renders: set[asyncio.Future] = set()  # the abort futures of re-renders on the cluster
        self._tickets = 0
        self._drained: asyncio.Event | None = None
        self._completed = 0
        self._failed = 0
        self._latencies: dict[str, deque[float]] = {name: deque(maxlen=1000) for name in MODEL_NAMES}
        self._start_lock = threading.Lock()

    def _connect(self) -> None:
        with self._start_lock:
            if self._handle is not None:
                return
            if not ray.is_initialized():
                ray.init(address=self._address, log_to_driver=False)
            if self._deploy:
                self._handle = deploy(self.config, self._make_predictors)
            else:
                self._handle = self._wait_for_app()

    def _wait_for_app(self) -> Any:
        # A bot started beside the cluster (docker compose) may come up before `bgremover serve` deployed.
        deadline = time.monotonic() + APP_WAIT_S
        while True:
            application = serve.status().applications.get(self.config.app_name)
            if application is not None and application.status == "RUNNING":
                return serve.get_app_handle(self.config.app_name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Serve application {self.config.app_name!r} is not running on the cluster")
            logger.info("waiting for the Serve application %r to be running", self.config.app_name)
            time.sleep(APP_POLL_S)

    async def start(self) -> None:
        """Connect to the cluster (a local one when no address was given) and, if asked, deploy the app."""
        self._drained = asyncio.Event()
        # Connecting and deploying block for seconds: keep the event loop free meanwhile.
        await asyncio.to_thread(self._connect)

    @property
    def queue_depth(self) -> int:
        """Places held for photos not sent to the cluster yet (downloading)."""
        return self._reserved

    @property
    def reserved(self) -> int:
        """Places reserved by callers that have not submitted their photo yet."""
        return self._reserved

    @property
    def in_flight(self) -> int:
        """This bot's photos on the cluster (waiting for a replica there, or running)."""
        return len(self._calls)

    @property
    def busy_threads(self) -> int:
        """Always 0: no inference runs in this process."""
        return 0

    @property
    def closed(self) -> bool:
        """Whether the engine has stopped taking requests."""
        return self._closing

    def _capacity(self) -> int:
        # What the replicas surely take at once: the minimum replicas (at least one) times their concurrency.
        return max(1, self.config.min_replicas) * self.config.max_ongoing_requests

    def ahead_of_next(self) -> int:
        """Photos before one submitted now, beyond what the (minimum) replicas take at once."""
        return max(0, len(self._calls) - self._capacity() + 1)

    def _ahead_of(self, ticket: int | None) -> int:
        if ticket is None or ticket not in self._calls:
            return 0
        before = sum(1 for other in self._calls if other < ticket)
        return max(0, before - self._capacity() + 1)

    def reserve(self) -> _RayReservation:
        """Take a place now; QueueFullError at once beyond the client's bound, EngineClosedError when closing."""
        if self._closing:
            raise EngineClosedError("the engine is shutting down")
        if self._reserved + len(self._calls) >= self.config.pending_limit:
            raise QueueFullError(f"the queue is full ({self.config.pending_limit} photos in progress)")
        self._reserved += 1
        return _RayReservation(self)

    async def submit(
        self,
        data: bytes,
        *,
        model: str = "deeplab",
        options: RenderOptions | None = None,
        timeout: float | None = None,
        look: Look | None = None,
    ) -> RemovalResult:
        """One photo through the cluster; the errors are the in-process engine's (see engine_api)."""
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        async with self.reserve() as place:
            return await place.submit(data, model=model, options=options, timeout=timeout, look=look)

    async def _submit_reserved(
        self,
        place: _RayReservation,
        data: bytes,
        model: str,
        options: RenderOptions,
        timeout: float | None,
        look: Look | None,
    ) -> RemovalResult:
        self._reserved -= 1
        if self._closed or self._handle is None:
            self._notify_if_drained()
            raise EngineClosedError("the engine shut down before this photo was processed")
        self._tickets += 1
        ticket = place._ticket = self._tickets
        abort = asyncio.get_running_loop().create_future()  # close() fails it when the bound is reached
        self._calls[ticket] = abort
        started = time.perf_counter()
        try:
            result: RemovalResult = await self._bounded(
                self._call("remove", data, model, options, look), abort, timeout, "result", "this photo was processed"
            )
        except (QueueFullError, EngineClosedError, RequestTimeoutError, ReplicaFailedError, ValueError):
            self._failed += 1
            raise
        finally:
            self._calls.pop(ticket, None)
            self._notify_if_drained()
        # Everything but the replica's own work: transfer, waiting for a replica, batching.
        result.timings["queue"] = max(0.0, time.perf_counter() - started - result.timings.get("total", 0.0))
        self._completed += 1
        self._latencies[model].append(result.timings["total"] + result.timings["queue"])
        return result

    async def _call(self, method: str, *args: Any) -> Any:
        """Call a replica method; a lost replica is retried once, then answered as ReplicaFailedError."""
        for attempt in (1, 2):
            response = getattr(self._handle, method).remote(*args)
            try:
                kind, payload = await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError:
                raise QueueFullError("the cluster is full: every replica is busy and its queue is full") from None
            except REPLICA_LOST as error:
                if attempt == 2:
                    raise ReplicaFailedError(f"the replica died twice running this request: {error}") from None
                logger.warning("a replica died running a request; retrying it once")
                continue
            if kind != "ok":
                _raise_failure(kind, payload)
            return payload
        raise AssertionError("unreachable")

    async def recompose(self, data: bytes, matte: np.ndarray, look: Look) -> bytes:
        """A photo already seen, rendered in another Look on a replica (no network)."""
        return await self._render("recompose", data, matte, look)

    async def sticker(self, data: bytes, matte: np.ndarray) -> bytes | None:
        """A 512 px WEBP sticker of a photo already seen, made on a replica; None when nobody is in it."""
        return await self._render("sticker", data, matte)

    async def _render(self, method: str, *args: Any) -> Any:
        """A re-render on a replica, bounded like a photo: render_timeout_s, then close()'s time left."""
        self._check_open()
        abort = asyncio.get_running_loop().create_future()  # close() fails it when the bound is reached
        self._renders.add(abort)
        try:
            call = self._call(method, *args)
            return await self._bounded(
                call, abort, self.config.render_timeout_s, "picture", "this picture was rendered"
            )
        finally:
            self._renders.discard(abort)
            self._notify_if_drained()

    @staticmethod
    async def _bounded(
        call: Coroutine[Any, Any, Any], abort: asyncio.Future, timeout: float | None, what: str, during: str
    ) -> Any:
        """A replica call's answer; RequestTimeoutError past timeout, EngineClosedError when close() aborts it."""
        task = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait({task, abort}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if abort in done:
                raise EngineClosedError(f"the engine shut down while {during}")
            raise RequestTimeoutError(f"no {what} within {timeout:g} s")
        finally:
            if not task.done():
                task.cancel()  # the request is cancelled on the cluster too
            elif not task.cancelled():
                task.exception()  # one that failed as the wait ran out: read, so asyncio does not report it as lost

    async def replica_stats(self) -> dict[str, Any]:
        """One replica's view (photos at its network stage, recent batch sizes); it takes one of its ongoing slots."""
        self._check_open()
        return await self._handle.replica_stats.remote()

    def _check_open(self) -> None:
        if self._closing or self._handle is None:
            raise EngineClosedError("the engine is shutting down")

    def _notify_if_drained(self) -> None:
        if self._drained is not None and self._reserved + len(self._calls) + len(self._renders) == 0:
            self._drained.set()

    def stats(self) -> dict[str, Any]:
        """Queue depth, in-flight work, counts and per-model latency percentiles (seconds), as seen by this client."""
        models = {}
        for name, latencies in self._latencies.items():
            values = np.array(latencies) if latencies else None
            models[name] = {
                "count": len(latencies),
                "p50": float(np.percentile(values, 50)) if values is not None else None,
                "p95": float(np.percentile(values, 95)) if values is not None else None,
                "loaded": True,
            }
        return {
            "queue_depth": self.queue_depth,
            "reserved": self.reserved,
            "in_flight": self.in_flight,
            "completed": self._completed,
            "failed": self._failed,
            "models": models,
            "backend": "ray",
            "config": asdict(self.config),
        }

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking photos; let those on the cluster finish within timeout; tell the rest EngineClosedError.

        The Serve application keeps running (other bots, or the next start, use it); only this client stops.
        """
        if self._closing:
            return
        self._closing = True
        if self._drained is None:
            self._closed = True
            return
        # The event was set every time the client went idle before: only what is outstanding now counts.
        self._drained.clear()
        self._notify_if_drained()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)
        self._closed = True
        for abort in [*self._calls.values(), *self._renders]:
            if not abort.done():
                abort.set_result(None)

    async def __aenter__(self) -> RayServeEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
