"""Shared fixtures: random-weight networks on disk and a real photo of a person."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from bot_fixtures import TOKEN
from botapi_stub import BotApiStub
from torch import nn

from segmentation.models import MODEL_NAMES, create_model
from segmentation.weights_io import ModelCard, save_weights

FIXTURES = Path(__file__).parent / "fixtures"
# Long side the random-weight networks run at: small, so every test that predicts stays fast.
RANDOM_INFERENCE_SIZE = 64


@pytest.fixture
def botapi() -> Iterator[BotApiStub]:
    """A fresh Bot API stand-in per test; any request it could not understand fails the test."""
    stub = BotApiStub(TOKEN).start()
    yield stub
    stub.stop()
    assert not stub.errors, stub.errors


@pytest.fixture
def token_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture every log record at DEBUG during a test and check the bot token is in none of them."""
    caplog.set_level(logging.DEBUG)
    yield
    secret = TOKEN.partition(":")[2]
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert secret not in text, f"token leaked by {record.name}: {text[:200]}"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Tests run tiny tensors on a shared 2-core machine: extra intra-op threads only contend."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def calibrated_random_model(name: str, seed: int = 0) -> nn.Module:
    """A network with random weights whose BatchNorm statistics fit its own activations (eval mode).

    With the default running statistics a random network's eval-mode output is nearly constant; after
    one calibration pass its probabilities spread on both sides of 0.5, so masks are not degenerate.
    """
    torch.manual_seed(seed)
    model = create_model(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    return model.eval()


@pytest.fixture(scope="session")
def random_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder holding every network with calibrated random weights and a valid card."""
    directory = tmp_path_factory.mktemp("random-weights")
    for name in MODEL_NAMES:
        save_weights(
            calibrated_random_model(name), ModelCard(architecture=name, inference_size=RANDOM_INFERENCE_SIZE), directory
        )
    return directory


@pytest.fixture(scope="session")
def sample_photo_path() -> Path:
    """A real 200x300 JPEG of a person (Clothing Co-Parsing validation image 0021)."""
    return FIXTURES / "person_0021.jpg"


@pytest.fixture(scope="session")
def sample_photo_bytes(sample_photo_path: Path) -> bytes:
    """The bytes of the sample photo, as a user would upload them."""
    return sample_photo_path.read_bytes()
