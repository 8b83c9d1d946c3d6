"""From a photo and its alpha matte to a lossless PNG: a transparent cutout, a solid background, or the matte."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class RenderOptions:
    """How to render the result: a transparent cutout, a solid background, or the mask alone."""

    background: tuple[int, int, int] | None = None  # solid colour instead of transparency
    mask_only: bool = False  # a greyscale PNG of the matte itself
    hard: bool = False  # a binary mask instead of soft, refined edges
    compress_level: int = 1  # PNG is lossless at any level; 1 is several times faster to encode than 6


DEFAULT_OPTIONS = RenderOptions()  # a transparent cutout with soft edges


def compose_png(image: Image.Image, alpha: np.ndarray, options: RenderOptions = DEFAULT_OPTIONS) -> bytes:
    """Render the photo and its matte as a lossless PNG: RGBA cutout, solid background, or the mask."""
    alpha8 = Image.fromarray(np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if options.mask_only:
        result = alpha8
    elif options.background is not None:
        result = Image.new("RGB", image.size, options.background)
        result.paste(image, mask=alpha8)
    else:
        # Zero the colour under fully transparent pixels: the removed background is really gone (not
        # just hidden), and the PNG is markedly smaller.
        pixels = np.array(image)
        pixels[np.asarray(alpha8) == 0] = 0
        result = Image.fromarray(pixels)
        result.putalpha(alpha8)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", compress_level=options.compress_level)
    return buffer.getvalue()
