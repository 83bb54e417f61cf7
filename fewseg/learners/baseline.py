"""``baseline``: training-free prototype matching on frozen ImageNet features."""

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
from fewseg.learners.prototypes import margin_direction, prediction_logits, support_prototypes
from fewseg.models.backbones import Backbone

COSINE_SCALE = 20.0  # PANet's fixed scale; it only sharpens the logits, not the argmax


@register_learner("baseline", "training-free: frozen ImageNet MobileNetV2 prototypes, cosine")
class PrototypeBaseline(Learner):
    """Masked-average-pooled background/foreground prototypes of frozen backbone
    features, averaged over shots; each query pixel takes the class of the more
    cosine-similar prototype. No parameter is trained.
    """

    Options = LearnerOptions
    trainable = False

    def __init__(self, options: LearnerOptions, backbone: Backbone | None = None) -> None:
        super().__init__(options)
        self.encoder = backbone if backbone is not None else build_backbone(options)
        self.encoder.freeze()

    @torch.no_grad()
    def adapt(self, support: LabelledImages) -> Predictor:
        features = self.encoder(support.images)
        direction = margin_direction(support_prototypes(features, support.masks, support.ignore))

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            features = self.encoder(query_images)
            return prediction_logits(features, direction, COSINE_SCALE, query_images.shape[-2:])

        return predict
