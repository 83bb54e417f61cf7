"""Prototype math shared by the prototype learners (pure functions).

Masked average pooling (PANet, Wang et al. 2019): a class prototype is the mean of the
feature vectors under the class's mask; the query is labelled by cosine similarity to the
background and foreground prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewseg.models.upsample import adaptive_average_pool, bilinear_resize


def mask_weights(masks: torch.Tensor, ignore: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-cell background/foreground fractions at feature resolution: [K, 2, h, w]
    (adaptive average pooling).

    ``masks`` [K,H,W] in {0,1}, ``ignore`` [K,H,W] bool; ignored pixels count as neither
    class.
    """
    valid = (~ignore).view(torch.uint8).float()  # from uint8: a fraction of bool's time here
    foreground = adaptive_average_pool(masks.float() * valid, size)
    return torch.stack([adaptive_average_pool(valid, size) - foreground, foreground], dim=1)


def masked_average_pool(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean feature per shot and class: features [K,C,h,w], weights [K,P,h,w] → [K,P,C].

    A class with no pixels in a shot gives a zero vector there.
    """
    total = weights.sum(dim=(-2, -1))
    pooled = torch.einsum("kchw,kphw->kpc", features, weights)
    return pooled / total.clamp_min(1e-6).unsqueeze(-1)


def shot_prototypes(
    features: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """Background and foreground prototypes averaged over the shots that contain them: [2, C]."""
    return combined_prototypes(_pools(features, mask_weights(masks, ignore, features.shape[-2:])))


ShotPool = tuple[torch.Tensor, torch.Tensor]
"""Shots' pooled features [K,2,C] and whether each shot has each class [K,2] (0 or 1)."""


def _pools(features: torch.Tensor, weights: torch.Tensor) -> ShotPool:
    present = (weights.sum(dim=(-2, -1)) > 0).to(features.dtype)
    return masked_average_pool(features, weights), present


def combined_prototypes(pools: ShotPool) -> torch.Tensor:
    """The shots' pooled features → the prototypes of :func:`shot_prototypes`."""
    per_shot, present = pools
    counts = present.sum(dim=0).clamp_min(1.0)  # [P]
    return (per_shot * present.unsqueeze(-1)).sum(dim=0) / counts.unsqueeze(-1)


def support_prototypes(
    features: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
) -> torch.Tensor:
    """:func:`shot_prototypes`, each shot pooled on its own (features [K,C,h,w], masks and
    ignore [K,H,W]): the prediction-time form, whose values do not depend on how many
    shots there are."""
    size = features.shape[-2:]
    pools = [
        _pools(features[k : k + 1], mask_weights(masks[k : k + 1], ignore[k : k + 1], size))
        for k in range(len(features))
    ]
    return combined_prototypes((torch.cat([p[0] for p in pools]), torch.cat([p[1] for p in pools])))


def feature_norms(features: torch.Tensor) -> torch.Tensor:
    """Per-pixel norms of [B,C,h,w] features, clamped at 1e-12 as ``F.normalize`` does:
    [B,1,h,w]. A sum of squares: a norm reduction over the channel dimension of contiguous
    features is several times slower."""
    return features.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)


def cosine_logits(
    features: torch.Tensor, prototypes: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """scale · cos(feature, prototype) per pixel: [B,C,h,w] and [P,C] → [B,P,h,w].

    As ``F.normalize``, but the feature norms divide the dot products instead of the
    features."""
    dots = torch.einsum("bchw,pc->bphw", features, F.normalize(prototypes, dim=1))
    return scale * (dots / feature_norms(features))


def margin_direction(prototypes: torch.Tensor) -> torch.Tensor:
    """(background, foreground) prototypes [2,C] → the difference of the normalised
    prototypes [C], foreground minus background: what :func:`cosine_margin` takes."""
    unit = F.normalize(prototypes, dim=1)
    return unit[1] - unit[0]


def cosine_margin(
    features: torch.Tensor, direction: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """The foreground logit of :func:`cosine_logits` against a background logit of 0:
    features [B,C,h,w] → [B,1,h,w], scale · (cos(feature, foreground) − cos(feature,
    background)). ``direction``: :func:`margin_direction` of the prototypes, one product
    where the two logits take two."""
    batch, _, height, width = features.shape
    dots = torch.matmul(direction, features.flatten(2)).view(batch, 1, height, width)
    return scale * (dots / feature_norms(features))


def prediction_logits(
    features: torch.Tensor,
    direction: torch.Tensor,
    scale: float | torch.Tensor,
    size: tuple[int, int] | torch.Size,
) -> torch.Tensor:
    """Foreground logits [B,1,H,W] for prediction: :func:`cosine_margin`, bilinearly resized
    to ``size``. Resizing is linear and the softmax shift-invariant, so the probabilities
    and the argmax are those of the resized two-class :func:`cosine_logits`, for half the
    resizing and no background map."""
    return bilinear_resize(cosine_margin(features, direction, scale), size)
