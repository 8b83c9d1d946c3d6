"""The segmentation networks and a registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from segmentation import MODEL_NAMES
from segmentation.models.deeplab import DeepLabV3ResNet18
from segmentation.models.unet import UNet


def _deeplab(*, backbone_weights: str | Path | None = None, output_stride: int | None = None) -> nn.Module:
    return DeepLabV3ResNet18(num_classes=1, backbone_weights=backbone_weights, output_stride=output_stride or 16)


def _unet(*, backbone_weights: str | Path | None = None, output_stride: int | None = None) -> nn.Module:
    if backbone_weights is not None:
        raise ValueError("the UNet has no pretrained backbone; backbone_weights applies to 'deeplab' only")
    if output_stride not in (None, 16):  # the UNet's bottleneck is at stride 16 by construction
        raise ValueError("the UNet's output stride is fixed at 16; output_stride applies to 'deeplab' only")
    return UNet(in_channels=3, num_classes=1)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"deeplab": _deeplab, "unet": _unet}
assert tuple(_BUILDERS) == MODEL_NAMES, "segmentation.MODEL_NAMES must list every builder"


def create_model(
    name: str, *, backbone_weights: str | Path | None = None, output_stride: int | None = None
) -> nn.Module:
    """Build the named network with random weights (plus optional local ImageNet backbone weights).

    output_stride (DeepLab: 16 by default, or 32 as the first shipped weights were trained) is None
    for the network's default.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}") from None
    return builder(backbone_weights=backbone_weights, output_stride=output_stride)


__all__ = ["MODEL_NAMES", "DeepLabV3ResNet18", "UNet", "create_model"]
