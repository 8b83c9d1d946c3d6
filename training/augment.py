"""Joint augmentation of a photo and its mask, aimed at what users send rather than at the val sets."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

# Padding uses the normalisation mean, which becomes zero after normalising: the same as the
# predictor's padding, so borders look alike in training and in production.
MEAN_RGB = (124, 116, 104)


def as_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HWC uint8 photo and HW mask as CHW and 1HW tensors."""
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)[None].contiguous()


def _resize_long_side(image: torch.Tensor, mask: torch.Tensor, long_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = image.shape[-2:]
    scale = long_side / max(height, width)
    size = [max(8, round(height * scale)), max(8, round(width * scale))]
    image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    # Resampled as the photo is, then thresholded: NEAREST is not centre-aligned and put the mask about half
    # a pixel down and right of its photo at every rescale.
    scaled = TF.resize(mask.float(), size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image, (scaled >= 0.5).to(mask.dtype)


def synthetic_background(height: int, width: int) -> torch.Tensor:
    """A random background (solid, gradient or smooth noise) that holds no person, as uint8 CHW."""
    kind = random.random()
    if kind < 0.25:
        colour = torch.randint(0, 256, (3, 1, 1), dtype=torch.float32)
        background = colour.expand(3, height, width)
    elif kind < 0.55:
        start, end = torch.rand(3, 1, 1) * 255, torch.rand(3, 1, 1) * 255
        angle = random.uniform(0, 2 * math.pi)
        ys = torch.linspace(0, 1, height)[:, None]
        xs = torch.linspace(0, 1, width)[None, :]
        ramp = xs * math.cos(angle) + ys * math.sin(angle)
        ramp = ((ramp - ramp.min()) / (ramp.max() - ramp.min() + 1e-6))[None]
        background = start + (end - start) * ramp
    else:
        cells = random.choice([2, 4, 8, 16, 32])
        noise = torch.rand(1, 3, cells, max(2, cells * width // max(height, 1))) * 255
        background = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)[0]
    return background.clamp(0, 255).to(torch.uint8)


def _soft_alpha(mask: torch.Tensor) -> torch.Tensor:
    """A binary mask as float alpha with a one-pixel feather, so pasted edges are not razor sharp."""
    return F.avg_pool2d(mask[None].float(), 3, stride=1, padding=1, count_include_pad=False)[0]


@dataclass
class TrainAugment:
    """Random scale, new backgrounds, pasted extra people, rotation, flips, crop and photometric noise."""

    crop_size: int
    base_side: int
    scale_range: tuple[float, float] = (0.55, 1.3)
    paste_probability: float = 0.3
    background_probability: float = 0.15
    rotate_probability: float = 0.3
    max_rotation: float = 35.0
    hflip_probability: float = 0.5
    vflip_probability: float = 0.05
    dropout_probability: float = 0.2
    # Photos with no person at all (background crops, synthetic textures) and an empty mask: without
    # them a network learns "the salient thing is foreground" and cuts out cats and coffee cups.
    negative_probability: float = 0.0
    # Close-ups: a crop zoomed in on part of a person (legs, a torso, hands at the frame's edge), as everyday
    # photos cut people. Trained on whole figures, the network found faces and missed bodies without one.
    closeup_probability: float = 0.0
    closeup_part: tuple[float, float] = (0.25, 0.6)  # the crop's side, as a share of the people's box
    closeup_max_zoom: float = 3.0  # times the scale the photo is served at
    # Quarter turns: people lying down (on a bed, a beach, a sofa), which rotations of max_rotation never show.
    quarter_turn_probability: float = 0.0
    colour: bool = True  # colour jitter, blur, JPEG and noise; off for the research recipe

    def __post_init__(self) -> None:
        if not self.colour:
            self.photometric = v2.RandomApply([v2.RandomChannelPermutation()], p=0.5)
            return
        self.photometric = v2.Compose(
            [
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.05)], p=0.8),
                v2.RandomGrayscale(p=0.05),
                v2.RandomApply([v2.RandomChannelPermutation()], p=0.1),
                v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.15),
                v2.RandomApply([v2.JPEG((30, 95))], p=0.2),
            ]
        )

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        partner_image: np.ndarray,
        partner_mask: np.ndarray,
        *,
        labels_everyone: bool = True,
        closeups: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one pair (HWC uint8 photo, HW 0/1 mask); return CHW uint8 photo and 1HW uint8 mask.

        labels_everyone: the mask marks every person in the photo, so a crop outside it is person-free.
        closeups: the photo may be zoomed in on (closeup_probability); False for sets whose close-ups teach nothing.
        """
        image_t, mask_t = as_tensors(image, mask)
        if closeups and self.closeup_probability and random.random() < self.closeup_probability:
            # A photo with nobody in it is zoomed in on too (where its mask marks everyone), at the same zoom, so
            # that a texture filling the frame does not come to mean "a person".
            if mask_t.any():
                closeup = self._closeup(image_t, mask_t)
            else:
                closeup = self._empty_closeup(image_t, mask_t) if labels_everyone else None
            if closeup is not None:
                return self.finish(*closeup)
        image_t, mask_t = self.rescale(image_t, mask_t)
        if self.negative_probability and random.random() < self.negative_probability:
            image_t, mask_t = self._negative(image_t, mask_t, from_photo=labels_everyone)
        if random.random() < self.background_probability:
            alpha = _soft_alpha(mask_t)
            background = synthetic_background(*image_t.shape[-2:])
            image_t = (image_t * alpha + background * (1 - alpha)).round().to(torch.uint8)
        if random.random() < self.paste_probability:
            image_t, mask_t = self._paste_person(image_t, mask_t, *as_tensors(partner_image, partner_mask))
        return self.finish(image_t, mask_t)

    def rescale(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize (CHW photo, 1HW mask) to a random long side around the size the network serves at."""
        return _resize_long_side(image, mask, round(self.base_side * random.uniform(*self.scale_range)))

    def finish(self, image_t: torch.Tensor, mask_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometry, crop and photometric noise on a sample whose content is settled (CHW, 1HW uint8)."""
        if self.quarter_turn_probability and random.random() < self.quarter_turn_probability:
            turns = random.choice((1, 3))
            image_t = image_t.rot90(turns, (-2, -1)).contiguous()
            mask_t = mask_t.rot90(turns, (-2, -1)).contiguous()
        if random.random() < self.rotate_probability:
            angle = random.uniform(-self.max_rotation, self.max_rotation)
            image_t = TF.rotate(image_t, angle, interpolation=InterpolationMode.BILINEAR, fill=list(MEAN_RGB))
            mask_t = TF.rotate(mask_t, angle, interpolation=InterpolationMode.NEAREST, fill=[0])
        if random.random() < self.hflip_probability:
            image_t, mask_t = image_t.flip(-1), mask_t.flip(-1)
        if random.random() < self.vflip_probability:
            image_t, mask_t = image_t.flip(-2), mask_t.flip(-2)
        image_t, mask_t = self._random_crop(image_t, mask_t)
        image_t = self.photometric(image_t)
        if self.colour and random.random() < 0.15:
            noise = torch.randn(image_t.shape) * random.uniform(2, 12)
            image_t = (image_t + noise).clamp(0, 255).to(torch.uint8)
        if random.random() < self.dropout_probability:
            image_t = self._coarse_dropout(image_t)
        return image_t, mask_t

    def _closeup(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A square crop of closeup_part of the people's box around one of their pixels, at crop_size (CHW, 1HW).

        None for a photo so long and thin that even its short side would be zoomed past closeup_max_zoom.
        """
        height, width = image.shape[-2:]
        rows, cols = torch.nonzero(mask[0], as_tuple=True)
        box_side = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1
        least = self._least_window(height, width)
        if least is None:
            return None
        window = round(max(least, 8, box_side * random.uniform(*self.closeup_part)))
        window = min(window, height, width)
        pick = random.randrange(len(rows))
        # The picked pixel lands anywhere but the window's outer eighths: often a border of the person shows.
        top = int(rows[pick]) - random.randint(window // 8, window - 1 - window // 8)
        left = int(cols[pick]) - random.randint(window // 8, window - 1 - window // 8)
        top, left = min(max(0, top), height - window), min(max(0, left), width - window)
        return self._zoomed(image, mask, top, left, window)

    def _empty_closeup(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A square crop of closeup_part of a person-free photo's short side, at crop_size; None past the zoom cap."""
        height, width = image.shape[-2:]
        least = self._least_window(height, width)
        if least is None:
            return None
        window = min(round(max(least, 8, min(height, width) * random.uniform(*self.closeup_part))), height, width)
        top, left = random.randint(0, height - window), random.randint(0, width - window)
        return self._zoomed(image, mask, top, left, window)

    def _least_window(self, height: int, width: int) -> float | None:
        """The smallest close-up window within closeup_max_zoom; None when even the photo's short side is past it."""
        # Never more than closeup_max_zoom times the usual scale: past it, the in-memory photo is upsampled to mush.
        least = self.crop_size * max(height, width) / (self.base_side * self.closeup_max_zoom)
        return None if least > min(height, width) else least

    def _zoomed(
        self, image: torch.Tensor, mask: torch.Tensor, top: int, left: int, window: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The square window at (top, left), resized to crop_size."""
        window_image = image[:, top : top + window, left : left + window]
        window_mask = mask[:, top : top + window, left : left + window]
        return _resize_long_side(window_image, window_mask, self.crop_size)

    def _paste_person(
        self, image: torch.Tensor, mask: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste the person of another photo at a random place and size; the masks combine."""
        height, width = image.shape[-2:]
        other, other_mask = _resize_long_side(other, other_mask, round(max(height, width) * random.uniform(0.35, 1.0)))
        if random.random() < 0.5:
            other, other_mask = other.flip(-1), other_mask.flip(-1)
        oh, ow = other.shape[-2:]
        top = random.randint(-oh // 3, max(-oh // 3, height - 2 * oh // 3))
        left = random.randint(-ow // 2, max(-ow // 2, width - ow // 2))
        # Intersection of the pasted photo with the target, in both coordinate frames.
        y0, y1, x0, x1 = max(top, 0), min(top + oh, height), max(left, 0), min(left + ow, width)
        if y1 <= y0 or x1 <= x0:
            return image, mask
        patch = other[:, y0 - top : y1 - top, x0 - left : x1 - left]
        patch_mask = other_mask[:, y0 - top : y1 - top, x0 - left : x1 - left]
        alpha = _soft_alpha(patch_mask)
        image = image.clone()
        region = image[:, y0:y1, x0:x1].float()
        image[:, y0:y1, x0:x1] = (patch * alpha + region * (1 - alpha)).round().to(torch.uint8)
        mask = mask.clone()
        mask[:, y0:y1, x0:x1] = torch.maximum(mask[:, y0:y1, x0:x1], patch_mask)
        return image, mask

    def _negative(
        self, image: torch.Tensor, mask: torch.Tensor, *, from_photo: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A crop of the photo's background that holds no person, or a synthetic texture; an empty mask."""
        height, width = image.shape[-2:]
        for _ in range(25 if from_photo else 0):
            side = min(height, width, max(16, round(min(height, width) * random.uniform(0.2, 0.7))))
            top, left = random.randint(0, height - side), random.randint(0, width - side)
            if not mask[:, top : top + side, left : left + side].any():
                crop = image[:, top : top + side, left : left + side]
                size = [self.crop_size, self.crop_size]
                return TF.resize(crop, size, interpolation=InterpolationMode.BILINEAR, antialias=True), torch.zeros(
                    1, self.crop_size, self.crop_size, dtype=mask.dtype
                )
        background = synthetic_background(self.crop_size, self.crop_size)
        return background, torch.zeros(1, self.crop_size, self.crop_size, dtype=mask.dtype)

    def _random_crop(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.crop_size
        height, width = image.shape[-2:]
        pad_h, pad_w = max(0, size - height), max(0, size - width)
        if pad_h or pad_w:
            top, left = random.randint(0, pad_h), random.randint(0, pad_w)
            padding = [left, top, pad_w - left, pad_h - top]
            image = TF.pad(image, padding, fill=list(MEAN_RGB))
            mask = TF.pad(mask, padding, fill=0)
            height, width = image.shape[-2:]
        top, left = random.randint(0, height - size), random.randint(0, width - size)
        return image[:, top : top + size, left : left + size], mask[:, top : top + size, left : left + size]

    @staticmethod
    def _coarse_dropout(image: torch.Tensor, max_holes: int = 6, max_fraction: float = 0.12) -> torch.Tensor:
        image = image.clone()
        height, width = image.shape[-2:]
        for _ in range(random.randint(1, max_holes)):
            hole_h = random.randint(1, max(1, int(height * max_fraction)))
            hole_w = random.randint(1, max(1, int(width * max_fraction)))
            top, left = random.randint(0, height - hole_h), random.randint(0, width - hole_w)
            image[:, top : top + hole_h, left : left + hole_w] = torch.randint(0, 256, (3, 1, 1), dtype=torch.uint8)
        return image


def build_augment(
    kind: str,
    crop_size: int,
    base_side: int,
    scale_range: tuple[float, float],
    *,
    closeup_probability: float = 0.0,
    quarter_turn_probability: float = 0.0,
) -> TrainAugment:
    """The research recipe (crop, flips, rotation, channel shuffle, dropout) or ours on top of it."""
    if kind == "research":
        if closeup_probability or quarter_turn_probability:
            raise ValueError("the research recipe has no close-ups or quarter turns; use augment = 'strong'")
        return TrainAugment(
            crop_size,
            base_side,
            scale_range=(1.0, 1.0),
            paste_probability=0.0,
            background_probability=0.0,
            rotate_probability=0.5,
            vflip_probability=0.5,
            dropout_probability=0.5,
            colour=False,
        )
    if kind == "strong":
        return TrainAugment(
            crop_size,
            base_side,
            scale_range=scale_range,
            negative_probability=0.08,
            closeup_probability=closeup_probability,
            quarter_turn_probability=quarter_turn_probability,
        )
    raise ValueError(f"unknown augmentation {kind!r}; choose 'strong' or 'research'")
