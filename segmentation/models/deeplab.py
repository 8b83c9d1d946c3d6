"""DeepLabV3 on a ResNet18 encoder, with ASPP, a low-level decoder and Squeeze-and-Excite."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18


class ConvBnReLU(nn.Sequential):
    """A convolution followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """The image-pooling branch of ASPP: global average, 1x1 conv, broadcast back to the map size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        # No BatchNorm on a 1x1 map: it cannot train at batch size 1, and a biased conv does the same job.
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling, projected to 256."""

    def __init__(self, in_channels: int, out_channels: int = 256, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        branches = [ConvBnReLU(in_channels, out_channels)]
        branches += [ConvBnReLU(in_channels, out_channels, 3, dilation=rate) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(ConvBnReLU(len(branches) * out_channels, out_channels), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, bottleneck MLP, sigmoid gate on every channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def dilate_last_stage(stage: nn.Sequential, dilation: int = 2) -> None:
    """Run a ResNet stage of BasicBlocks at stride 1 with dilated 3x3 convs, as DeepLabV3 does.

    torchvision's replace_stride_with_dilation refuses BasicBlock, so the convolutions are set here.
    Only strides, dilations and paddings change: the weights keep their shapes.
    """
    first = stage[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    # As torchvision does for Bottleneck stages: the first conv keeps the previous dilation (1).
    convs = [first.conv2] + [conv for block in stage[1:] for conv in (block.conv1, block.conv2)]
    for conv in convs:
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet18 without its pooling and fully connected layers; returns layer1 and layer4."""

    def __init__(self, weights_path: str | Path | None = None, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, not {output_stride}")
        backbone = resnet18(weights=None)
        if weights_path is not None:
            # ImageNet weights only from a local file: nothing is ever downloaded.
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            backbone.load_state_dict(state)
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        if output_stride == 16:
            dilate_last_stage(self.layer4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_level = self.layer1(self.stem(x))
        return low_level, self.layer4(self.layer3(self.layer2(low_level)))


class DeepLabDecoder(nn.Module):
    """Fuses upsampled ASPP features with 48 low-level channels, applies SE, two 3x3 convs to 256."""

    def __init__(self, low_level_channels: int = 64, aspp_channels: int = 256, out_channels: int = 256) -> None:
        super().__init__()
        self.low_level = ConvBnReLU(low_level_channels, 48)
        fused = aspp_channels + 48  # 304
        self.attention = SqueezeExcite(fused)
        self.refine = nn.Sequential(ConvBnReLU(fused, out_channels, 3), ConvBnReLU(out_channels, out_channels, 3))

    def forward(self, aspp_features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(aspp_features, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        fused = torch.cat([upsampled, self.low_level(low_level)], dim=1)
        return self.refine(self.attention(fused))


class DeepLabV3ResNet18(nn.Module):
    """DeepLabV3 with a ResNet18 encoder, ASPP, a low-level decoder with SE; outputs one logit map."""

    def __init__(
        self, num_classes: int = 1, backbone_weights: str | Path | None = None, output_stride: int = 16
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.encoder = ResNet18Encoder(backbone_weights, output_stride)
        self.aspp = ASPP(512)
        self.decoder = DeepLabDecoder()
        self.head = nn.Conv2d(256, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_level, high_level = self.encoder(x)
        features = self.decoder(self.aspp(high_level), low_level)
        # The 1x1 head and bilinear upsampling are both linear and commute exactly; running the head
        # first upsamples one channel instead of 256, which saves most of the memory at full size.
        return F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
