"""From a photo to an alpha matte at the original resolution: resize, pad, network, refine."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segmentation.cpu import prefers_channels_last, use_bf16
from segmentation.models import fold_batch_norms
from segmentation.refine import apply_in_bands, guided_filter_coefficients, restrict_to_band, sharpen
from segmentation.weights_io import WEIGHTS_DIR, ModelCard, load_model

# Soft alpha only this close to the outline of the network's own mask, as a share of the diagonal at the
# network's resolution (at least one pixel there); farther away the matte is 0 or 1 (issue 7's veil).
# Measured on 40 val photos per set (training.evaluate): the veil falls with the band's width, from 0.29
# to 0.14 / 0.096 / 0.056 / 0.039 on people-coco at no band / 2% / 1% / 0.5% / 0.25% (one pixel at 384),
# and Dice, IoU and the share kept do not move: the band changes only the softness, never the decision.
SOFT_BAND = 0.0025
# The guided filter and the soft band run at no coarser than this long side (the probability upsampled
# bilinearly, the photo resized to match): at the UNet's 192 px the soft edge, a few network pixels wide, was
# itself wider than the veil's 2% of the diagonal. Refined at 384 the UNet's veil fell from 0.017-0.038 to
# 0.009-0.022 a set on the full val splits, union Dice 0.9218 -> 0.9211 and people-coco IoU 0.3964 -> 0.3964
# (the shipped weights of the sixth UNet run); DeepLab, served at 384 or more, is refined as before.
REFINE_SIZE = 384
# Logit scale of a contrast curve on the probability (1: none). A scale of 2 cut the veil a little more
# (0.039 -> 0.037 on people-coco) but moved Dice by -0.0001 on people-portraits, so it is off.
CONTRAST = 1.0
# A second pass on a crop around the people when they cover less than this share of the frame (0: never),
# with this margin around them (a share of their box on each side).
SMALL_SUBJECT = 0.08
SECOND_PASS_MARGIN = 0.25


class Predictor:
    """Runs one network on photos: resize, pad to /32, normalise, predict, then refine at full size."""

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        fast: bool | None = None,
        soft_band: float = SOFT_BAND,
        contrast: float = CONTRAST,
        second_pass: bool | None = None,
        refine_size: int = REFINE_SIZE,
    ) -> None:
        self.card = card
        self.second_pass = card.second_pass if second_pass is None else second_pass
        self.soft_band = soft_band  # 0: soft wherever the guided filter makes it soft
        self.refine_size = refine_size  # 0: refine at the network's resolution
        self.contrast = contrast
        self.name = card.architecture
        # bf16 autocast plus channels_last roughly halves CPU time where bf16 units really run it (use_bf16).
        self.fast = use_bf16() if fast is None else fast
        # channels_last pays in float32 too on AVX-512 CPUs (the DeepLab network 0.27 s -> 0.23 s).
        self.channels_last = self.fast or prefers_channels_last()
        self.model = model.eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(card.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(card.std).view(1, 3, 1, 1)

    @classmethod
    def from_weights(cls, name: str, weights_dir: Path | None = None, *, fast: bool | None = None) -> Predictor:
        """Load the shipped (or given) weights of a network into a predictor."""
        model, card = load_model(name, weights_dir or WEIGHTS_DIR)
        return cls(fold_batch_norms(model), card, fast=fast)

    def network_size(self, width: int, height: int, long_side: int | None = None) -> tuple[int, int]:
        """The (width, height) the photo is resized to: long side at the card's size (or long_side), aspect kept."""
        scale = (long_side or self.card.inference_size) / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    @torch.inference_mode()
    def predict_low_res(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """Person probability at the network's resolution, with the resized photo it was computed on.

        With the card's extra_sizes, the mean over those sizes too, each resized to the card's size first.
        """
        probability, pixels = self.probability_at(image, self.card.inference_size)
        if not self.card.extra_sizes:
            return probability, pixels
        total = torch.from_numpy(probability).clone()
        for long_side in self.card.extra_sizes:
            other = torch.from_numpy(self.probability_at(image, long_side)[0])[None, None]
            total += F.interpolate(other, size=probability.shape, mode="bilinear", align_corners=False)[0, 0]
        return total.div_(1 + len(self.card.extra_sizes)).numpy(), pixels

    @torch.inference_mode()
    def probability_at(self, image: Image.Image, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        """Person probability with the photo resized to long_side, and the resized photo."""
        small = image.resize(self.network_size(*image.size, long_side), Image.Resampling.BILINEAR, reducing_gap=3.0)
        pixels = np.asarray(small)
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().div_(255)
        tensor = (tensor - self._mean) / self._std
        height, width = pixels.shape[:2]
        # Pad right and bottom to a multiple of 32 with zeros, i.e. the mean colour after normalising.
        tensor = F.pad(tensor, [0, (-width) % 32, 0, (-height) % 32])
        if self.card.flip_average:  # one batch of two: the photo and its mirror image
            tensor = torch.cat([tensor, tensor.flip(-1)])
        # The model's own device: training validates through this same path, on a GPU where it has one.
        parameter = next(self.model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        tensor = tensor.to(device)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        context = torch.autocast(device.type, dtype=torch.bfloat16) if self.fast else nullcontext()
        with context:
            logits = self.model(tensor)
        probabilities = torch.sigmoid(logits.float()).cpu()
        if self.card.flip_average:
            probabilities = (probabilities[:1] + probabilities[1:].flip(-1)) / 2
        probability = probabilities[0, 0, :height, :width]
        return probability.numpy(), pixels

    @torch.inference_mode()
    def predict_alpha(self, image: Image.Image, *, refine: bool = True) -> np.ndarray:
        """The alpha matte (float32 in [0, 1]) at the photo's full resolution."""
        return self.predict_alpha_timed(image, refine=refine)[0]

    @torch.inference_mode()
    def predict_alpha_timed(self, image: Image.Image, *, refine: bool = True) -> tuple[np.ndarray, dict[str, float]]:
        """predict_alpha, also returning the seconds spent in "predict" and "refine"."""
        return self._matte(image, np.float32, refine=refine, hard=False)

    @torch.inference_mode()
    def predict_alpha8_timed(
        self, image: Image.Image, *, refine: bool = True, hard: bool = False
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The matte as uint8 (0-255, what a PNG holds) with the seconds per stage; `hard`: 0 or 255 only.

        A quarter of the float matte's memory: a 40-megapixel photo's matte is 40 MB instead of 160 MB.
        """
        return self._matte(image, np.uint8, refine=refine and not hard, hard=hard)

    def _matte(
        self, image: Image.Image, dtype: type[np.generic], *, refine: bool, hard: bool
    ) -> tuple[np.ndarray, dict[str, float]]:
        started = time.perf_counter()
        probability, small_pixels = self.predict_low_res(image)
        predicted = time.perf_counter()
        alpha = self.matte_from_probability(image, probability, small_pixels, dtype, refine=refine, hard=hard)
        timings = {"predict": predicted - started, "refine": time.perf_counter() - predicted}
        box = self.small_subject_box(probability, image.size) if self.second_pass else None
        if box is not None:
            # A second look at the people alone, at the network's full input size: a figure that the
            # whole-frame pass saw at a few dozen pixels gets the resolution of a close-up.
            second = time.perf_counter()
            crop = image.crop(box)
            crop_probability, crop_pixels = self.predict_low_res(crop)
            left, top, right, bottom = box
            alpha[top:bottom, left:right] = self.matte_from_probability(
                crop, crop_probability, crop_pixels, dtype, refine=refine, hard=hard
            )
            timings["second_pass"] = time.perf_counter() - second
        return alpha, timings

    def small_subject_box(self, probability: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """The box (left, top, right, bottom, full resolution) around small people worth a second pass, or None.

        Only when the people found cover between a trace and SMALL_SUBJECT of the frame, and the box around
        them with a margin is at most half the photo: otherwise a crop adds little resolution.
        """
        hard = probability >= self.threshold
        if not 0.002 <= hard.mean() < SMALL_SUBJECT:
            return None
        rows, cols = np.flatnonzero(hard.any(1)), np.flatnonzero(hard.any(0))
        width, height = size
        scale_y, scale_x = height / probability.shape[0], width / probability.shape[1]
        top, bottom = rows[0] * scale_y, (rows[-1] + 1) * scale_y
        left, right = cols[0] * scale_x, (cols[-1] + 1) * scale_x
        # A margin for what the first pass missed, and at least a third of the long side for context.
        side_y = max((bottom - top) * (1 + 2 * SECOND_PASS_MARGIN), max(size) / 3)
        side_x = max((right - left) * (1 + 2 * SECOND_PASS_MARGIN), max(size) / 3)
        centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
        box_top, box_bottom = max(0, round(centre_y - side_y / 2)), min(height, round(centre_y + side_y / 2))
        box_left, box_right = max(0, round(centre_x - side_x / 2)), min(width, round(centre_x + side_x / 2))
        if (box_bottom - box_top) * (box_right - box_left) > 0.5 * width * height:
            return None
        return box_left, box_top, box_right, box_bottom

    @torch.inference_mode()
    def matte_from_probability(
        self,
        image: Image.Image,
        probability: np.ndarray,
        small_pixels: np.ndarray,
        dtype: type[np.generic] = np.float32,
        *,
        refine: bool = True,
        hard: bool = False,
    ) -> np.ndarray:
        """The full-resolution matte from predict_low_res's output: refined, soft only near the outline."""
        if refine:
            probability, small_pixels = self.at_refine_size(image, probability, small_pixels)
        source = sharpen(torch.from_numpy(probability)[None, None], self.threshold, self.contrast)
        coefficients = None
        if refine:
            guide_low = torch.from_numpy(np.array(Image.fromarray(small_pixels).convert("L")))[None, None]
            coefficients = guided_filter_coefficients(guide_low.float().div_(255), source, radius=2, eps=1e-3)
            if self.soft_band > 0:
                radius = max(1, round(self.soft_band * math.hypot(*probability.shape)))
                coefficients = restrict_to_band(coefficients, source, self.threshold, radius)
        alpha = np.empty((image.height, image.width), dtype)
        apply_in_bands(image, coefficients, source[0, 0], alpha, hard_threshold=self.threshold if hard else None)
        return alpha

    def at_refine_size(
        self, image: Image.Image, probability: np.ndarray, small_pixels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The probability and the resized photo at refine_size on the long side where the network's is coarser.

        Never finer than the photo itself; unchanged where the network already ran at that size or finer.
        """
        long_side = min(self.refine_size, max(image.size))
        if long_side <= max(probability.shape):
            return probability, small_pixels
        scale = long_side / max(image.size)
        width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        upsampled = F.interpolate(
            torch.from_numpy(probability)[None, None], size=(height, width), mode="bilinear", align_corners=False
        )
        resized = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return upsampled[0, 0].numpy(), np.asarray(resized)

    @property
    def threshold(self) -> float:
        """The matte value from which a pixel counts as person (from the card)."""
        return self.card.threshold

    @property
    def threshold8(self) -> int:
        """The uint8 matte value from which a pixel counts as person: x >= threshold, after rounding x * 255."""
        return math.ceil(self.card.threshold * 255 + 0.5 - 1e-6)

    def predict_mask(self, image: Image.Image) -> np.ndarray:
        """The hard person mask at full resolution: the refined matte at the card's threshold."""
        return self.predict_alpha(image) >= self.card.threshold
