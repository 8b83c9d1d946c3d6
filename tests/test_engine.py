"""The asyncio inference engine: concurrency, back-pressure, timeouts, shutdown, statistics and errors."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segmentation.decoding import ImageTooLargeError, UnsupportedImageError
from segmentation.engine import (
    EngineClosedError,
    EngineConfig,
    InferenceEngine,
    ModelUnavailableError,
    QueueFullError,
    RemovalResult,
    RequestTimeoutError,
)
from segmentation.predictor import Predictor
from segmentation.rendering import RenderOptions
from segmentation.weights_io import ModelCard

# Every wait in these tests is bounded: a bug makes a test fail, never hang.
PATIENCE = 10.0


class GatedNet(nn.Module):
    """A stand-in network (bright pixels are the person) that holds each call until its gate is open."""

    def __init__(self, open_gate: bool = True) -> None:
        super().__init__()
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.gate.wait(PATIENCE):
            raise RuntimeError("the test never opened the gate")
        return 8.0 * x.mean(dim=1, keepdim=True)


def photo(width: int = 48, height: int = 36, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until the condition holds (polling the event loop), failing after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., tuple[InferenceEngine, GatedNet]]]:
    """Builds engines around a GatedNet 'deeplab'; opens every gate and closes every engine afterwards."""
    made: list[tuple[InferenceEngine, GatedNet]] = []

    def make(open_gate: bool = True, **config: object) -> tuple[InferenceEngine, GatedNet]:
        net = GatedNet(open_gate)
        predictor = Predictor(net, ModelCard(architecture="deeplab", inference_size=32), fast=False)
        settings = {"queue_size": 8, "workers": 1, "torch_threads": 1, "fast": False, **config}
        engine = InferenceEngine(EngineConfig(**settings), predictors={"deeplab": predictor})
        made.append((engine, net))
        return engine, net

    yield make
    for engine, net in made:
        net.gate.set()
        await asyncio.wait_for(engine.close(timeout=2), PATIENCE)


@pytest.mark.parametrize("workers", [1, 2])
async def test_concurrent_submits_all_complete(make_engine, workers: int) -> None:
    engine, net = make_engine(queue_size=8, workers=workers)
    sizes = [(48 + i, 36 + 2 * i) for i in range(6)]
    results = await asyncio.wait_for(
        asyncio.gather(*(engine.submit(photo(w, h, seed=i)) for i, (w, h) in enumerate(sizes))), PATIENCE
    )
    assert all(isinstance(result, RemovalResult) for result in results)
    assert [(r.width, r.height) for r in results] == sizes  # each caller gets its own photo back
    assert all(Image.open(io.BytesIO(r.png)).mode == "RGBA" for r in results)
    assert net.calls == 6
    stats = engine.stats()
    assert (stats["completed"], stats["failed"], stats["queue_depth"], stats["in_flight"]) == (6, 0, 0, 0)


async def test_render_options_reach_the_predictor(make_engine) -> None:
    engine, _ = make_engine()
    result = await engine.submit(photo(), options=RenderOptions(mask_only=True))
    assert Image.open(io.BytesIO(result.png)).mode == "L"


async def test_full_queue_is_refused_at_once(make_engine) -> None:
    engine, net = make_engine(open_gate=False, queue_size=1)
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    waiting = asyncio.create_task(engine.submit(photo(seed=2)))
    await eventually(lambda: engine.queue_depth == 1)

    with pytest.raises(QueueFullError, match="queue is full"):
        engine.reserve()  # synchronous: a refusal never waits
    with pytest.raises(QueueFullError, match="queue is full"):
        await asyncio.wait_for(engine.submit(photo(seed=3)), PATIENCE)

    net.gate.set()
    done = await asyncio.wait_for(asyncio.gather(running, waiting), PATIENCE)
    assert [r.width for r in done] == [48, 48]
    assert net.calls == 2


async def test_timeout_raises_and_a_timed_out_job_is_skipped(make_engine) -> None:
    engine, net = make_engine(open_gate=False, queue_size=4)
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    with pytest.raises(RequestTimeoutError, match=re.escape("no result within 0.1 s")):
        await engine.submit(photo(seed=2), timeout=0.1)
    assert engine.queue_depth == 0  # the timed-out photo gave its place back at once

    net.gate.set()
    assert (await asyncio.wait_for(running, PATIENCE)).width == 48
    await asyncio.wait_for(engine.submit(photo(seed=3)), PATIENCE)
    assert net.calls == 2  # the timed-out photo was never run


async def test_timeout_of_a_running_job_leaves_the_engine_working(make_engine) -> None:
    engine, net = make_engine(open_gate=False)
    held = asyncio.create_task(engine.submit(photo(seed=1), timeout=3.0))
    await eventually(lambda: net.calls == 1)  # it reached the network: it times out running, not queued
    with pytest.raises(RequestTimeoutError):
        await asyncio.wait_for(held, PATIENCE)
    net.gate.set()
    result = await asyncio.wait_for(engine.submit(photo(seed=2)), PATIENCE)
    assert result.width == 48 and net.calls == 2
    await eventually(lambda: engine.in_flight == 0)


async def test_close_with_work_in_flight_answers_everyone_and_hangs_no_one(make_engine) -> None:
    engine, net = make_engine(open_gate=False, queue_size=4)
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    queued = [asyncio.create_task(engine.submit(photo(seed=i))) for i in (2, 3)]
    await eventually(lambda: engine.queue_depth == 2)

    try:
        await asyncio.wait_for(engine.close(timeout=0.2), PATIENCE)
        outcomes = await asyncio.wait_for(asyncio.gather(running, *queued, return_exceptions=True), PATIENCE)
    finally:
        net.gate.set()
    assert engine.closed
    for outcome in outcomes:
        assert isinstance(outcome, (RemovalResult, EngineClosedError)), outcome
    # The queued photos never started: they are told the engine shut down.
    assert all(isinstance(outcome, EngineClosedError) for outcome in outcomes[1:])
    assert net.calls == 1

    with pytest.raises(EngineClosedError):
        await engine.submit(photo())


async def test_close_lets_accepted_work_finish_within_its_timeout(make_engine) -> None:
    """close() waits for what it accepted, refuses new work meanwhile, and every caller gets a result."""
    engine, net = make_engine(open_gate=False, queue_size=8)
    tasks = [asyncio.create_task(engine.submit(photo(seed=i))) for i in range(4)]
    await eventually(lambda: engine.in_flight == 1 and engine.queue_depth == 3)
    closing = asyncio.create_task(engine.close(timeout=PATIENCE))
    await asyncio.sleep(0.05)
    assert not closing.done()
    with pytest.raises(EngineClosedError):
        await engine.submit(photo())
    net.gate.set()
    await asyncio.wait_for(closing, PATIENCE)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert all(isinstance(r, RemovalResult) for r in results)
    assert net.calls == 4


async def test_submit_after_close_is_refused(make_engine) -> None:
    engine, _ = make_engine()
    await engine.submit(photo())
    await engine.close()
    await engine.close()  # closing twice is harmless
    with pytest.raises(EngineClosedError, match="shutting down"):
        await engine.submit(photo())


async def test_async_context_manager_starts_and_closes(make_engine) -> None:
    engine, _ = make_engine()
    async with engine as running:
        assert running is engine
        assert (await running.submit(photo())).width == 48
    assert engine.closed


async def test_stats_report_queue_depth_in_flight_and_latencies(make_engine) -> None:
    engine, net = make_engine(open_gate=False)
    assert engine.stats()["models"]["deeplab"] == {"count": 0, "p50": None, "p95": None, "loaded": True}
    tasks = [asyncio.create_task(engine.submit(photo(seed=i))) for i in range(3)]
    await eventually(lambda: engine.in_flight == 1 and engine.queue_depth == 2)
    stats = engine.stats()
    assert (stats["queue_depth"], stats["in_flight"], stats["completed"]) == (2, 1, 0)

    await asyncio.sleep(0.05)  # the first photo now takes at least this long
    net.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE)
    stats = engine.stats()
    assert (stats["queue_depth"], stats["in_flight"], stats["completed"], stats["failed"]) == (0, 0, 3, 0)
    deeplab = stats["models"]["deeplab"]
    assert deeplab["count"] == 3
    assert 0 < deeplab["p50"] <= deeplab["p95"]
    assert deeplab["p95"] >= 0.05  # latency includes the time spent waiting in the queue
    assert stats["models"]["unet"] == {"count": 0, "p50": None, "p95": None, "loaded": False}


async def test_unknown_model_is_a_value_error(make_engine) -> None:
    engine, net = make_engine()
    with pytest.raises(ValueError, match="unknown model 'sam'; choose one of: deeplab, unet"):
        await engine.submit(photo(), model="sam")
    assert net.calls == 0


async def test_corrupt_image_surfaces_and_the_engine_keeps_working(make_engine) -> None:
    engine, _ = make_engine()
    with pytest.raises(UnsupportedImageError, match="not an image format"):
        await asyncio.wait_for(engine.submit(b"this is a text file, not a photo"), PATIENCE)
    with pytest.raises(UnsupportedImageError, match="corrupt or truncated"):
        await asyncio.wait_for(engine.submit(photo()[:200]), PATIENCE)
    result = await asyncio.wait_for(engine.submit(photo()), PATIENCE)
    assert result.width == 48
    stats = engine.stats()
    assert (stats["failed"], stats["completed"]) == (2, 1)


async def test_pixel_limit_of_the_config_applies(make_engine) -> None:
    engine, _ = make_engine(max_pixels=1000)
    with pytest.raises(ImageTooLargeError, match=re.escape("the limit is 0.001 megapixels")):
        await asyncio.wait_for(engine.submit(photo(48, 36)), PATIENCE)
    assert (await asyncio.wait_for(engine.submit(photo(30, 30)), PATIENCE)).width == 30


async def test_networks_load_lazily_from_the_weights_folder(
    random_weights_dir: Path, sample_photo_bytes: bytes
) -> None:
    config = EngineConfig(queue_size=4, workers=1, weights_dir=random_weights_dir, torch_threads=1, fast=False)
    engine = InferenceEngine(config)
    try:
        assert not engine.stats()["models"]["deeplab"]["loaded"]
        for name in ("deeplab", "unet"):
            result = await asyncio.wait_for(engine.submit(sample_photo_bytes, model=name), 60)
            assert (result.model, result.width, result.height) == (name, 200, 300)
            assert engine.stats()["models"][name]["loaded"]
        assert engine.predictor("deeplab").card.inference_size == 64
    finally:
        await asyncio.wait_for(engine.close(), PATIENCE)


async def test_missing_weights_are_model_unavailable_and_bad_uploads_still_get_their_answer(
    tmp_path: Path, sample_photo_bytes: bytes
) -> None:
    engine = InferenceEngine(EngineConfig(queue_size=2, workers=1, weights_dir=tmp_path, torch_threads=1))
    try:
        with pytest.raises(ModelUnavailableError, match="deeplab"):
            await asyncio.wait_for(engine.submit(sample_photo_bytes, model="deeplab"), PATIENCE)
        # Decoding comes before loading: a corrupt upload is reported as such, not as a server fault.
        with pytest.raises(UnsupportedImageError):
            await asyncio.wait_for(engine.submit(b"not a photo at all", model="deeplab"), PATIENCE)
    finally:
        await asyncio.wait_for(engine.close(), PATIENCE)


async def test_a_reservation_holds_a_place_until_used_or_released(make_engine) -> None:
    engine, net = make_engine(open_gate=False, queue_size=1)
    # Two places: one in the queue, and the idle worker's.
    first, second = engine.reserve(), engine.reserve()
    assert engine.reserved == 2 and engine.queue_depth == 0
    with pytest.raises(QueueFullError):
        engine.reserve()  # reserved places count against the queue, though no photo is here yet
    async with first:
        pass  # left unused: the place comes back
    assert engine.reserved == 1
    async with engine.reserve() as third:
        running = asyncio.create_task(third.submit(photo(seed=1)))
        await eventually(lambda: engine.in_flight == 1)
    assert engine.reserved == 1  # leaving the block after submit does not give back a second place
    second.release()
    second.release()  # idempotent
    assert engine.reserved == 0
    with pytest.raises(RuntimeError, match="already used or released"):
        await second.submit(photo())
    net.gate.set()
    assert (await asyncio.wait_for(running, PATIENCE)).width == 48
    assert net.calls == 1


async def test_a_cancelled_queued_job_never_runs_and_frees_its_place(make_engine) -> None:
    engine, net = make_engine(open_gate=False, queue_size=1)
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    waiting = asyncio.create_task(engine.submit(photo(seed=2)))
    await eventually(lambda: engine.queue_depth == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert engine.queue_depth == 0
    after = asyncio.create_task(engine.submit(photo(seed=3)))  # the place is free again at once
    await eventually(lambda: engine.queue_depth == 1)
    net.gate.set()
    await asyncio.wait_for(asyncio.gather(running, after), PATIENCE)
    assert net.calls == 2  # the cancelled photo never reached the network
    assert engine.stats()["completed"] == 2


async def test_a_cancelled_running_job_releases_its_caller_at_once(make_engine) -> None:
    engine, net = make_engine(open_gate=False)
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: net.calls == 1)  # inside the network, held by the gate
    running.cancel()
    # The gate is still shut, so the network is still computing: the caller returns without waiting for it.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, PATIENCE)
    assert engine.in_flight == 1
    net.gate.set()
    result = await asyncio.wait_for(engine.submit(photo(seed=2)), PATIENCE)
    assert result.width == 48
    await eventually(lambda: engine.in_flight == 0)


async def test_close_lets_a_reserved_photo_in_within_the_bound_and_refuses_it_after(make_engine) -> None:
    engine, _ = make_engine(open_gate=True)
    late, later = engine.reserve(), engine.reserve()
    closing = asyncio.create_task(engine.close(timeout=PATIENCE))
    await eventually(lambda: engine.closed)
    with pytest.raises(EngineClosedError):
        engine.reserve()
    # A photo accepted before the close (e.g. still downloading then) is still processed.
    assert (await asyncio.wait_for(late.submit(photo()), PATIENCE)).width == 48
    assert not closing.done()  # still waiting for the other reserved place
    later.release()
    await asyncio.wait_for(closing, PATIENCE)


async def test_close_is_bounded_while_an_inference_thread_is_still_busy(make_engine) -> None:
    engine, _ = make_engine(open_gate=False)
    reserved = engine.reserve()
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    await asyncio.wait_for(engine.close(timeout=0.1), PATIENCE)
    with pytest.raises(EngineClosedError):
        await asyncio.wait_for(running, PATIENCE)
    with pytest.raises(EngineClosedError):
        await reserved.submit(photo(seed=2))  # past the bound, an accepted photo is told "shut down"
    assert engine.busy_threads == 1  # the network is still held by its gate
    inference_threads = [t for t in threading.enumerate() if t.name.startswith("inference")]
    assert inference_threads and all(t.daemon for t in inference_threads)  # the interpreter will not wait


def held_renders(engine: InferenceEngine) -> threading.Event:
    """Make the engine's re-renders wait for the returned gate (then return b"png")."""
    gate = threading.Event()

    def held_render(data: bytes, matte: np.ndarray, look: object) -> bytes:
        gate.wait(PATIENCE)
        return b"png"

    engine._recompose_png = held_render
    return gate


async def test_close_lets_re_renders_under_way_finish_within_its_timeout(make_engine) -> None:
    from segmentation.engine import Look

    engine, _ = make_engine(recompose_threads=1)
    gate = held_renders(engine)
    running = asyncio.ensure_future(engine.recompose(b"", np.zeros((2, 2), np.uint8), Look()))
    queued = asyncio.ensure_future(engine.recompose(b"", np.zeros((2, 2), np.uint8), Look()))
    await eventually(lambda: len(engine._recomposing) == 2)
    closing = asyncio.ensure_future(engine.close(timeout=PATIENCE))
    await asyncio.sleep(0.05)
    assert not closing.done()  # no photos to wait for, but two re-renders
    gate.set()
    assert await asyncio.wait_for(running, PATIENCE) == b"png"
    assert await asyncio.wait_for(queued, PATIENCE) == b"png"
    await asyncio.wait_for(closing, PATIENCE)


async def test_close_tells_re_renders_past_its_timeout_that_it_shut_down(make_engine) -> None:
    from segmentation.engine import Look

    engine, _ = make_engine(recompose_threads=1)
    gate = held_renders(engine)
    running = asyncio.ensure_future(engine.recompose(b"", np.zeros((2, 2), np.uint8), Look()))
    queued = asyncio.ensure_future(engine.sticker(b"", np.zeros((2, 2), np.uint8)))
    await eventually(lambda: len(engine._recomposing) == 2)
    started = time.monotonic()
    await asyncio.wait_for(engine.close(timeout=0.1), PATIENCE)
    assert time.monotonic() - started < PATIENCE / 2
    for render in (running, queued):  # an EngineClosedError each, not a bare CancelledError
        with pytest.raises(EngineClosedError):
            await asyncio.wait_for(render, PATIENCE)
    gate.set()


async def test_a_cancelled_caller_of_a_re_render_is_cancelled_not_told_shut_down(make_engine) -> None:
    from segmentation.engine import Look

    engine, _ = make_engine(recompose_threads=1)
    gate = held_renders(engine)
    caller = asyncio.ensure_future(engine.recompose(b"", np.zeros((2, 2), np.uint8), Look()))
    await eventually(lambda: len(engine._recomposing) == 1)
    closing = asyncio.ensure_future(engine.close(timeout=PATIENCE))
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(closing, PATIENCE)
    assert not engine._recomposing
    gate.set()


async def test_start_sets_torch_threads_through_the_one_cpu_function(monkeypatch) -> None:
    import segmentation.engine as engine_module

    calls = []
    monkeypatch.setattr(
        engine_module, "configure_torch_threads", lambda workers, override=0: calls.append((workers, override)) or 1
    )
    engine = InferenceEngine(EngineConfig(workers=2, torch_threads=0))
    await engine.start()
    await engine.close()
    assert calls == [(2, 0)]


async def test_a_look_returns_the_uint8_matte_and_recompose_reuses_it_without_a_worker(make_engine) -> None:
    from segmentation.engine import CutoutResult, Look

    engine, net = make_engine()
    data = photo(64, 48)
    result = await engine.submit(data, look=Look("white"))
    assert isinstance(result, CutoutResult)
    assert result.matte.dtype == np.uint8 and result.matte.shape == (48, 64)
    first = Image.open(io.BytesIO(result.png))
    assert first.mode == "RGB" and first.size == (64, 48)
    # The same look from the cache is the same picture, and no network ran for it.
    calls = net.calls
    again = await engine.recompose(data, result.matte, Look("white"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(again))), np.asarray(first))
    # A transparent look's alpha is the matte itself.
    transparent = Image.open(io.BytesIO(await engine.recompose(data, result.matte, Look())))
    assert np.array_equal(np.asarray(transparent)[..., 3], result.matte)
    assert net.calls == calls

    # With the only worker held by another photo, re-composing still answers at once: it never takes a worker.
    net.gate.clear()
    held = asyncio.ensure_future(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    sticker = await asyncio.wait_for(engine.sticker(data, np.full((48, 64), 255, np.uint8)), PATIENCE)
    assert Image.open(io.BytesIO(sticker)).format == "WEBP"
    assert await engine.sticker(data, np.zeros((48, 64), np.uint8)) is None  # nobody: no sticker
    with pytest.raises(ValueError):
        await engine.recompose(data, np.zeros((5, 5), np.uint8), Look())  # a matte of another photo
    assert not held.done()
    net.gate.set()
    await held


async def test_a_caller_knows_its_place_as_the_line_moves(make_engine) -> None:
    engine, net = make_engine(open_gate=False)
    running = asyncio.ensure_future(engine.submit(photo(seed=0)))
    await eventually(lambda: engine.in_flight == 1)
    places = [engine.reserve() for _ in range(2)]
    waits = [asyncio.ensure_future(place.submit(photo(seed=i + 1))) for i, place in enumerate(places)]
    await eventually(lambda: engine.queue_depth == 2)
    assert [place.ahead() for place in places] == [1, 2]
    waits[0].cancel()  # the one in front gives up: the other moves up
    await eventually(lambda: places[1].ahead() == 1)
    net.gate.set()
    await running
    await waits[1]
    assert places[1].ahead() == 0  # done


async def test_close_waits_for_accepted_work_after_the_engine_was_idle_once(make_engine) -> None:
    """An engine that already finished a photo still lets the one in flight at close() finish."""
    engine, net = make_engine(open_gate=True)
    await asyncio.wait_for(engine.submit(photo(seed=0)), PATIENCE)  # idle once: nothing outstanding
    net.gate.clear()
    running = asyncio.create_task(engine.submit(photo(seed=1)))
    await eventually(lambda: engine.in_flight == 1)
    closing = asyncio.create_task(engine.close(timeout=PATIENCE))
    await asyncio.sleep(0.1)
    assert not closing.done()  # still waiting for the photo in flight
    net.gate.set()
    await asyncio.wait_for(closing, PATIENCE)
    assert isinstance(await asyncio.wait_for(running, PATIENCE), RemovalResult)
