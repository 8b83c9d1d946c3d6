"""The whole path for one photo: decode, predict, refine, compose and encode, with the time of each stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from segmentation.decoding import DEFAULT_MAX_PIXELS, decode_image
from segmentation.predictor import Predictor
from segmentation.rendering import DEFAULT_OPTIONS, RenderOptions, compose_png

# A person covering less than this share of the photo is treated as "no person found".
MIN_PERSON_FRACTION = 0.002


@dataclass
class RemovalResult:
    """The rendered PNG and a few facts about the matte."""

    png: bytes
    width: int
    height: int
    model: str
    timings: dict[str, float] = field(default_factory=dict)
    foreground_fraction: float = 0.0
    person_found: bool = False


def person_share(matte: np.ndarray, threshold8: int) -> float:
    """Share of a uint8 matte's pixels at or above the threshold, from its histogram (no full-size temporary)."""
    histogram = Image.fromarray(matte, mode="L").histogram()
    return sum(histogram[threshold8:]) / matte.size


def render(
    image: Image.Image, predictor: Predictor, options: RenderOptions = DEFAULT_OPTIONS, *, in_place: bool = False
) -> RemovalResult:
    """Predict, refine, compose and encode one decoded photo, with the time of each stage.

    `in_place`: the photo may be overwritten by the result (saves a full-size copy of a photo nobody reuses).
    """
    started = time.perf_counter()
    alpha, timings = predictor.predict_alpha8_timed(image, hard=options.hard)
    foreground = person_share(alpha, predictor.threshold8)
    composed = time.perf_counter()
    png = compose_png(image, alpha, options, in_place=in_place)
    finished = time.perf_counter()
    return RemovalResult(
        png=png,
        width=image.width,
        height=image.height,
        model=predictor.name,
        timings={**timings, "encode": finished - composed, "total": finished - started},
        foreground_fraction=foreground,
        person_found=foreground >= MIN_PERSON_FRACTION,
    )


def remove_background(
    data: bytes | str | Path,
    predictor: Predictor | Callable[[], Predictor],
    options: RenderOptions = DEFAULT_OPTIONS,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> RemovalResult:
    """The whole path for one photo: decode, predict, refine, compose and encode, with timings.

    `predictor` may be a function that loads one: it is called after decoding, so a bad upload gets
    its own answer even when the model cannot be loaded.
    """
    started = time.perf_counter()
    image = decode_image(data, max_pixels=max_pixels)
    decoded = time.perf_counter()
    loaded = predictor if isinstance(predictor, Predictor) else predictor()
    result = render(image, loaded, options, in_place=True)  # the photo was decoded here, for this result only
    result.timings = {"decode": decoded - started, **result.timings, "total": time.perf_counter() - started}
    return result
