"""Segmentation losses with ignore masks (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def foreground_bce(logits: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of foreground logits [B,1,H,W] (or [B,H,W]) against masks
    [B,H,W] in {0,1}, averaged over the pixels that are not ignored."""
    logits = logits.reshape(masks.shape)
    valid = (~ignore).to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, masks.to(logits.dtype), reduction="none")
    return (losses * valid).sum() / valid.sum().clamp_min(1.0)


def two_class_cross_entropy(
    logits: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of (background, foreground) logits [B,2,H,W], ignored pixels excluded."""
    target = masks.long().masked_fill(ignore, -100)
    if bool((target == -100).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=-100)
