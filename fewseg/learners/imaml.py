"""``imaml``: implicit MAML on the support-fitted probe.

Rajeswaran, Finn, Kakade and Levine, "Meta-Learning with Implicit Gradients", NeurIPS
2019: the inner loop solves the support loss to its optimum under a proximal term that
pulls the task's parameters towards a meta-learned initialisation θ₀,
``min_φ L_support(φ) + λ/2 |φ − θ₀|²``, and the meta-gradient reaches θ₀ through that
optimum by the implicit function theorem instead of through unrolled steps. Here φ is
the linear probe of fewseg.learners.probe (class-balanced logistic regression on frozen
backbone cells, its L2 decay the proximal term, λ = 2 × decay), so the task's optimum is
:func:`fewseg.models.probe.probe_optimum` with ``centre`` θ₀. What is meta-learned: θ₀
(one weight per feature channel, the prior the one-shot fit starts from and stays near),
the decay λ, and :mod:`fewseg.learners.lrd2`'s calibration (a scale and shift of the
log-odds, a scale per channel); with ``shot_decay`` also how the decay shrinks with the
number of shots; with ``adapter`` a low-rank map of the cells; with ``prototype_centre`` a
gain of the support's prototype difference added to θ₀. With ``transductive`` a prediction
for a small support set fits the probe a second time, on the query's own confident cells
as well (not meta-learned); with ``support_views`` it also fits on other views of the
support images (mirrored, rescaled); with ``centre_decay`` below 1 it lets the support set
rescale θ₀ (a prior with more variance along θ₀'s direction). Initialised (θ₀ = 0, no
``transductive``), it predicts as ``lrd2`` and ``probe`` do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import nn

from fewseg.episodes.image_views import mirror_images, zoomed_images
from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import register_learner
from fewseg.learners.lrd2 import LRD2, LRD2Options
from fewseg.models.probe import probe_optimum, read_probe
from fewseg.options import option

ADAPTER_ACTIVATIONS = {"relu": torch.relu, "none": lambda hidden: hidden}
ADAPTER_LR_FACTOR = 0.1  # the adapter's outer learning rate against the other meta-parameters'
# the prototype gain's: a gain of a few units (logits of a few units from unit-length levels)
# is then reached in a few hundred steps
PROTOTYPE_LR_FACTOR = 10.0
# a query cell joins the transductive fit as foreground above this probability, as
# background below one minus it
QUERY_CONFIDENCE = 0.7


@dataclass
class IMAMLOptions(LRD2Options):
    shot_decay: bool = option(
        False,
        "a K-shot fit's decay divided by K^a, the exponent a meta-learned (from 0): more "
        "shots, less pull towards the initialisation",
    )
    adapter: int = option(
        0,
        "rank of a meta-learned residual map of the cells the probe is fitted on, "
        "cells + B·act(Aᵀ·cells), B zero at first (0: none)",
    )
    adapter_activation: str = option("relu", "the adapter's activation: relu or none (linear)")
    prototype_centre: bool = option(
        False,
        "the fit decays towards θ₀ + g·(mean foreground cell − mean background cell) of the "
        "support (class-balanced), the gain g meta-learned from 0: a prototype classifier "
        "the fit starts from",
    )
    transductive: int = option(
        0,
        "at prediction, with at most this many shots (0: never), the probe is fitted a "
        "second time on the support's cells and the query's own confident cells (first "
        f"prediction's probability above {QUERY_CONFIDENCE}: foreground, below "
        f"{1 - QUERY_CONFIDENCE:.1f}: background), the query counting as one more shot "
        "(each class's query cells weigh 1/(K+1)); meta-training predicts without it",
        prediction_only=True,
    )
    support_views: str = option(
        "",
        "at prediction, with at most view_shots shots, the fit also reads other views of each "
        "support image, comma-separated: mirror (flipped left-right) or a scale such as 0.7 "
        "(the image resized by it); each view weighs as much as the images as given "
        "(meta-training reads the images as given)",
        prediction_only=True,
    )
    view_shots: int = option(
        1, "support_views apply to support sets of at most this many shots", prediction_only=True
    )
    centre_decay: float = option(
        1.0,
        "at prediction, the decay of the fit's offset from θ₀ along θ₀'s own direction, as a "
        "fraction of its decay elsewhere (1: the same): below 1 a support set may rescale the "
        "prior, weaken it for a class unlike the meta-training classes (meta-training keeps 1)",
        prediction_only=True,
    )
    learner: ClassVar[str] = "imaml"

    def __post_init__(self) -> None:
        super().__post_init__()
        support_views(self.support_views, self.learner)
        if self.view_shots < 0:
            raise FewSegError(f"{self.learner}: view_shots must be >= 0, got {self.view_shots}")
        if not 0 < self.centre_decay <= 1:
            raise FewSegError(
                f"{self.learner}: centre_decay must be in (0, 1], got {self.centre_decay}"
            )
        if self.transductive < 0:
            raise FewSegError(f"{self.learner}: transductive must be >= 0, got {self.transductive}")
        if self.adapter < 0:
            raise FewSegError(f"{self.learner}: adapter must be >= 0, got {self.adapter}")
        if self.adapter_activation not in ADAPTER_ACTIVATIONS:
            choices = ", ".join(ADAPTER_ACTIVATIONS)
            raise FewSegError(
                f"{self.learner}: adapter_activation must be one of {choices}, "
                f"got {self.adapter_activation!r}"
            )


def support_views(
    spec: str, learner: str = "imaml"
) -> list[Callable[[LabelledImages], LabelledImages]]:
    """The views named by ``support_views``: each maps a support set to another view of it
    (the masks stay at their size: :func:`fewseg.models.probe.labelled_cells` pools them to
    whatever grid the view's cells have)."""
    views = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        if name == "mirror":
            views.append(mirrored)
            continue
        try:
            scale = float(name)
        except ValueError:
            scale = 0.0
        if not 0.25 <= scale <= 4 or scale == 1:
            raise FewSegError(
                f"{learner}: support_views takes mirror or a scale in [0.25, 4] other than 1, "
                f"got {name!r}"
            )
        views.append(partial(rescaled, scale=scale))
    return views


def mirrored(support: LabelledImages) -> LabelledImages:
    flipped = support.masks.flip(-1), support.ignore.flip(-1)
    return LabelledImages(mirror_images(support.images), *flipped)


def rescaled(support: LabelledImages, scale: float) -> LabelledImages:
    return LabelledImages(zoomed_images(support.images, scale), support.masks, support.ignore)


@register_learner("imaml", "iMAML: the probe's fit pulled towards a meta-learned initialisation")
class IMAML(LRD2):
    """:class:`LRD2` with ``initial_weights`` θ₀, the centre of the fit's decay."""

    Options = IMAMLOptions
    options: IMAMLOptions

    def __init__(self, options: IMAMLOptions) -> None:
        super().__init__(options)
        self.initial_weights = nn.Parameter(torch.zeros(self.encoder.out_channels))
        self.views = support_views(options.support_views)
        if options.shot_decay:
            self.decay_exponent = nn.Parameter(torch.zeros(()))
        if options.adapter:
            channels, rank = self.encoder.out_channels, options.adapter
            generator = torch.Generator().manual_seed(0)
            down = torch.randn(channels, rank, generator=generator) / math.sqrt(channels)
            self.adapter_down = nn.Parameter(down)
            self.adapter_up = nn.Parameter(torch.zeros(rank, channels))
        if options.prototype_centre:
            self.prototype_gain = nn.Parameter(torch.zeros(()))

    def make_optimizer(self) -> torch.optim.Optimizer:
        trained = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        factors = {"adapter_": ADAPTER_LR_FACTOR, "prototype_gain": PROTOTYPE_LR_FACTOR}
        groups: dict[float, list[nn.Parameter]] = {}
        for name, parameter in trained:
            factor = next((f for prefix, f in factors.items() if name.startswith(prefix)), 1.0)
            groups.setdefault(factor, []).append(parameter)
        lr = self.options.outer_lr
        return torch.optim.Adam(
            [{"params": params, "lr": lr * factor} for factor, params in groups.items()], lr=lr
        )

    def _scaled_cells(self, images: torch.Tensor) -> torch.Tensor:
        cells = super()._scaled_cells(images)
        if not self.options.adapter:
            return cells
        activation = ADAPTER_ACTIVATIONS[self.options.adapter_activation]
        rows = cells.permute(0, 2, 3, 1)  # [B,h,w,C]
        adapted = rows + activation(rows @ self.adapter_down) @ self.adapter_up
        return adapted.permute(0, 3, 1, 2)

    def support_examples(
        self, support: LabelledImages
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`LRD2.support_examples`; when predicting from at most ``view_shots`` shots,
        those of every view in ``support_views`` too, each class weighing 1 spread evenly over
        the views that have cells of it."""
        examples_of = super().support_examples
        given = examples_of(support)
        if self.training or not self.views or len(support) > self.options.view_shots:
            return given
        examples = [given, *(examples_of(view(support)) for view in self.views)]
        cells, fg_weight, bg_weight = (torch.cat(parts) for parts in zip(*examples, strict=True))
        return (
            cells,
            fg_weight / fg_weight.sum().clamp_min(1),
            bg_weight / bg_weight.sum().clamp_min(1),
        )

    def cell_predictor(self, support: LabelledImages) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`LRD2.cell_predictor`, each query's log-odds then from :meth:`query_refit`
        when predicting (not meta-training) from at most ``transductive`` shots."""
        shots = len(support.images)
        if self.training or shots > self.options.transductive:
            return super().cell_predictor(support)
        examples = self.support_examples(support)
        fitted = self.fitted_probe(*examples, shots)
        share = 1 / (shots + 1)
        offset = self.support_offset(support)

        def predict(query_images: torch.Tensor) -> torch.Tensor:
            query_cells = self._scaled_cells(query_images)
            first = self.calibrated(read_probe(query_cells, fitted), offset)
            refitted = [
                self.query_refit(examples, shots, share, query, log_odds, offset)
                for query, log_odds in zip(query_cells, first, strict=True)
            ]
            return torch.stack(refitted)

        return predict

    def query_refit(
        self,
        examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        shots: int,
        share: float,
        query_cells: torch.Tensor,
        first: torch.Tensor,
        offset: torch.Tensor | float = 0.0,
    ) -> torch.Tensor:
        """One query's log-odds [h,w] from the probe fitted again on the ``shots``-image
        support's examples (:meth:`support_examples`) and the query's cells [C,h,w] whose
        ``first`` prediction is confident, each class's query cells weighing ``share`` and its
        support cells the rest, calibrated with the support's ``offset``; ``first`` itself
        where the query has no confident cell of either class."""
        cells, fg_weight, bg_weight = examples
        probability = first.detach().flatten().sigmoid()
        foreground = (probability > QUERY_CONFIDENCE).to(cells.dtype)
        background = (probability < 1 - QUERY_CONFIDENCE).to(cells.dtype)
        if not (foreground.any() and background.any()):
            return first
        rows = query_cells.flatten(1).T  # [h·w, C]
        fitted = self.fitted_probe(
            torch.cat([cells, rows]),
            torch.cat([(1 - share) * fg_weight, share * foreground / foreground.sum()]),
            torch.cat([(1 - share) * bg_weight, share * background / background.sum()]),
            shots,
        )
        return self.calibrated(read_probe(query_cells[None], fitted)[0], offset)

    def fitted_probe(
        self, cells: torch.Tensor, fg_weight: torch.Tensor, bg_weight: torch.Tensor, shots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's optimum near θ₀, differentiable in θ₀, the decay and the cells."""
        log_decay = self.log_decay
        if self.options.shot_decay:
            log_decay = log_decay - self.decay_exponent * math.log(shots)
        centre = self.initial_weights
        if self.options.prototype_centre:
            centre = centre + self.prototype_gain * (cells.T @ (fg_weight - bg_weight))
        centre_decay = 1.0 if self.training else self.options.centre_decay
        return probe_optimum(
            cells, fg_weight, bg_weight, log_decay.exp(), centre=centre, centre_decay=centre_decay
        )
