"""Prototype math shared by the prototype learners (pure functions).

Masked average pooling (PANet, Wang et al. 2019): a class prototype is the mean of the
feature vectors under the class's mask; the query is labelled by cosine similarity to the
background and foreground prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewseg.episodes.tensors import SupportSet
from fewseg.identity_memo import IdentityMemo
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


def shot_mask_weights(
    mask: torch.Tensor, ignore: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """:func:`mask_weights` of one shot's mask [H,W] and ignore [H,W]: [1, 2, h, w]."""
    return mask_weights(mask[None], ignore[None], size)


SHOT_WEIGHTS_KEPT = 256
"""Shots whose mask weights a learner keeps (each entry holds its shot's masks)."""


def shot_weights_memo() -> IdentityMemo[torch.Tensor]:
    """The memo :func:`support_mask_weights` takes."""
    return IdentityMemo(shot_mask_weights, SHOT_WEIGHTS_KEPT)


def support_mask_weights(
    support: SupportSet, size: tuple[int, int], memo: IdentityMemo[torch.Tensor]
) -> torch.Tensor:
    """:func:`mask_weights` of a support set, [K, 2, h, w]; those of a support set made of
    shots (:meth:`SupportSet.of_shots`) are found in or added to ``memo`` (an
    :class:`IdentityMemo` of :func:`shot_mask_weights`) shot by shot: an evaluation meets
    each labelled image in many support sets."""
    if not support.mask_rows:
        return mask_weights(support.masks, support.ignore, size)
    shots = zip(support.mask_rows, support.ignore_rows, strict=True)
    return torch.cat([memo.get(labels, tuple(size)) for labels in shots])


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
    return weighted_prototypes(features, mask_weights(masks, ignore, features.shape[-2:]))


def weighted_prototypes(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`shot_prototypes` from the shots' :func:`mask_weights`."""
    per_shot = masked_average_pool(features, weights)
    present = (weights.sum(dim=(-2, -1)) > 0).float()  # [K, P]
    counts = present.sum(dim=0).clamp_min(1.0)  # [P]
    return (per_shot * present.unsqueeze(-1)).sum(dim=0) / counts.unsqueeze(-1)


def feature_norms(features: torch.Tensor) -> torch.Tensor:
    """Per-pixel norms of [B,C,h,w] features, clamped at 1e-12 as ``F.normalize`` does:
    [B,1,h,w]. A sum of squares: a norm reduction over the channel dimension of contiguous
    features is several times slower."""
    return features.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)


def cosine_logits(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    scale: float | torch.Tensor,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """scale · cos(feature, prototype) per pixel: [B,C,h,w] and [P,C] → [B,P,h,w].

    As ``F.normalize``, but the feature norms divide the dot products instead of the
    features. ``norms``: :func:`feature_norms` of ``features``, where the caller keeps
    them (an evaluation meets each query image in many episodes)."""
    prototypes = F.normalize(prototypes, dim=1)
    dots = torch.einsum("bchw,pc->bphw", features, prototypes)
    return scale * (dots / (feature_norms(features) if norms is None else norms))


def margin_direction(prototypes: torch.Tensor) -> torch.Tensor:
    """(background, foreground) prototypes [2,C] → the difference of the normalised
    prototypes [C], foreground minus background: what :func:`cosine_margin` takes."""
    unit = F.normalize(prototypes, dim=1)
    return unit[1] - unit[0]


def cosine_margin(
    features: torch.Tensor,
    direction: torch.Tensor,
    scale: float | torch.Tensor,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The foreground logit of :func:`cosine_logits` against a background logit of 0:
    features [B,C,h,w] → [B,1,h,w], scale · (cos(feature, foreground) − cos(feature,
    background)). ``direction``: :func:`margin_direction` of the prototypes, one product
    where the two logits take two."""
    batch, _, height, width = features.shape
    dots = torch.matmul(direction, features.flatten(2)).view(batch, 1, height, width)
    return scale * (dots / (feature_norms(features) if norms is None else norms))


def prediction_logits(
    features: torch.Tensor,
    direction: torch.Tensor,
    scale: float | torch.Tensor,
    size: tuple[int, int] | torch.Size,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Foreground logits [B,1,H,W] for prediction: :func:`cosine_margin`, bilinearly resized
    to ``size``. Resizing is linear and the softmax shift-invariant, so the probabilities
    and the argmax are those of the resized two-class :func:`cosine_logits`, for half the
    resizing and no background map."""
    return bilinear_resize(cosine_margin(features, direction, scale, norms), size)
