"""The engine interface the bot depends on, and the errors every backend raises (no torch, no Ray here).

Two backends implement it: `segmentation.engine.InferenceEngine` (in-process, the default) and
`segmentation.serving.RayServeEngine` (a client of a Ray Serve application). A caller that handles these
errors handles both backends alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the result types live with the pipeline, which needs torch
    import numpy as np

    from segmentation.effects import Look
    from segmentation.pipeline import RemovalResult
    from segmentation.rendering import RenderOptions

__all__ = [
    "Engine",
    "EngineClosedError",
    "EngineReservation",
    "ModelUnavailableError",
    "QueueFullError",
    "ReplicaFailedError",
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


class ReplicaFailedError(RuntimeError):
    """The worker running the request died, and so did the one retry: the request failed (never a hang)."""


@runtime_checkable
class EngineReservation(Protocol):
    """A place in an engine's queue taken before the photo is at hand; an async context manager."""

    @property
    def held(self) -> bool:
        """Whether the place is still reserved (neither used by submit nor released)."""
        ...

    def ahead(self) -> int:
        """Photos that must finish before this one starts, once submitted."""
        ...

    async def submit(
        self,
        data: bytes,
        *,
        model: str = "deeplab",
        options: RenderOptions | None = None,
        timeout: float | None = None,
        look: Look | None = None,
    ) -> RemovalResult:
        """Run the photo in the reserved place and wait for its result."""
        ...

    def release(self) -> None:
        """Give the place back (idempotent; a no-op after submit)."""
        ...

    async def __aenter__(self) -> EngineReservation: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """What the bot needs from an inference engine, whichever backend runs the networks."""

    async def start(self) -> None:
        """Get ready to take requests."""
        ...

    def reserve(self) -> EngineReservation:
        """Take a place now; QueueFullError at once when there is none, EngineClosedError when shutting down."""
        ...

    async def submit(
        self,
        data: bytes,
        *,
        model: str = "deeplab",
        options: RenderOptions | None = None,
        timeout: float | None = None,
        look: Look | None = None,
    ) -> RemovalResult:
        """One photo in, its result out (a CutoutResult with the uint8 matte when `look` is given)."""
        ...

    async def recompose(self, data: bytes, matte: np.ndarray, look: Look) -> bytes:
        """A photo already seen, rendered in another Look as a PNG; no network."""
        ...

    async def sticker(self, data: bytes, matte: np.ndarray) -> bytes | None:
        """A 512 px WEBP sticker of the people in a photo already seen; None when there is nobody."""
        ...

    def ahead_of_next(self) -> int:
        """Photos that must finish before one submitted now starts."""
        ...

    @property
    def queue_depth(self) -> int:
        """Requests accepted and waiting."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests being processed right now."""
        ...

    @property
    def busy_threads(self) -> int:
        """Threads of this process still computing a photo (0 when the networks run elsewhere)."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the engine has stopped taking requests."""
        ...

    def stats(self) -> dict[str, Any]:
        """Queue depth, in-flight work, counts and per-model latency percentiles (seconds)."""
        ...

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests; let accepted work finish within timeout; answer the rest EngineClosedError."""
        ...
