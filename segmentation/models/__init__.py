"""The segmentation networks and a registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (Conv2d, BatchNorm2d) children where the norm takes the conv's output directly."""
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        candidates = list(pairwise(children))
    else:  # torchvision's BasicBlock: conv1 -> bn1 -> relu -> conv2 -> bn2
        candidates = [(f"conv{name[2:]}", name) for name in children if name.startswith("bn")]
    return [
        (conv, norm)
        for conv, norm in candidates
        if isinstance(children.get(conv), nn.Conv2d) and isinstance(children.get(norm), nn.BatchNorm2d)
    ]


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of an eval-mode network into the convolution before it, in place.

    The outputs stay the same (to float rounding) and each folded layer saves a pass over its activations:
    about 7% of DeepLab's network time on a 2-core AVX2 CPU. Inference only: the folded network cannot train.
    """
    if model.training:
        raise ValueError("fold_batch_norms needs a network in eval mode: training updates the norms' statistics")
    for module in list(model.modules()):
        for conv, norm in _conv_norm_pairs(module):
            setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, norm)))
            setattr(module, norm, nn.Identity())
    return model


__all__ = ["MODEL_NAMES", "DeepLabV3ResNet18", "UNet", "create_model", "fold_batch_norms"]
