"""Dice, IoU and pixel accuracy of binary masks, per image and as means over images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MaskScores:
    """The three scores of one predicted mask against its true mask."""

    dice: float
    iou: float
    pixel_accuracy: float
    kept: float = 0.0  # share of the photo predicted as person (on photos with nobody: what should be 0)


def score_masks(predicted: np.ndarray, target: np.ndarray) -> MaskScores:
    """Score one binary prediction against one binary target of the same shape (both empty scores 1)."""
    if predicted.shape != target.shape:
        raise ValueError(f"shape mismatch: predicted {predicted.shape}, target {target.shape}")
    predicted, target = predicted.astype(bool), target.astype(bool)
    intersection = np.logical_and(predicted, target).sum(dtype=np.int64)
    union = np.logical_or(predicted, target).sum(dtype=np.int64)
    total = predicted.sum(dtype=np.int64) + target.sum(dtype=np.int64)
    dice = 1.0 if total == 0 else 2.0 * intersection / total
    iou = 1.0 if union == 0 else intersection / union
    accuracy = (predicted == target).mean()
    return MaskScores(float(dice), float(iou), float(accuracy), float(predicted.mean()))


def mean_scores(scores: list[MaskScores]) -> dict[str, float]:
    """Mean of each score over images."""
    if not scores:
        raise ValueError("no scores to average")
    return {
        "dice": float(np.mean([s.dice for s in scores])),
        "iou": float(np.mean([s.iou for s in scores])),
        "pixel_accuracy": float(np.mean([s.pixel_accuracy for s in scores])),
        "kept": float(np.mean([s.kept for s in scores])),
        "images": len(scores),
    }
