"""A per-query presence score: is the support's class in the query at all? (pure functions)

A learner always marks *something* foreground: given a support of cows, a street scene
still gets a confident region. What that region looks like tells the two apart: the score
is the cosine similarity between the mean encoder feature of the query's predicted
foreground (weighted by the foreground probability) and the support's foreground
prototype, clipped to [0, 1] (the encoders' features are non-negative after their last
ReLU, so the cosine is too). A query with no foreground probability at all scores 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_MASS = 1e-6  # a prediction with less foreground probability than this scores 0


def region_prototypes(features: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """The probability-weighted mean feature of each query: [B,C,h,w] and [B,h,w] → [B,C]
    (zeros where the probabilities sum to less than MIN_MASS)."""
    weights = probability.to(features.dtype)
    mass = weights.sum(dim=(-2, -1))  # [B]
    summed = torch.einsum("bchw,bhw->bc", features, weights)
    return torch.where(mass[:, None] >= MIN_MASS, summed / mass.clamp_min(MIN_MASS)[:, None], 0)


def presence_scores(
    features: torch.Tensor, probability: torch.Tensor, prototype: torch.Tensor
) -> torch.Tensor:
    """Presence scores [B] in [0, 1]: cos(region prototype, support foreground prototype
    [C]), clipped; 0 for a query predicted empty."""
    region = region_prototypes(features, probability)
    similarity = F.cosine_similarity(region, prototype[None].to(region.dtype), dim=1, eps=1e-8)
    empty = region.abs().sum(dim=1) == 0
    return similarity.clamp(0, 1).masked_fill(empty, 0.0)
