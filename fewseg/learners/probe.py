"""``probe``: training-free, a linear probe fitted on the support set's frozen features.

Class-balanced, L2-regularised logistic regression from the cells of four frozen ImageNet
backbone blocks (fewseg.models.probe; the blocks of the correlation layout's ``probe``)
to "foreground", fitted by L-BFGS on all the shots' cells at once and read on each query.
It uses every shot together, so it gains with K where prototype and correlation
statistics do not: the control a meta-learner must beat at K > 1 (README, issue #17).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import (
    Learner,
    LearnerOptions,
    Predictor,
    build_backbone,
    register_learner,
)
from fewseg.models.correlation import LAYOUTS, pyramid_backbone
from fewseg.models.probe import fit_support_probe, probe_cells, read_probe
from fewseg.models.upsample import bilinear_resize
from fewseg.options import option


@dataclass
class ProbeOptions(LearnerOptions):
    enlarge: float = option(
        1.4,
        "the backbone reads the images enlarged by this factor, for finer cells (1.4: "
        "35x35 cells of stride 16 on a 400x400 image; 1: as given)",
        before=1.0,  # runs and reports from before the option read the images as given
    )

    learner: ClassVar[str] = "probe"

    def __post_init__(self) -> None:
        if not 1 <= self.enlarge <= 4:
            raise FewSegError(f"{self.learner}: enlarge must be in [1, 4], got {self.enlarge}")


@register_learner("probe", "training-free: logistic regression fitted on the support's features")
class SupportProbe(Learner):
    """The probe fitted once per support set (deterministic), its foreground log-odds read
    on the query at the first probed block's grid (stride 16 of the images enlarged by
    ``enlarge``) and resized to the input.
    A backbone without a correlation layout (fewseg.models.correlation.LAYOUTS) is probed
    at its own features."""

    Options = ProbeOptions
    options: ProbeOptions
    trainable = False

    def __init__(self, options: ProbeOptions) -> None:
        super().__init__(options)
        if options.backbone in LAYOUTS:
            taps = LAYOUTS[options.backbone].probe
            self.encoder = pyramid_backbone(options.backbone, True, options.weights_path, taps)
        else:
            self.encoder = build_backbone(options)
        self.encoder.enlarge = options.enlarge
        self.encoder.output = probe_cells
        self.encoder.freeze()

    def _cells(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def cell_predictor(self, support: LabelledImages) -> Callable[[torch.Tensor], torch.Tensor]:
        """Query images → foreground log-odds [B,h,w] at the cells' grid."""
        fitted = fit_support_probe(self._cells(support.images), support.masks, support.ignore)
        return lambda query_images: read_probe(self._cells(query_images), fitted)

    @torch.no_grad()
    def adapt(self, support: LabelledImages) -> Predictor:
        predict_cells = self.cell_predictor(support)

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            log_odds = predict_cells(query_images)
            return bilinear_resize(log_odds[:, None], query_images.shape[-2:])

        return predict
