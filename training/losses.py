"""Losses for one-channel segmentation logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """One minus the soft Dice coefficient, per image, averaged over the batch."""
    probabilities = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (probabilities * target).sum(1)
    total = probabilities.sum(1) + target.sum(1)
    return (1 - (2 * intersection + eps) / (total + eps)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, as the research runs used."""
    return F.binary_cross_entropy_with_logits(logits, target)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice: BCE for per-pixel calibration, Dice against the imbalance of small people."""
    return bce_loss(logits, target) + soft_dice_loss(logits, target)


LOSSES = {"bce": bce_loss, "dice": soft_dice_loss, "bce_dice": bce_dice_loss}
