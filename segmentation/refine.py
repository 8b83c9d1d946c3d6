"""Edge refinement: a fast guided filter that makes the matte follow the photo's own edges.

The filter's coefficients are fitted at the network's resolution; applying them at full resolution is done
in horizontal bands of rows, so a 40-megapixel photo never needs a full-size float image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Rows per band: about a million pixels, so a band's float temporaries stay a few megabytes.
BAND_PIXELS = 1 << 20


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, with the window shrunk at the borders."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_filter_coefficients(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel linear coefficients (a, b) so that a * guide + b follows source inside each window."""
    mean_guide, mean_source = _box(guide, radius), _box(source, radius)
    covariance = _box(guide * source, radius) - mean_guide * mean_source
    variance = _box(guide * guide, radius) - mean_guide * mean_guide
    a = covariance / (variance + eps)
    b = mean_source - a * mean_guide
    return _box(a, radius), _box(b, radius)


def fast_guided_upsample(
    guide_full: torch.Tensor, guide_low: torch.Tensor, source_low: torch.Tensor, radius: int = 2, eps: float = 1e-3
) -> torch.Tensor:
    """Upsample a low-resolution matte to the full-resolution guide (He and Sun's fast guided filter).

    The filter's coefficients are fitted at low resolution, where it is cheap, then upsampled and
    applied to the full-resolution grey guide, so the matte's edges snap to the photo's edges.
    All tensors are N x 1 x H x W floats in [0, 1]. The whole-image reference; `apply_in_bands` is what serves.
    """
    a, b = guided_filter_coefficients(guide_low, source_low, radius, eps)
    size = guide_full.shape[-2:]
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return (a * guide_full + b).clamp_(0, 1)


class RowUpsampler:
    """Bilinear upsampling of low-resolution maps, one band of full-resolution rows at a time.

    Equal to F.interpolate(mode="bilinear", align_corners=False) on the whole map: the columns are
    interpolated once (h x W, small), and each band of output rows blends two of those rows.
    """

    def __init__(self, maps: list[torch.Tensor], width: int, height: int) -> None:
        low_height = maps[0].shape[-2]
        stacked = torch.stack([m.reshape(low_height, -1) for m in maps])[None]  # 1 x maps x h x w
        self.columns = F.interpolate(stacked, size=(low_height, width), mode="bilinear", align_corners=False)[0]
        # Source row of each output row, as F.interpolate computes it (half-pixel centres, clamped at 0).
        source = ((torch.arange(height, dtype=torch.float32) + 0.5) * (low_height / height) - 0.5).clamp_(min=0)
        self.upper = source.floor().long().clamp_(max=low_height - 1)
        self.lower = (self.upper + 1).clamp_(max=low_height - 1)
        self.weight = (source - self.upper)[:, None]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The maps at full resolution for rows start..stop-1: maps x rows x W."""
        upper = self.columns[:, self.upper[start:stop]]
        lower = self.columns[:, self.lower[start:stop]]
        return upper.lerp_(lower, self.weight[start:stop])


def band_rows(width: int) -> int:
    """Rows per band for a photo of this width."""
    return max(1, BAND_PIXELS // max(1, width))


def apply_in_bands(
    image: Image.Image,
    coefficients: tuple[torch.Tensor, torch.Tensor] | None,
    source_low: torch.Tensor,
    out: np.ndarray,
    *,
    hard_threshold: float | None = None,
) -> None:
    """Write the full-resolution matte of `image` into `out` (H x W, float32 in [0, 1] or uint8 0-255).

    With `coefficients` (a, b at low resolution, for a guide in [0, 1]) the matte is a * grey + b, the grey
    guide read band by band from the photo; without, it is `source_low` upsampled bilinearly. With
    `hard_threshold` the matte is binary: 1 (or 255) where it reaches the threshold.
    """
    width, height = image.size
    if coefficients is not None:
        a, b = coefficients
        maps = [a / 255, b]  # the guide is read as uint8 luminance: fold its scale into a
    else:
        maps = [source_low]
    upsampler = RowUpsampler(maps, width, height)
    target = torch.from_numpy(out)
    to_output: Callable[[torch.Tensor], torch.Tensor]
    if hard_threshold is not None:
        full = 255 if out.dtype == np.uint8 else 1

        def to_output(alpha: torch.Tensor) -> torch.Tensor:
            return (alpha >= hard_threshold).to(target.dtype).mul_(full)
    elif out.dtype == np.uint8:

        def to_output(alpha: torch.Tensor) -> torch.Tensor:
            return alpha.mul_(255).add_(0.5).to(torch.uint8)  # round to nearest, as np.clip(x*255+0.5) does
    else:

        def to_output(alpha: torch.Tensor) -> torch.Tensor:
            return alpha

    step = band_rows(width)
    for start in range(0, height, step):
        stop = min(height, start + step)
        upsampled = upsampler.rows(start, stop)
        if coefficients is not None:
            # Luminance of this band only (Pillow's ITU-R 601 weights, as uint8): no full-size grey guide.
            grey = torch.from_numpy(np.array(image.crop((0, start, width, stop)).convert("L")))
            alpha = upsampled[0].mul_(grey).add_(upsampled[1])
        else:
            alpha = upsampled[0]
        target[start:stop] = to_output(alpha.clamp_(0, 1))


def sharpen(probability: torch.Tensor, threshold: float, strength: float) -> torch.Tensor:
    """A contrast curve around the threshold: logits scaled by `strength`, so the hard decision never changes."""
    if strength == 1:
        return probability
    eps = 1e-6
    centre = math.log(threshold / (1 - threshold))
    logits = torch.logit(probability, eps=eps) - centre
    return torch.sigmoid(logits * strength + centre)


def soft_band(probability: torch.Tensor, threshold: float, radius: int) -> torch.Tensor:
    """1 within `radius` pixels of the outline of the hard mask (probability >= threshold), 0 elsewhere.

    An outline pixel has both person and background in its 3x3 neighbourhood; the photo's border is not
    an outline (max_pool2d pads with -inf). N x 1 x h x w in, the same shape out.
    """
    hard = (probability >= threshold).float()
    grown = F.max_pool2d(hard, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-hard, 3, stride=1, padding=1)
    edge = grown - shrunk  # 1 where the neighbourhood is mixed
    return F.max_pool2d(edge, 2 * radius + 1, stride=1, padding=radius)


def restrict_to_band(
    coefficients: tuple[torch.Tensor, torch.Tensor], probability: torch.Tensor, threshold: float, radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided-filter coefficients that stay soft near the outline and give a hard 0 or 1 everywhere else.

    Outside the band a = 0 and b = the hard decision, so the refined matte there is exactly 0 or 1: an
    unsure network far from any edge no longer lays a grey veil over the photo. Done at low resolution,
    it costs nothing at full resolution, and the band's border blends over one low-resolution pixel.
    """
    a, b = coefficients
    band = soft_band(probability, threshold, radius)
    hard = (probability >= threshold).float()
    return a * band, b * band + hard * (1 - band)
