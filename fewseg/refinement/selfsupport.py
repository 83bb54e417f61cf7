"""Self-support prototypes (SSP: Fan, Yu, Zhang, Li and Zhou, "Self-Support Few-Shot
Semantic Segmentation", ECCV 2022), from any learner's first prediction.

The query's own confident pixels give prototypes closer to it than the support's: the
foreground prototype is the mean of the query features predicted foreground with
probability > 0.7 (else its 12 most probable pixels), averaged half and half with the
support's; the background is matched to the query's own background pixels (probability
< 0.4) globally (30%) and per pixel (70%: each pixel's softmax-weighted average of the
background features, "adaptive" prototypes). A second round (their self-support
refinement) starts from the first's prediction and mixes the rounds as their code does.
Everything here follows their reference implementation's constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FG_THRESHOLD = 0.7
BG_THRESHOLD = 0.6  # on the background probability
FALLBACK_PIXELS = 12
SIMILARITY_SCALE = 10.0  # their cosine similarity's scale
ADAPTIVE_SCALE = 2.0  # the temperature of the per-pixel (adaptive) prototypes


def _confident(probability: torch.Tensor, threshold: float) -> torch.Tensor:
    """The indices of the pixels above ``threshold`` (flat [N]), else the most probable."""
    chosen = (probability > threshold).nonzero()[:, 0]
    if len(chosen) == 0:
        chosen = probability.topk(min(FALLBACK_PIXELS, len(probability))).indices
    return chosen


def self_support_prototypes(
    features: torch.Tensor, foreground: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One query's self-support prototypes from its features [C,h,w] and foreground
    probabilities [h,w]: global foreground [C], global background [C], and per-pixel
    (adaptive) foreground and background [C,h,w]."""
    channels = features.shape[0]
    flat = features.reshape(channels, -1)  # [C,N]
    probability = foreground.reshape(-1)
    fg = flat[:, _confident(probability, FG_THRESHOLD)]
    bg = flat[:, _confident(1 - probability, BG_THRESHOLD)]
    unit = F.normalize(flat, dim=0).T  # [N,C]

    def adaptive(chosen: torch.Tensor) -> torch.Tensor:
        weights = (unit @ F.normalize(chosen, dim=0) * ADAPTIVE_SCALE).softmax(dim=-1)
        return (weights @ chosen.T).T.reshape(features.shape)  # [C,h,w]

    return fg.mean(dim=1), bg.mean(dim=1), adaptive(fg), adaptive(bg)


def _log_odds(features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """SIMILARITY_SCALE · (cos(f, fg) − cos(f, bg)) per pixel; prototypes [C] or [C,h,w]."""

    def cos(prototype: torch.Tensor) -> torch.Tensor:
        if prototype.dim() == 1:
            prototype = prototype[:, None, None]
        return F.cosine_similarity(features, prototype.expand_as(features), dim=0, eps=1e-7)

    return SIMILARITY_SCALE * (cos(fg) - cos(bg))


def ssp_log_odds(
    features: torch.Tensor,
    foreground: torch.Tensor,
    support_fg: torch.Tensor,
    support_bg: torch.Tensor,
) -> torch.Tensor:
    """SSP with its refinement round, for one query: features [C,h,w], the first
    prediction's foreground probabilities [h,w], the support's prototypes: [C] each, or
    [C,h,w] (a prototype per pixel, e.g. its nearest shot's). Returns log-odds [h,w]."""
    fg1, bg1, _, adaptive_bg1 = self_support_prototypes(features, foreground)
    fp1 = 0.5 * _expand(support_fg, features) + 0.5 * fg1[:, None, None]
    bp1 = 0.3 * bg1[:, None, None] + 0.7 * adaptive_bg1
    out1 = _log_odds(features, fp1, bp1)
    fg2, bg2, _, adaptive_bg2 = self_support_prototypes(features, torch.sigmoid(out1))
    fp2 = 0.5 * _expand(support_fg, features) + 0.5 * fg2[:, None, None]
    bp2 = 0.3 * bg2[:, None, None] + 0.7 * adaptive_bg2
    fp = 0.5 * _expand(support_fg, features) + 0.2 * fp1 + 0.3 * fp2
    bp = 0.5 * _expand(support_bg, features) + 0.2 * bp1 + 0.3 * bp2
    out2 = _log_odds(features, fp, bp)
    return 0.7 * out2 + 0.3 * out1


def _expand(prototype: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return prototype[:, None, None].expand_as(features) if prototype.dim() == 1 else prototype
