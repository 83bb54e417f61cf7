"""Transductive refinement with a foreground-size prior (RePRI: Boudiaf, Kervadec, Masud,
Piantanida, Ben Ayed and Dolz, "Few-Shot Segmentation Without Meta-Learning: A Good
Transductive Inference Is All You Need?", CVPR 2021), on any learner's encoder features.

A linear classifier on L2-normalised features, s(x) = sigmoid(τ (cos(z(x), θ) − b)), starts
from the support's foreground prototype θ and b = the mean cosine of the query's pixels to
it, and takes ``STEPS`` SGD steps on one query at a time minimising

    cross-entropy on the support pixels + λ_H · entropy of the query's predictions
        + λ_KL · KL(π̂ ‖ π_θ),

where π_θ is the predicted foreground fraction of the query and π̂ its estimate: the
fraction the first prediction (the learner's) marks foreground, replaced at step
``PRIOR_UPDATE`` by the classifier's own. The constants are the paper's (τ = 20, 50 steps
at learning rate 0.025, the prior updated at step 10, unit weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 20.0
STEPS = 50
LEARNING_RATE = 0.025
PRIOR_UPDATE = 10
ENTROPY_WEIGHT = 1.0
KL_WEIGHT = 1.0
EPS = 1e-6


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1 - EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _kl(prior: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    prior, predicted = prior.clamp(EPS, 1 - EPS), predicted.clamp(EPS, 1 - EPS)
    return prior * (prior / predicted).log() + (1 - prior) * ((1 - prior) / (1 - predicted)).log()


def repri_log_odds(
    query: torch.Tensor,
    support: torch.Tensor,
    support_foreground: torch.Tensor,
    support_valid: torch.Tensor,
    first_foreground: torch.Tensor,
    prototype: torch.Tensor,
) -> torch.Tensor:
    """One query's refined log-odds [h,w].

    ``query`` [C,h,w] and ``support`` [K,C,h,w] features; ``support_foreground`` and
    ``support_valid`` [K,h,w]: each cell's foreground fraction and the fraction not
    ignored; ``first_foreground`` [h,w]: the first prediction's foreground probability;
    ``prototype`` [C]: the support's foreground prototype (θ's start)."""
    with torch.enable_grad():
        z_query = F.normalize(query.detach().float().flatten(1), dim=0).T  # [N,C]
        z_support = F.normalize(support.detach().float().flatten(2), dim=1)  # [K,C,M]
        z_support = z_support.permute(0, 2, 1).reshape(-1, query.shape[0])  # [K·M,C]
        valid = support_valid.reshape(-1).float()
        target = (support_foreground.reshape(-1) / valid.clamp_min(EPS)).clamp(0, 1)
        theta = F.normalize(prototype.detach().float(), dim=0).clone().requires_grad_(True)
        bias = (z_query @ theta).mean().detach().clone().requires_grad_(True)
        optimizer = torch.optim.SGD([theta, bias], lr=LEARNING_RATE)
        prior = first_foreground.float().mean().detach()

        def logits(z: torch.Tensor) -> torch.Tensor:
            return TEMPERATURE * (z @ F.normalize(theta, dim=0) - bias)

        for step in range(STEPS):
            if step == PRIOR_UPDATE:
                with torch.no_grad():
                    prior = torch.sigmoid(logits(z_query)).mean()
            support_loss = F.binary_cross_entropy_with_logits(
                logits(z_support), target, weight=valid, reduction="sum"
            ) / valid.sum().clamp_min(1)
            predicted = torch.sigmoid(logits(z_query))
            loss = (
                support_loss
                + ENTROPY_WEIGHT * _binary_entropy(predicted).mean()
                + KL_WEIGHT * _kl(prior, predicted.mean())
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return logits(z_query).reshape(query.shape[-2:])
