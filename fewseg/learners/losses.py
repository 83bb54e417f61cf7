"""Segmentation losses with ignore masks (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def foreground_bce(logits: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of foreground logits [B,1,H,W] (or [B,H,W])
    against masks [B,H,W] in {0,1}: the mean over foreground pixels and the mean over
    background pixels, averaged (over whichever of the two is present). Ignored pixels
    count in neither. Few-shot targets are often a few percent of the image; an unweighted
    mean would be minimised by predicting background everywhere.
    """
    logits = logits.reshape(masks.shape)
    valid = (~ignore).to(logits.dtype)
    target = masks.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    foreground, background = target * valid, (1 - target) * valid
    n_foreground, n_background = foreground.sum(), background.sum()
    total = (losses * foreground).sum() / n_foreground.clamp_min(1.0) + (
        losses * background
    ).sum() / n_background.clamp_min(1.0)
    present = (n_foreground > 0).to(logits.dtype) + (n_background > 0).to(logits.dtype)
    return total / present.clamp_min(1.0)


def two_class_cross_entropy(
    logits: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of (background, foreground) logits [B,2,H,W], ignored pixels excluded."""
    target = masks.long().masked_fill(ignore, -100)
    if bool((target == -100).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=-100)
