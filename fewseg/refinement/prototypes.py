"""Prototype matching shared by the refinements (pure functions): support prototypes of a
few shots, combined by mean or kept per shot, and cosine log-odds against them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewseg.learners.prototypes import mask_weights, masked_average_pool
from fewseg.models.upsample import adaptive_average_pool


def shot_prototypes(
    features: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-shot (background, foreground) prototypes [K,2,C] by masked average pooling, and
    whether each shot has each class [K,2] (bool)."""
    weights = mask_weights(masks, ignore, features.shape[-2:])
    present = weights.sum(dim=(-2, -1)) > 0
    return masked_average_pool(features, weights), present


def mean_prototypes(per_shot: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The prototypes averaged over the shots that have each class: [2,C]."""
    weights = present.to(per_shot.dtype)
    return (per_shot * weights[..., None]).sum(0) / weights.sum(0).clamp_min(1)[:, None]


def cosine(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """cos(feature, prototype) per pixel: [B,C,h,w] and [P,C] → [B,P,h,w]; or per image
    [B,P,C] → [B,P,h,w]."""
    unit = F.normalize(features, dim=1)
    if prototypes.dim() == 2:
        return torch.einsum("bchw,pc->bphw", unit, F.normalize(prototypes, dim=-1))
    return torch.einsum("bchw,bpc->bphw", unit, F.normalize(prototypes, dim=-1))


def feature_probability(log_odds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Foreground probabilities [B,1,H,W] from log-odds, averaged onto the feature grid."""
    return adaptive_average_pool(torch.sigmoid(log_odds.float()), size)
