"""Composites that teach what users send: people cut from labelled photos, pasted onto real scenes.

One to six people per frame, at every scale from a small figure in the distance (5% of the frame height)
to a close-up, overlapping, with brightness, colour and sharpness matched to the background so that the
paste is not a give-away. The mask of a composite is exactly the union of the pasted people's masks (and
of the people already in the background photo, when a people photo is the background).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# How many people a composite holds, and how often: mostly one to three, sometimes a group.
PEOPLE_PER_FRAME = (1, 2, 3, 4, 5, 6)
PEOPLE_WEIGHTS = (30, 25, 18, 12, 8, 7)


@dataclass(frozen=True)
class Cutout:
    """One donor person: the photo cropped to the box around its mask (CHW uint8) and the mask (1HW uint8)."""

    image: torch.Tensor
    mask: torch.Tensor
    touches_bottom: bool  # cut off by the photo's lower edge (a bust, a half-body): pasted standing on the frame


def cut_out(image: np.ndarray, mask: np.ndarray, margin: int = 2) -> Cutout | None:
    """The box around the people of a photo (HWC photo, HW 0/1 mask), or None when there is nobody."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    top, bottom = max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)
    left, right = max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)
    crop = torch.from_numpy(np.ascontiguousarray(image[top:bottom, left:right])).permute(2, 0, 1).contiguous()
    crop_mask = torch.from_numpy(np.ascontiguousarray(mask[top:bottom, left:right]))[None]
    return Cutout(crop, crop_mask, touches_bottom=bool(rows[-1] >= height - 2))


def sharpness(image: torch.Tensor) -> float:
    """Mean absolute Laplacian of the grey image: low for blurred or smooth photos."""
    grey = image.float().mean(0, keepdim=True)[None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return float(F.conv2d(grey, kernel).abs().mean())


def match_appearance(person: torch.Tensor, alpha: torch.Tensor, region: torch.Tensor, strength: float) -> torch.Tensor:
    """Move the person's per-channel mean and spread part of the way towards those of the background region."""
    pixels = person.float()
    weight = alpha.expand_as(pixels)
    total = weight.sum((1, 2)).clamp_min(1.0)
    person_mean = (pixels * weight).sum((1, 2)) / total
    person_std = (((pixels - person_mean.view(3, 1, 1)) ** 2 * weight).sum((1, 2)) / total).sqrt().clamp_min(1.0)
    region = region.float()
    region_mean, region_std = region.mean((1, 2)), region.std((1, 2)).clamp_min(1.0)
    target_mean = person_mean + strength * (region_mean - person_mean)
    # Spread changes less than brightness: a person keeps their own contrast against a flat wall.
    target_std = person_std * (region_std / person_std) ** (strength / 2)
    matched = (pixels - person_mean.view(3, 1, 1)) / person_std.view(3, 1, 1) * target_std.view(3, 1, 1)
    return (matched + target_mean.view(3, 1, 1)).clamp(0, 255)


def paste(
    canvas: torch.Tensor,
    canvas_mask: torch.Tensor,
    person: torch.Tensor,
    person_mask: torch.Tensor,
    top: int,
    left: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a person (CHW float, 1HW 0/1 mask) at (top, left), clipped to the canvas; the masks combine.

    The pasted mask is the binary person mask itself, so the composite's label matches what was pasted;
    only the colour is blended over a one-pixel feather so edges are not razor sharp.
    """
    height, width = canvas.shape[-2:]
    ph, pw = person.shape[-2:]
    y0, y1, x0, x1 = max(top, 0), min(top + ph, height), max(left, 0), min(left + pw, width)
    if y1 <= y0 or x1 <= x0:
        return canvas, canvas_mask
    window = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    patch, patch_mask = person[:, window[0], window[1]], person_mask[:, window[0], window[1]]
    alpha = F.avg_pool2d(patch_mask[None].float(), 3, stride=1, padding=1, count_include_pad=False)[0]
    alpha = torch.maximum(alpha, patch_mask.float())  # inside the mask it is all person; feather outside only
    region = canvas[:, y0:y1, x0:x1].float()
    canvas[:, y0:y1, x0:x1] = (patch * alpha + region * (1 - alpha)).round().clamp(0, 255).to(canvas.dtype)
    canvas_mask[:, y0:y1, x0:x1] = torch.maximum(canvas_mask[:, y0:y1, x0:x1], patch_mask.to(canvas_mask.dtype))
    return canvas, canvas_mask


@dataclass
class Compositor:
    """Builds one composite from a background and donor cut-outs; all randomness from the `random` module."""

    min_height_fraction: float = 0.05  # a figure in the distance
    max_height_fraction: float = 1.1  # a close-up, cut by the frame
    match_probability: float = 0.8

    def __call__(
        self, background: torch.Tensor, background_mask: torch.Tensor, donors: list[Cutout]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste each donor onto a copy of the background (CHW uint8, 1HW uint8); returns photo and mask."""
        canvas, canvas_mask = background.clone(), background_mask.clone()
        height, width = canvas.shape[-2:]
        background_sharpness = sharpness(canvas)
        for donor in donors:
            person, person_mask = self._scaled(donor, height, width)
            ph, pw = person.shape[-2:]
            if donor.touches_bottom:  # stand the cut-off body on the frame's lower edge
                top = height - ph + random.randint(0, max(0, ph // 10))
            else:
                top = random.randint(-ph // 5, max(-ph // 5, height - ph * 4 // 5))
            left = random.randint(-pw // 3, max(-pw // 3, width - pw * 2 // 3))
            person = person.float()
            if random.random() < self.match_probability:
                y0, y1 = max(0, top), min(height, top + ph)
                x0, x1 = max(0, left), min(width, left + pw)
                if y1 > y0 and x1 > x0:
                    region = canvas[:, y0:y1, x0:x1]
                    person = match_appearance(person, person_mask.float(), region, random.uniform(0.2, 0.6))
                person = self._match_sharpness(person, background_sharpness)
            canvas, canvas_mask = paste(canvas, canvas_mask, person, person_mask, top, left)
        return canvas, canvas_mask

    def _scaled(self, donor: Cutout, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The donor resized to a random height between a distant figure and a close-up (log-uniform)."""
        low, high = math.log(self.min_height_fraction), math.log(self.max_height_fraction)
        target = height * math.exp(random.uniform(low, high))
        dh, dw = donor.image.shape[-2:]
        scale = min(target / dh, 1.2 * width / dw)  # a wide group still fits the frame
        size = [max(2, round(dh * scale)), max(2, round(dw * scale))]
        image = TF.resize(donor.image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        soft = TF.resize(donor.mask.float(), size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        if random.random() < 0.5:
            image, soft = image.flip(-1), soft.flip(-1)
        return image, (soft >= 0.5).to(torch.uint8)

    @staticmethod
    def _match_sharpness(person: torch.Tensor, target: float) -> torch.Tensor:
        """Blur a person that is much sharper than the background (a portrait pasted onto a soft scene)."""
        if min(person.shape[-2:]) < 8:
            return person
        own = sharpness(person)
        if own <= 1.4 * target or own == 0:
            return person
        sigma = min(2.5, 0.6 * (own / max(target, 1e-3) - 1))
        kernel = max(3, 2 * math.ceil(2 * sigma) + 1)
        return TF.gaussian_blur(person, [kernel, kernel], [sigma, sigma])


def person_free_crop(image: torch.Tensor, mask: torch.Tensor, tries: int = 25) -> torch.Tensor | None:
    """A crop of at least a fifth of the shorter side that holds no person, or None if none was found."""
    height, width = image.shape[-2:]
    for _ in range(tries):
        crop_h = max(16, round(height * random.uniform(0.3, 0.8)))
        crop_w = max(16, round(width * random.uniform(0.3, 0.8)))
        if crop_h > height or crop_w > width:
            continue
        top, left = random.randint(0, height - crop_h), random.randint(0, width - crop_w)
        if not mask[:, top : top + crop_h, left : left + crop_w].any():
            return image[:, top : top + crop_h, left : left + crop_w]
    return None


def people_count() -> int:
    """How many people the next composite holds."""
    return random.choices(PEOPLE_PER_FRAME, weights=PEOPLE_WEIGHTS)[0]
