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
