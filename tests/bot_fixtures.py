"""Helpers for the bot tests: settings pointed at the Bot API stand-in, the application lifecycle, test images."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from botapi_stub import BotApiStub
from PIL import Image
from telegram.ext import Application

from bot.app import ALLOWED_UPDATES, build_application
from bot.config import Settings
from segmentation.engine import EngineConfig, InferenceEngine

# A token-shaped secret: the part after the colon must never show up in a log line.
TOKEN = "4242:AAH-test-SECRET-token-d41d8cd98f00b204e980"
ADMIN_ID = 1001
FIXTURES = Path(__file__).parent / "fixtures"
# The shipped weights, unless BGREMOVER_TEST_WEIGHTS_DIR points elsewhere (e.g. at a fresh training run).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "segmentation" / "weights"
WEIGHTS_DIR = Path(os.environ["BGREMOVER_TEST_WEIGHTS_DIR"]) if os.environ.get("BGREMOVER_TEST_WEIGHTS_DIR") else None


def weights_available(model: str) -> bool:
    """Whether the weights and card of a model are there to load."""
    directory = WEIGHTS_DIR or SHIPPED_WEIGHTS
    return (directory / f"{model}.safetensors").is_file() and (directory / f"{model}.json").is_file()


def make_settings(tmp_path: Path, stub: BotApiStub, **overrides: Any) -> Settings:
    """Settings for a bot talking to the stand-in, with small queues so the tests stay quick."""
    values: dict[str, Any] = {
        "token": TOKEN,
        "api_base_url": stub.base_url,
        "api_base_file_url": stub.base_file_url,
        "data_dir": tmp_path / "data",
        "admin_ids": str(ADMIN_ID),
        "queue_size": 4,
        "workers": 1,
        "user_pending_limit": 3,
        "request_timeout": 60.0,
        "shutdown_timeout": 5.0,
        "log_level": "DEBUG",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def make_engine(settings: Settings) -> InferenceEngine:
    """An engine as build_application would make it, one torch thread (the tests share 2 cores with others)."""
    config = EngineConfig(
        queue_size=settings.queue_size,
        workers=settings.workers,
        max_pixels=settings.max_pixels,
        weights_dir=WEIGHTS_DIR,
        torch_threads=1,
    )
    return InferenceEngine(config)


def nobody_engine(settings: Settings) -> InferenceEngine:
    """A real engine (decode, refine, encode) whose deeplab network finds no one: every logit says background."""
    import torch
    from torch import nn

    from segmentation.predictor import Predictor
    from segmentation.weights_io import ModelCard

    class Nobody(nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return torch.full((batch.shape[0], 1, *batch.shape[2:]), -20.0)

    predictor = Predictor(Nobody(), ModelCard(architecture="deeplab", inference_size=64), fast=False)
    config = EngineConfig(queue_size=settings.queue_size, workers=1, max_pixels=settings.max_pixels, torch_threads=1)
    return InferenceEngine(config, predictors={"deeplab": predictor})


def gated_engine(settings: Settings, gate: threading.Event) -> InferenceEngine:
    """Like nobody_engine, but each photo's network call waits until `gate` is set (at most a minute)."""
    import torch
    from torch import nn

    from segmentation.predictor import Predictor
    from segmentation.weights_io import ModelCard

    class GatedNobody(nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            gate.wait(60)
            return torch.full((batch.shape[0], 1, *batch.shape[2:]), -20.0)

    predictor = Predictor(GatedNobody(), ModelCard(architecture="deeplab", inference_size=64), fast=False)
    config = EngineConfig(queue_size=settings.queue_size, workers=1, max_pixels=settings.max_pixels, torch_threads=1)
    return InferenceEngine(config, predictors={"deeplab": predictor})


async def start_bot(settings: Settings, engine: InferenceEngine | None = None) -> Application:
    """Start an Application in long-polling mode the way run_polling does (initialize, post_init, poll, start)."""
    application = build_application(settings, engine or make_engine(settings))
    await application.initialize()
    await application.post_init(application)
    await application.updater.start_polling(poll_interval=0.0, timeout=1, allowed_updates=ALLOWED_UPDATES)
    await application.start()
    return application


async def stop_bot(application: Application) -> None:
    """Stop it the way run_polling does on SIGTERM (updater, stop, post_stop if any, shutdown, post_shutdown)."""
    if application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
        if application.post_stop:
            await application.post_stop(application)
    if application._initialized:  # shutdown() refuses to run twice
        await application.shutdown()
        await application.post_shutdown(application)


async def seconds_to_stop(application: Application, release: threading.Event | None = None) -> float:
    """Stop the bot as on SIGTERM and return how long it took; then set `release` (work the test held back)."""
    started = time.monotonic()
    try:
        await stop_bot(application)
    finally:
        if release is not None:
            release.set()
    return time.monotonic() - started


@asynccontextmanager
async def running_bot(settings: Settings, engine: InferenceEngine | None = None) -> AsyncIterator[Application]:
    """An Application polling the stand-in for the duration of the block."""
    application = await start_bot(settings, engine)
    try:
        yield application
    finally:
        await stop_bot(application)


def encode(image: Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    """An image as file bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fixture_photo(name: str = "bot_person_0005.jpg") -> Image.Image:
    """A real photo of a person (CCP dataset, see fixtures/README.md)."""
    return Image.open(FIXTURES / name).convert("RGB")


def fixture_mask(name: str = "bot_person_0005_mask.png") -> np.ndarray:
    """The person mask of a fixture photo (True = person)."""
    return np.array(Image.open(FIXTURES / name)) > 127


def big_photo(width: int = 1800, height: int = 2700) -> bytes:
    """A large JPEG (the fixture upscaled, with noise so it stays costly): keeps the single worker busy a while."""
    rng = np.random.default_rng(0)
    pixels = np.asarray(fixture_photo().resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=92)


def small_photo(seed: int = 0) -> bytes:
    """A small real photo, slightly different per seed (so every upload is its own file)."""
    image = fixture_photo()
    image.putpixel((0, 0), (seed % 256, 0, 0))
    return encode(image, "JPEG", quality=90)


def decode_result(data: bytes) -> Image.Image:
    """Open a result document and check it is a PNG."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG", image.format
    return image


class NetworkCalls:
    """Counts the network calls of a test engine, and optionally holds each one until the test lets it go."""

    def __init__(self, gated: bool = False) -> None:
        self.count = 0
        self.gate = threading.Semaphore(0) if gated else None

    def let_one_through(self, count: int = 1) -> None:
        """Let `count` held network calls run."""
        for _ in range(count):
            self.gate.release()


def boxed_engine(settings: Settings, calls: NetworkCalls | None = None) -> InferenceEngine:
    """A real engine whose two networks 'find a person' in a fixed box of the frame (deeplab's smaller than unet's).

    Deterministic and instant, so tests can check crops, stickers and backgrounds pixel by pixel.
    """
    import torch
    from torch import nn

    from segmentation.predictor import Predictor
    from segmentation.weights_io import ModelCard

    class Box(nn.Module):
        def __init__(self, margin: float) -> None:
            super().__init__()
            self.margin = margin

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            if calls is not None:
                calls.count += 1
                if calls.gate is not None:
                    calls.gate.acquire(timeout=60)
            logits = torch.full((batch.shape[0], 1, *batch.shape[2:]), -20.0)
            height, width = batch.shape[2:]
            top, left = int(height * self.margin), int(width * self.margin)
            logits[..., top : height - top, left : width - left] = 20.0
            return logits

    predictors = {
        name: Predictor(Box(margin), ModelCard(architecture=name, inference_size=64), fast=False)
        for name, margin in (("deeplab", 0.3), ("unet", 0.2))
    }
    config = EngineConfig(queue_size=settings.queue_size, workers=1, max_pixels=settings.max_pixels, torch_threads=1)
    return InferenceEngine(config, predictors=predictors)


def tiny_photo(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A small noisy JPEG (noise, so a blur visibly changes it)."""
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), "JPEG", quality=90)
