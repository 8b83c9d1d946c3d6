"""Training checkpoints: written atomically, read back without unpickling arbitrary code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

# What a checkpoint holds besides tensors and plain Python values: NumPy's RNG state, an array of uint32.
NUMPY_RNG_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint onto the CPU with torch's weights-only unpickler (tensors, plain values, NumPy RNG)."""
    with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def save_atomically(value: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash mid-write never leaves a broken checkpoint."""
    temporary = path.with_suffix(".tmp")
    torch.save(value, temporary)
    temporary.replace(path)


def served_weights(checkpoint: dict[str, Any], *, raw: bool = False) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stands for: its moving average where training kept one, else the trained weights.

    best.pt of a run with ema_decay already holds the average under "model" ("averaged": True); checkpoint.pt
    holds the trained weights there and the AveragedModel's own state under "averaged". raw takes the trained
    weights of a checkpoint.pt all the same.
    """
    averaged = checkpoint.get("averaged")
    if raw or not isinstance(averaged, dict):
        return checkpoint["model"]
    # AveragedModel's state: its module's tensors prefixed "module.", plus the count of averaged steps.
    return {name.removeprefix("module."): tensor for name, tensor in averaged.items() if name != "n_averaged"}
