"""``probe``: training-free, a linear probe fitted on the support set's frozen features.

Class-balanced, L2-regularised logistic regression from the cells of four frozen ImageNet
backbone blocks (fewseg.models.probe; the blocks of the correlation layout's ``probe``)
to "foreground", fitted by L-BFGS on all the shots' cells at once and read on each query.
It uses every shot together, so it gains with K where prototype and correlation
statistics do not: the control a meta-learner must beat at K > 1 (README, issue #17).
"""

from __future__ import annotations

import torch

from fewseg.episodes.tensors import LabelledImages
from fewseg.learners.base import (
    Learner,
    LearnerOptions,
    Predictor,
    build_backbone,
    register_learner,
)
from fewseg.models.correlation import LAYOUTS, pyramid_backbone
from fewseg.models.probe import fit_support_probe, probe_features, read_probe
from fewseg.models.upsample import bilinear_resize


@register_learner("probe", "training-free: logistic regression fitted on the support's features")
class SupportProbe(Learner):
    """The probe fitted once per support set (deterministic), its foreground log-odds read
    on the query at the first probed block's grid (stride 16) and resized to the input.
    A backbone without a correlation layout (fewseg.models.correlation.LAYOUTS) is probed
    at its own features."""

    Options = LearnerOptions
    trainable = False

    def __init__(self, options: LearnerOptions) -> None:
        super().__init__(options)
        if options.backbone in LAYOUTS:
            taps = LAYOUTS[options.backbone].probe
            self.encoder = pyramid_backbone(options.backbone, True, options.weights_path, taps)
        else:
            self.encoder = build_backbone(options)
        self.encoder.freeze()

    def _cells(self, images: torch.Tensor) -> torch.Tensor:
        levels = self.encoder(images)
        return probe_features([levels] if isinstance(levels, torch.Tensor) else levels)

    @torch.no_grad()
    def adapt(self, support: LabelledImages) -> Predictor:
        cells = self._cells(support.images)
        fitted = fit_support_probe(cells, support.masks, support.ignore)

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            log_odds = read_probe(self._cells(query_images), fitted)
            return bilinear_resize(log_odds[:, None], query_images.shape[-2:])

        return predict
