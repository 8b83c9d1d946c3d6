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


def _lovasz_gradient(sorted_target: torch.Tensor) -> torch.Tensor:
    """Per row, how much each error (sorted worst first) adds to one minus the IoU."""
    positives = sorted_target.sum(1, keepdim=True)
    intersection = positives - sorted_target.cumsum(1)
    union = positives + (1 - sorted_target).cumsum(1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Lovasz hinge per image, averaged: a convex surrogate of each image's IoU (Berman et al., CVPR 2018)."""
    logits, target = logits.flatten(1), target.flatten(1).to(logits.dtype)
    errors = 1 - logits * (2 * target - 1)
    sorted_errors, order = torch.sort(errors, dim=1, descending=True)
    gradient = _lovasz_gradient(torch.gather(target, 1, order))
    return (F.relu(sorted_errors) * gradient).sum(1).mean()


def bce_lovasz_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus the Lovasz hinge: a surrogate of each photo's IoU, which is what people-coco is scored by."""
    return bce_loss(logits, target) + lovasz_hinge_loss(logits, target)


LOSSES = {
    "bce": bce_loss,
    "dice": soft_dice_loss,
    "bce_dice": bce_dice_loss,
    "bce_lovasz": bce_lovasz_loss,
}
