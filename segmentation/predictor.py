"""From a photo to an alpha matte at the original resolution: resize, pad, network, refine."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segmentation.cpu import cpu_supports_bf16
from segmentation.refine import fast_guided_upsample
from segmentation.weights_io import WEIGHTS_DIR, ModelCard, load_model


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
        # The model's own device: training validates through this same path, on a GPU where it has one.
        parameter = next(self.model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        tensor = tensor.to(device)
        if self.fast:
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

    @property
    def threshold(self) -> float:
        """The matte value from which a pixel counts as person (from the card)."""
        return self.card.threshold

    def predict_mask(self, image: Image.Image) -> np.ndarray:
        """The hard person mask at full resolution: the refined matte at the card's threshold."""
        return self.predict_alpha(image) >= self.card.threshold


def _grey(pixels: np.ndarray) -> torch.Tensor:
    """RGB uint8 HxWx3 to a 1x1xHxW float luminance guide in [0, 1]."""
    rgb = torch.from_numpy(np.array(pixels, dtype=np.float32))  # a writable float copy
    grey = rgb @ torch.tensor([0.299 / 255, 0.587 / 255, 0.114 / 255])
    return grey[None, None]
