"""Seeded fuzz: damaged files of every common format decode or fail with one of decoding's own errors.

Truncations, bit flips and edited header bytes (sizes, lengths, counts) go through both decode_image and
read_header; the only acceptable outcomes are a decoded RGB image (or a header) and an InputImageError.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from segmentation.decoding import InputImageError, decode_image, read_header

CASES_PER_FORMAT = 250
# A mutated header may claim a large but legal size; a lower limit keeps the fuzz fast without
# losing anything (the limit path itself is one of the outcomes exercised).
MAX_PIXELS = 1_000_000
SECONDS_PER_FILE = 5  # far above the milliseconds a small file takes: only a hang can reach it


class Hang(Exception):
    """A decode that did not finish within SECONDS_PER_FILE."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise Hang in this (main) thread if the block runs longer than `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _photo(rng: np.random.Generator) -> Image.Image:
    """A small photo-like image: a gradient with noise, so every encoder has real content to compress."""
    gradient = np.linspace(0, 200, 24, dtype=np.float32)[None, :, None] + np.zeros((16, 24, 3), np.float32)
    noise = rng.normal(0, 20, size=(16, 24, 3))
    return Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8))


def _originals() -> dict[str, bytes]:
    photo = _photo(np.random.default_rng(1))
    exif = Image.Exif()
    exif[0x0112] = 6
    encodings = {
        "JPEG": {"quality": 90, "exif": exif.tobytes()},
        "PNG": {},
        "WEBP": {"quality": 80},
        "GIF": {},
        "TIFF": {"compression": "tiff_lzw"},
        "BMP": {},
    }
    originals = {}
    for format, params in encodings.items():
        buffer = io.BytesIO()
        photo.save(buffer, format, **params)
        originals[format] = buffer.getvalue()
    return originals


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One damaged copy: a truncation, flipped bits, or header bytes set to extreme values."""
    damaged = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        return bytes(damaged[: rng.integers(0, len(damaged))])
    if kind == 1:
        for _ in range(rng.integers(1, 5)):
            position = rng.integers(len(damaged))
            damaged[position] ^= 1 << int(rng.integers(8))
        return bytes(damaged)
    # Header edits: the first 64 bytes hold sizes, lengths and counts in every one of these formats.
    for _ in range(rng.integers(1, 4)):
        position = int(rng.integers(min(64, len(damaged) - 2)))
        value = [0x00, 0xFF, 0x7F, 0x80, int(rng.integers(256))][rng.integers(5)]
        damaged[position : position + 2] = bytes([value, value])
    return bytes(damaged)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about damaged metadata it skips
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_damaged_files_decode_or_raise_an_input_error(format: str) -> None:
    original = _originals()[format]
    rng = np.random.default_rng(20_240_601 + len(format))
    outcomes = {"decoded": 0, "refused": 0}
    unexpected = []
    for case in range(CASES_PER_FORMAT):
        data = mutate(original, rng)
        for function in (read_header, decode_image):
            try:
                with deadline(SECONDS_PER_FILE):
                    result = function(data, max_pixels=MAX_PIXELS)
                if function is decode_image:
                    assert result.mode == "RGB" and result.width * result.height <= MAX_PIXELS
                outcomes["decoded"] += function is decode_image
            except InputImageError:
                outcomes["refused"] += function is decode_image
            except Exception as error:  # any other exception, or a Hang, is what this test looks for
                unexpected.append(f"case {case}, {function.__name__}: {type(error).__name__}: {error}")
    assert not unexpected, unexpected[:5]
    # Both outcomes occur, so the fuzz exercises decoding as well as refusal.
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes
