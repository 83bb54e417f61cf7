"""``lrd2``: the support-fitted probe, meta-learned through its fit (LR-D2).

Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019:
a base learner solved to its optimum on each support set (here :mod:`fewseg.learners.probe`'s
class-balanced logistic regression on frozen backbone cells) and meta-learned through the
solution. What is meta-learned is small and class-agnostic: the L2 decay of the fit, a
scale and a shift of the query log-odds, and a scale per feature channel, about 650
numbers (with ``area_prior`` one more: a gain of the support's foreground fraction's
log-odds added to the query's, the object size the class-balanced fit leaves out); the gradient
reaches them through the fitted probe by the implicit function theorem
(:func:`fewseg.models.probe.probe_optimum`), not by unrolling its solver. The outer loss is
the soft IoU of each query's cells. Initialised, it predicts as ``probe`` does (to the
solver's tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import register_learner
from fewseg.learners.losses import soft_iou_loss
from fewseg.learners.probe import ProbeOptions, SupportProbe
from fewseg.models.probe import (
    DECAY,
    labelled_cells,
    probe_examples,
    probe_optimum,
    read_probe,
)
from fewseg.options import option

AREA_FLOOR = 1e-3  # a foreground fraction's log-odds are taken within [1e-3, 1 − 1e-3]


def support_area_log_odds(support: LabelledImages) -> torch.Tensor:
    """The log-odds of the fraction of the support's valid pixels that are foreground."""
    valid = ~support.ignore
    fraction = (support.masks.bool() & valid).sum() / valid.sum().clamp_min(1)
    return torch.logit(fraction.float(), eps=AREA_FLOOR)


@dataclass
class LRD2Options(ProbeOptions):
    outer_lr: float = option(1e-2, "learning rate of the meta-training optimizer (Adam)")
    area_prior: bool = option(
        False,
        "the query log-odds shifted by g·logit(the support's foreground fraction), the gain g "
        "meta-learned from 0: the class-balanced fit forgets how large the class's objects "
        "are, the support remembers",
    )
    learner: ClassVar[str] = "lrd2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.outer_lr > 0:
            raise FewSegError(f"{self.learner}: outer_lr must be > 0, got {self.outer_lr}")


@register_learner("lrd2", "LR-D2: the support-fitted probe, its decay and calibration meta-learned")
class LRD2(SupportProbe):
    """:class:`SupportProbe` with meta-learned ``log_decay``, ``log_scale``, ``shift`` and
    ``log_channel_scale`` (all at the probe's own values when initialised)."""

    Options = LRD2Options
    options: LRD2Options
    trainable = True

    def __init__(self, options: LRD2Options) -> None:
        super().__init__(options)
        channels = self.encoder.out_channels
        self.log_decay = nn.Parameter(torch.tensor(math.log(DECAY)))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.shift = nn.Parameter(torch.zeros(()))
        self.log_channel_scale = nn.Parameter(torch.zeros(channels))
        if options.area_prior:
            self.area_gain = nn.Parameter(torch.zeros(()))

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.outer_parameters(), lr=self.options.outer_lr)

    def _scaled_cells(self, images: torch.Tensor) -> torch.Tensor:
        return self._cells(images) * self.log_channel_scale.exp()[:, None, None]

    def cell_predictor(self, support: LabelledImages) -> Callable[[torch.Tensor], torch.Tensor]:
        """Query images → foreground log-odds [B,h,w] at the cells' grid, differentiable
        with respect to the meta-parameters (``adapt`` reads it without gradients)."""
        fitted = self.fitted_probe(*self.support_examples(support), len(support.images))
        offset = self.support_offset(support)

        def predict(query_images: torch.Tensor) -> torch.Tensor:
            return self.calibrated(read_probe(self._scaled_cells(query_images), fitted), offset)

        return predict

    def support_examples(
        self, support: LabelledImages
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`probe_examples` of the support's scaled cells: (cells [n,C], foreground
        weight [n], background weight [n])."""
        return probe_examples(self._scaled_cells(support.images), support.masks, support.ignore)

    def calibrated(
        self, log_odds: torch.Tensor, offset: torch.Tensor | float = 0.0
    ) -> torch.Tensor:
        """The probe's log-odds scaled and shifted by the meta-learned calibration, plus a
        support set's :meth:`support_offset`."""
        return log_odds * self.log_scale.exp() + self.shift + offset

    def support_offset(self, support: LabelledImages) -> torch.Tensor | float:
        """With ``area_prior``, the gain times the log-odds of the support's foreground
        fraction (its shots' valid pixels together, kept within [AREA_FLOOR, 1 − AREA_FLOOR]);
        else 0."""
        if not self.options.area_prior:
            return 0.0
        return self.area_gain * support_area_log_odds(support)

    def fitted_probe(
        self, cells: torch.Tensor, fg_weight: torch.Tensor, bg_weight: torch.Tensor, shots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe fitted on the (scaled) cells of a ``shots``-image support set,
        differentiable by the implicit function theorem."""
        return probe_optimum(cells, fg_weight, bg_weight, self.log_decay.exp())

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        total = 0.0
        for episode in episodes:
            query = episode.query
            log_odds = self.cell_predictor(episode.support)(query.images)
            target, valid = labelled_cells(query.masks, query.ignore, log_odds.shape[-2:])
            loss = soft_iou_loss(log_odds, target, (valid > 0.5).float()) / len(episodes)
            loss.backward()
            total += float(loss.detach())
        return {"loss": total}
