"""Segmentation losses with ignore masks (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def balanced_pixel_weights(
    masks: torch.Tensor, ignore: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, weights) of :func:`foreground_bce` for masks [B,H,W] in {0,1}: each valid
    foreground pixel weighs 1/#foreground, each valid background pixel 1/#background,
    divided by the number of the two kinds present; ignored pixels weigh 0. They depend on
    the masks alone, so an inner loop computes them once for all its steps.
    """
    valid = (~ignore).to(dtype)
    target = masks.to(dtype)
    foreground = target * valid
    background = valid - foreground
    n_foreground, n_background = foreground.sum(), background.sum()
    present = (n_foreground > 0).to(dtype) + (n_background > 0).to(dtype)
    weights = foreground / n_foreground.clamp_min(1.0) + background / n_background.clamp_min(1.0)
    return target, weights / present.clamp_min(1.0)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ weights · BCE(logits, target): one fused kernel forward and backward."""
    return F.binary_cross_entropy_with_logits(
        logits.reshape(target.shape), target, weight=weights, reduction="sum"
    )


def foreground_bce(logits: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of foreground logits [B,1,H,W] (or [B,H,W])
    against masks [B,H,W] in {0,1}: the mean over foreground pixels and the mean over
    background pixels, averaged (over whichever of the two is present). Ignored pixels
    count in neither. Few-shot targets are often a few percent of the image; an unweighted
    mean would be minimised by predicting background everywhere.
    """
    return weighted_bce(logits, *balanced_pixel_weights(masks, ignore, logits.dtype))


def two_class_cross_entropy(
    logits: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of (background, foreground) logits [B,2,H,W], ignored pixels excluded."""
    target = masks.long().masked_fill(ignore, -100)
    if bool((target == -100).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=-100)


def soft_iou_loss(
    log_odds: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """1 − soft IoU of foreground probabilities σ(log_odds) against soft targets in [0,1]
    (e.g. the foreground fraction of each feature cell), each element counted with
    ``weight`` (0: ignored): 1 − Σ w·p·t / Σ w·(p + t − p·t). mIoU's own quantity, so a
    learner trained on it does not trade foreground for background as a cross-entropy can."""
    probability = log_odds.sigmoid()
    intersection = (weight * probability * target).sum()
    union = (weight * (probability + target - probability * target)).sum()
    return 1 - intersection / union.clamp_min(1e-6)
