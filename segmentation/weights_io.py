"""Shipped weights: one float16 safetensors file plus a JSON card per network, validated on load."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from segmentation.models import MODEL_NAMES, create_model

WEIGHTS_DIR = Path(__file__).parent / "weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Weights or their card are missing, unreadable, or do not fit the architecture."""


@dataclass
class ModelCard:
    """What a weights file is: the architecture, how to feed it, and how it was trained and scored."""

    architecture: str
    inference_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    threshold: float = 0.5
    flip_average: bool = False  # average the prediction with that of the mirrored photo (test-time flip)
    training_data: list[dict[str, str]] = field(default_factory=list)
    training_command: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    second_pass: bool = False  # a second pass on a crop around small people (measured per weights, on val)
    output_stride: int | None = None  # DeepLab's encoder stride the weights were trained at; None: the default
    # More long sides the network also runs at, their probabilities resized to inference_size's grid and averaged
    # in (test-time multi-scale): a small size sees the whole person, a large one small figures.
    extra_sizes: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        """The card as indented JSON."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> ModelCard:
        """Parse a card, naming the source in any error."""
        try:
            values = json.loads(text)
            values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
            return cls(**values)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise WeightsError(f"invalid model card {source}: {error}") from None


def weights_paths(name: str, directory: Path = WEIGHTS_DIR) -> tuple[Path, Path]:
    """The safetensors file and the card of a network in a weights folder."""
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def save_weights(model: nn.Module, card: ModelCard, directory: Path = WEIGHTS_DIR) -> tuple[Path, Path]:
    """Write the model's state as float16 safetensors and its card beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors_path, card_path = weights_paths(card.architecture, directory)
    state = {
        key: (value.half() if value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    # float16 tops out at 65,504: a BatchNorm variance beyond it would become infinity and, folded into its
    # convolution, silence that channel with no error anywhere. Refuse instead.
    overflowed = [key for key, value in state.items() if value.is_floating_point() and not value.isfinite().all()]
    if overflowed:
        raise WeightsError(f"not representable in float16 (beyond 65,504 or not finite): {', '.join(overflowed)}")
    card.parameters = sum(p.numel() for p in model.parameters())
    save_file(state, str(tensors_path), metadata={"architecture": card.architecture, "format": "pt"})
    tensors_path.chmod(0o644)  # safetensors writes 0600; shipped weights must be readable by the service user
    card_path.write_text(card.to_json())
    return tensors_path, card_path


def read_card(name: str, directory: Path = WEIGHTS_DIR) -> ModelCard:
    """Read and check the card of a network."""
    _, card_path = weights_paths(name, directory)
    if not card_path.is_file():
        raise WeightsError(f"no model card for {name!r}: {card_path} is missing")
    card = ModelCard.from_json(card_path.read_text(), str(card_path))
    if card.architecture != name:
        raise WeightsError(f"{card_path} describes {card.architecture!r}, expected {name!r}")
    return card


def load_state(name: str, model: nn.Module, tensors_path: Path) -> None:
    """Load a safetensors file into a model, failing clearly on missing, extra or misshapen tensors."""
    if not tensors_path.is_file():
        raise WeightsError(f"no weights for {name!r}: {tensors_path} is missing")
    try:
        state = load_file(str(tensors_path))
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"cannot read weights {tensors_path}: {error}") from None
    try:
        # torch checks names and shapes (strict) and casts the float16 file to the model's dtype on copy.
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{tensors_path} does not fit the {name!r} architecture: {_summary(str(error))}") from None


def _summary(message: str) -> str:
    """torch's load_state_dict error, one count and one example per kind: "2 missing (e.g. aspp.x); ..."."""
    found: dict[str, list[str]] = {"missing": [], "unexpected": [], "wrong shape": []}
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            found["missing"] += re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s)"):
            found["unexpected"] += re.findall(r'"([^"]+)"', line)
        elif match := re.match(r"size mismatch for ([^:]+):", line):
            found["wrong shape"].append(match.group(1))
    details = [f"{len(keys)} {label} (e.g. {min(keys)})" for label, keys in found.items() if keys]
    return "; ".join(details) or message  # an error of another kind: torch's own words


def load_model(name: str, directory: Path = WEIGHTS_DIR) -> tuple[nn.Module, ModelCard]:
    """Build a network, load its shipped weights, and return it in eval mode with its card."""
    if name not in MODEL_NAMES:
        raise WeightsError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    card = read_card(name, directory)
    model = create_model(name, output_stride=card.output_stride)
    load_state(name, model, weights_paths(name, directory)[0])
    return model.eval(), card
