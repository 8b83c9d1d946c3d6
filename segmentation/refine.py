"""Edge refinement: a fast guided filter that makes the matte follow the photo's own edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    All tensors are N x 1 x H x W floats in [0, 1].
    """
    a, b = guided_filter_coefficients(guide_low, source_low, radius, eps)
    size = guide_full.shape[-2:]
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return (a * guide_full + b).clamp_(0, 1)
