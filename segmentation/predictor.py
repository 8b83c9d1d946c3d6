"""From a photo to an alpha matte at the original resolution, and from a matte to a PNG."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segmentation.imageio import DEFAULT_MAX_PIXELS, decode_image
from segmentation.refine import fast_guided_upsample
from segmentation.weights import WEIGHTS_DIR, ModelCard, load_model

# A person covering less than this share of the photo is treated as "no person found".
MIN_PERSON_FRACTION = 0.002


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class RenderOptions:
    """How to render the result: a transparent cutout, a solid background, or the mask alone."""

    background: tuple[int, int, int] | None = None  # solid colour instead of transparency
    mask_only: bool = False  # a greyscale PNG of the matte itself
    hard: bool = False  # a binary mask instead of soft, refined edges
    compress_level: int = 1  # PNG is lossless at any level; 1 is several times faster to encode than 6


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


class Predictor:
    """Runs one network on photos: resize, pad to /32, normalise, predict, then refine at full size."""

    def __init__(self, model: nn.Module, card: ModelCard, *, fast: bool | None = None) -> None:
        self.card = card
        self.name = card.architecture
        # bf16 autocast plus channels_last roughly halves CPU time where the CPU has bf16 units.
        self.fast = cpu_supports_bf16() if fast is None else fast
        self.model = model.eval()
        if self.fast:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(card.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(card.std).view(1, 3, 1, 1)

    @classmethod
    def from_weights(cls, name: str, weights_dir: Path | None = None, *, fast: bool | None = None) -> Predictor:
        """Load the shipped (or given) weights of a network into a predictor."""
        model, card = load_model(name, weights_dir or WEIGHTS_DIR)
        return cls(model, card, fast=fast)

    def network_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the photo is resized to: long side at the card's size, aspect kept."""
        scale = self.card.inference_size / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    @torch.inference_mode()
    def predict_low_res(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """Person probability at the network's resolution, with the resized photo it was computed on."""
        small = image.resize(self.network_size(*image.size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        pixels = np.asarray(small)
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().div_(255)
        tensor = (tensor - self._mean) / self._std
        height, width = pixels.shape[:2]
        # Pad right and bottom to a multiple of 32 with zeros, i.e. the mean colour after normalising.
        tensor = F.pad(tensor, [0, (-width) % 32, 0, (-height) % 32])
        if self.card.flip_average:  # one batch of two: the photo and its mirror image
            tensor = torch.cat([tensor, tensor.flip(-1)])
        if self.fast:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if self.fast else nullcontext()
        with context:
            logits = self.model(tensor)
        probabilities = torch.sigmoid(logits.float())
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
        started = time.perf_counter()
        probability, small_pixels = self.predict_low_res(image)
        predicted = time.perf_counter()
        source = torch.from_numpy(probability)[None, None]
        width, height = image.size
        if refine:
            guide_full = _grey(np.asarray(image))
            guide_low = _grey(small_pixels)
            alpha = fast_guided_upsample(guide_full, guide_low, source)
        else:
            alpha = F.interpolate(source, size=(height, width), mode="bilinear", align_corners=False)
        alpha = alpha[0, 0].numpy()
        return alpha, {"predict": predicted - started, "refine": time.perf_counter() - predicted}

    def predict_mask(self, image: Image.Image) -> np.ndarray:
        """The hard person mask at full resolution: the refined matte at the card's threshold."""
        return self.predict_alpha(image) >= self.card.threshold


def _grey(pixels: np.ndarray) -> torch.Tensor:
    """RGB uint8 HxWx3 to a 1x1xHxW float luminance guide in [0, 1]."""
    rgb = torch.from_numpy(np.array(pixels, dtype=np.float32))  # a writable float copy
    grey = rgb @ torch.tensor([0.299 / 255, 0.587 / 255, 0.114 / 255])
    return grey[None, None]


def compose_png(image: Image.Image, alpha: np.ndarray, options: RenderOptions = RenderOptions()) -> bytes:
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


def render(image: Image.Image, predictor: Predictor, options: RenderOptions = RenderOptions()) -> RemovalResult:
    """Predict, refine, compose and encode one decoded photo, with the time of each stage."""
    started = time.perf_counter()
    alpha, timings = predictor.predict_alpha_timed(image, refine=not options.hard)
    if options.hard:
        alpha = (alpha >= predictor.card.threshold).astype(np.float32)
    composed = time.perf_counter()
    png = compose_png(image, alpha, options)
    finished = time.perf_counter()
    foreground = float((alpha >= predictor.card.threshold).mean())
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
    options: RenderOptions = RenderOptions(),
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
    result = render(image, predictor if isinstance(predictor, Predictor) else predictor(), options)
    result.timings = {"decode": decoded - started, **result.timings, "total": time.perf_counter() - started}
    return result
