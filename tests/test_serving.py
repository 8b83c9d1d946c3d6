"""The engine contract, against both backends: the in-process engine and the Ray Serve application.

Ray runs in-process on a tiny local cluster (num_cpus=1) started once for this module; the Ray cases skip
only when ray is not installed. Networks are tiny: random weights at 64 px, or a stand-in whose calls are
held by a gate file (the replicas run in other processes, so the gate is a file, not a threading.Event).
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segmentation.decoding import ImageTooLargeError, UnsupportedImageError
from segmentation.effects import Look
from segmentation.engine import CutoutResult, EngineConfig, InferenceEngine
from segmentation.engine_api import (
    Engine,
    EngineClosedError,
    QueueFullError,
    ReplicaFailedError,
    RequestTimeoutError,
)
from segmentation.pipeline import remove_background
from segmentation.predictor import Predictor
from segmentation.weights_io import ModelCard

# Every wait is bounded: a bug fails a test, never hangs it. Replicas start in other processes: be patient.
PATIENCE = 60.0
BACKENDS = ["local", "ray"]


class FileGatedNet(nn.Module):
    """Bright pixels are the person; each call marks that it started, then waits until the gate file exists."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        folder = Path(self.folder)
        (folder / f"started-{os.getpid()}-{time.monotonic_ns()}").touch()
        if (folder / "die").exists():  # a replica lost mid-request: the process ends at once
            if (folder / "die-once").exists():
                (folder / "die").unlink(missing_ok=True)
            os._exit(1)
        deadline = time.monotonic() + PATIENCE
        while not (folder / "open").exists():  # the gate: held until the test opens it
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.005)
        return 8.0 * batch.mean(dim=1, keepdim=True)


def gated_predictors(folder: str) -> dict[str, Predictor]:
    """A 'deeplab' behind the file gate (built on the replica, or in this process for the local engine)."""
    card = ModelCard(architecture="deeplab", inference_size=32)
    return {"deeplab": Predictor(FileGatedNet(folder), card, fast=False)}


class Gate:
    """The test's side of the file gate."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self) -> None:
        """Let every held and future network call through."""
        (self.folder / "open").touch()

    def started(self) -> int:
        """Network calls begun so far."""
        return len(list(self.folder.glob("started-*")))


def photo(width: int = 48, height: int = 36, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until the condition holds (polling), failing after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A one-CPU Ray cluster in this process for the module's Ray cases; shut down afterwards."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    from ray import cloudpickle, serve

    # The stand-in networks live in this test module, which the replicas cannot import: send them by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
async def make_engine(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """Builds and starts engines of one backend (the test's `backend` parameter); closes them afterwards."""
    backend = request.node.callspec.params["backend"]
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    made: list[Any] = []

    async def make(
        *,
        weights_dir: Path | None = None,
        make_predictors: Callable[[], dict[str, Predictor]] | None = None,
        queue_size: int = 8,
        max_pixels: int = 40_000_000,
        batch_size: int = 1,
        max_ongoing: int = 1,
    ) -> Engine:
        if backend == "local":
            config = EngineConfig(
                queue_size=queue_size,
                workers=max_ongoing,
                torch_threads=1,
                fast=False,
                weights_dir=weights_dir,
                max_pixels=max_pixels,
            )
            engine = InferenceEngine(config, predictors=make_predictors() if make_predictors else None)
        else:
            from segmentation.serving import RayServeEngine, ServingConfig

            config = ServingConfig(
                app_name=f"test-{len(made)}-{request.node.name}"[:60].replace("[", "-").replace("]", ""),
                min_replicas=1,
                max_replicas=1,
                max_ongoing_requests=max_ongoing,
                max_queued_requests=queue_size,
                batch_size=batch_size,
                batch_wait_s=0.05,
                replica_cpus=0,  # the one CPU of the test cluster is not split between replicas
                torch_threads=1,
                fast=False,
                weights_dir=str(weights_dir) if weights_dir else None,
                max_pixels=max_pixels,
            )
            engine = RayServeEngine(config, make_predictors=make_predictors)
        made.append(engine)
        await asyncio.wait_for(engine.start(), PATIENCE)
        return engine

    yield make
    for engine in made:
        await asyncio.wait_for(engine.close(timeout=5), PATIENCE)
    if backend == "ray":
        from ray import serve

        for engine in made:
            serve.delete(engine.config.app_name)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """A file gate in a fresh folder; opened at the end so nothing stays held."""
    gate = Gate(tmp_path)
    yield gate
    gate.open()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_same_result_as_the_local_engine(
    backend: str, make_engine, random_weights_dir: Path, sample_photo_bytes: bytes
) -> None:
    config = EngineConfig(torch_threads=1, fast=False, weights_dir=random_weights_dir)
    async with InferenceEngine(config) as reference:
        expected = await reference.submit(sample_photo_bytes, model="unet", look=Look("white"))
        expected_plain = await reference.submit(sample_photo_bytes, model="deeplab")
    engine = await make_engine(weights_dir=random_weights_dir)
    assert isinstance(engine, Engine)
    result = await asyncio.wait_for(engine.submit(sample_photo_bytes, model="unet", look=Look("white")), PATIENCE)
    plain = await asyncio.wait_for(engine.submit(sample_photo_bytes, model="deeplab"), PATIENCE)
    assert isinstance(result, CutoutResult)
    assert np.array_equal(result.matte, expected.matte)
    assert result.png == expected.png and plain.png == expected_plain.png
    # And both are the photo's path without any engine: decode, network, refine, encode, on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        direct = remove_background(
            sample_photo_bytes, Predictor.from_weights("deeplab", random_weights_dir, fast=False)
        )
    finally:
        torch.set_num_threads(threads)
    assert plain.png == direct.png
    assert (result.width, result.height, result.model, result.person_found) == (
        expected.width,
        expected.height,
        "unet",
        expected.person_found,
    )
    assert {"decode", "predict", "refine", "encode", "total", "queue"} <= set(result.timings)
    # Re-renders of the cached photo come back the same from both backends too.
    blurred = await reference_recompose(random_weights_dir, sample_photo_bytes, expected.matte)
    assert await engine.recompose(sample_photo_bytes, result.matte, Look("blur")) == blurred
    assert engine.stats()["completed"] == 2


async def reference_recompose(weights_dir: Path, data: bytes, matte: np.ndarray) -> bytes:
    async with InferenceEngine(EngineConfig(torch_threads=1, fast=False, weights_dir=weights_dir)) as reference:
        return await reference.recompose(data, matte, Look("blur"))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_full_queue_is_refused_at_once(backend: str, make_engine, gate: Gate) -> None:
    engine = await make_engine(make_predictors=functools.partial(gated_predictors, str(gate.folder)), queue_size=1)
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: gate.started() == 1)
    more = [asyncio.create_task(engine.submit(photo(seed=seed))) for seed in (2, 3, 4)]
    # Beyond the one running and the one waiting, the photos are refused while the gate is still shut.
    await eventually(lambda: sum(task.done() for task in more) >= 2)
    refused = [task for task in more if task.done()]
    assert all(isinstance(task.exception(), QueueFullError) for task in refused)
    gate.open()
    outcomes = await asyncio.wait_for(asyncio.gather(running, *more, return_exceptions=True), PATIENCE)
    assert outcomes[0].width == 48
    # At most the one place in the queue was given: every other photo was refused, none failed otherwise.
    # (Serve may refuse the queued one too when its router's view of the replica is late under load.)
    accepted = [outcome for outcome in outcomes[1:] if not isinstance(outcome, QueueFullError)]
    assert len(accepted) <= 1 and all(outcome.width == 48 for outcome in accepted)
    if backend == "local":
        assert len(accepted) == 1  # the in-process engine's queue is exact


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_slow_photo_times_out(backend: str, make_engine, gate: Gate) -> None:
    engine = await make_engine(make_predictors=functools.partial(gated_predictors, str(gate.folder)))
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        await asyncio.wait_for(engine.submit(photo(), timeout=0.5), PATIENCE)
    assert time.monotonic() - started < 5
    gate.open()
    assert (await asyncio.wait_for(engine.submit(photo(seed=5)), PATIENCE)).width == 48  # the engine goes on


@pytest.mark.parametrize("backend", BACKENDS)
async def test_bad_images_get_the_same_errors(backend: str, make_engine, gate: Gate) -> None:
    gate.open()
    engine = await make_engine(
        make_predictors=functools.partial(gated_predictors, str(gate.folder)), max_pixels=40 * 30
    )
    with pytest.raises(UnsupportedImageError):
        await asyncio.wait_for(engine.submit(b"this is not an image"), PATIENCE)
    with pytest.raises(ImageTooLargeError) as too_large:
        await asyncio.wait_for(engine.submit(photo(48, 36)), PATIENCE)
    assert (too_large.value.pixels, too_large.value.limit) == (48 * 36, 40 * 30)
    assert gate.started() == 0  # refused before any network ran


@pytest.mark.parametrize("backend", BACKENDS)
async def test_shutdown_with_work_in_flight(backend: str, make_engine, gate: Gate) -> None:
    engine = await make_engine(make_predictors=functools.partial(gated_predictors, str(gate.folder)))
    running = asyncio.create_task(engine.submit(photo()))
    await eventually(lambda: gate.started() == 1)
    started = time.monotonic()
    await asyncio.wait_for(engine.close(timeout=0.5), PATIENCE)
    assert time.monotonic() - started < 5  # bounded even though the network is still held
    with pytest.raises(EngineClosedError):
        await asyncio.wait_for(running, PATIENCE)
    with pytest.raises(EngineClosedError):
        engine.reserve()


@pytest.mark.parametrize("backend", ["ray"])
async def test_a_dead_replica_is_retried_once_then_a_failure(make_engine, gate: Gate, backend: str) -> None:
    engine = await make_engine(make_predictors=functools.partial(gated_predictors, str(gate.folder)))
    gate.open()
    (gate.folder / "die").touch()
    (gate.folder / "die-once").touch()
    # The first replica dies mid-request; the retry runs on its replacement.
    assert (await asyncio.wait_for(engine.submit(photo()), PATIENCE)).width == 48
    (gate.folder / "die-once").unlink()
    (gate.folder / "die").touch()
    with pytest.raises(ReplicaFailedError):  # dies again on the retry: a failure, not a hang
        await asyncio.wait_for(engine.submit(photo(seed=1)), PATIENCE)


async def test_the_bot_end_to_end_on_ray_serve(ray_cluster: Any, tmp_path: Path) -> None:
    """BOT_ENGINE=ray: a photo sent to the bot comes back as a PNG made on a Serve replica (shipped weights)."""
    from bot_fixtures import TOKEN, decode_result, make_settings, running_bot, small_photo
    from botapi_stub import BotApiStub
    from ray import serve

    from bot.app import build_engine
    from segmentation.serving import RayServeEngine

    stub = BotApiStub(TOKEN).start()
    try:
        settings = make_settings(
            tmp_path, stub, engine="ray", ray_app_name="bot-e2e", ray_min_replicas=1, ray_max_replicas=1
        )
        engine = build_engine(settings)
        assert isinstance(engine, RayServeEngine)
        async with running_bot(settings, engine):
            data = small_photo()
            stub.push_photo(71, data, Image.open(io.BytesIO(data)).size)
            (result,) = await stub.wait_for(lambda: stub.documents(71), PATIENCE, "the result document")
            assert decode_result(result.document.data).size == Image.open(io.BytesIO(data)).size
            assert engine.stats()["completed"] == 1
        assert not stub.errors, stub.errors
    finally:
        stub.stop()
        serve.delete("bot-e2e")


@pytest.mark.parametrize("backend", ["ray"])
async def test_a_second_client_uses_the_running_application(make_engine, gate: Gate, backend: str) -> None:
    """What the bot does beside `bgremover serve`: it finds the application instead of deploying it."""
    from segmentation.serving import RayServeEngine

    gate.open()
    deployed = await make_engine(make_predictors=functools.partial(gated_predictors, str(gate.folder)))
    async with RayServeEngine(deployed.config, deploy=False) as joined:
        result = await asyncio.wait_for(joined.submit(photo(40, 30)), PATIENCE)
    assert (result.width, result.height) == (40, 30)
    assert gate.started() == 1  # it ran on the deployed application's replica


@pytest.mark.parametrize("backend", ["ray"])
async def test_photos_waiting_for_the_network_share_one_forward_pass(make_engine, gate: Gate, backend: str) -> None:
    engine = await make_engine(
        # Five at once on the replica: the four photos and the test's own replica_stats call.
        make_predictors=functools.partial(gated_predictors, str(gate.folder)),
        batch_size=4,
        max_ongoing=5,
    )
    first = asyncio.create_task(engine.submit(photo(seed=0)))
    await eventually(lambda: gate.started() == 1)  # its batch (of one) holds the network stage
    others = [asyncio.create_task(engine.submit(photo(seed=seed))) for seed in (1, 2, 3)]
    deadline = time.monotonic() + PATIENCE
    while (await engine.replica_stats())["network_calls"] < 4:  # the three wait for the next batch
        assert time.monotonic() < deadline, "the photos never reached the network stage"
    gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, *others), PATIENCE)
    assert [result.width for result in results] == [48] * 4
    assert gate.started() == 2  # two forward passes for four photos
    assert (await engine.replica_stats())["batch_sizes"] == [1, 3]


class HeldResponse:
    """A Serve response that never arrives unless the test resolves it; records being cancelled."""

    def __init__(self) -> None:
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def __await__(self):
        return self.answer.__await__()

    def cancel(self) -> None:
        self.cancelled = True


class HeldHandle:
    """Stands in for the application's handle: every method call returns a HeldResponse."""

    def __init__(self) -> None:
        self.responses: list[HeldResponse] = []

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, *args: Any) -> HeldResponse:
                response = HeldResponse()
                handle.responses.append(response)
                return response

        return Method()


async def held_ray_client(render_timeout_s: float = PATIENCE) -> tuple[Any, HeldHandle]:
    """The Ray client's own logic over a handle whose replies the test controls (no cluster)."""
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    from segmentation.serving import RayServeEngine, ServingConfig

    engine = RayServeEngine(ServingConfig(render_timeout_s=render_timeout_s))
    handle = HeldHandle()
    engine._handle, engine._drained = handle, asyncio.Event()  # what start() sets after connecting
    return engine, handle


async def test_ray_rerenders_get_the_time_left_at_shutdown_then_restarting() -> None:
    engine, handle = await held_ray_client()
    matte = np.zeros((36, 48), np.uint8)
    finishing = asyncio.ensure_future(engine.recompose(photo(), matte, Look()))
    stuck = asyncio.ensure_future(engine.sticker(photo(), matte))
    await eventually(lambda: len(handle.responses) == 2)
    closing = asyncio.ensure_future(engine.close(timeout=0.5))
    await asyncio.sleep(0.1)
    assert not closing.done()  # the drain waits for the re-renders on the cluster
    handle.responses[0].answer.set_result(("ok", b"png"))
    assert await finishing == b"png"
    started = time.monotonic()
    await asyncio.wait_for(closing, PATIENCE)
    assert time.monotonic() - started < 1.0
    with pytest.raises(EngineClosedError):
        await stuck
    await eventually(lambda: handle.responses[1].cancelled)  # cancelled on the cluster too, not left running
    with pytest.raises(EngineClosedError):
        await engine.sticker(photo(), matte)


async def test_a_ray_rerender_past_its_bound_times_out_and_is_cancelled() -> None:
    engine, handle = await held_ray_client(render_timeout_s=0.2)
    with pytest.raises(RequestTimeoutError):
        await asyncio.wait_for(engine.recompose(photo(), np.zeros((36, 48), np.uint8), Look()), PATIENCE)
    await eventually(lambda: handle.responses[0].cancelled)
    await asyncio.wait_for(engine.close(timeout=5), PATIENCE)  # nothing outstanding: returns at once
