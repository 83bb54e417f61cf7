"""``baseline``: training-free prototype matching on frozen ImageNet features."""

from __future__ import annotations

from typing import Any

import torch

from fewseg.episodes.tensors import SupportSet
from fewseg.learners.base import LEARNERS, Learner, Predictor, build_backbone
from fewseg.learners.config import LearnerConfig
from fewseg.learners.prototypes import (
    feature_norms,
    margin_direction,
    prediction_logits,
    shot_pools_memo,
    support_prototypes,
)
from fewseg.models.backbones import Backbone
from fewseg.models.feature_cache import FeatureCache

COSINE_SCALE = 20.0  # PANet's fixed scale; it only sharpens the logits, not the argmax


class PrototypeBaseline(Learner):
    """Masked-average-pooled background/foreground prototypes of frozen backbone
    features, averaged over shots; each query pixel takes the class of the more
    cosine-similar prototype. No parameter is trained.
    """

    name = "baseline"

    trainable = False
    concurrent_prediction = True

    def __init__(self, config: LearnerConfig, backbone: Backbone | None = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        self.backbone.freeze()
        self.features = FeatureCache(self.backbone)
        self.shot_pools = shot_pools_memo()

    @torch.no_grad()
    def adapt(self, support: SupportSet) -> Predictor:
        direction = margin_direction(support_prototypes(support, self.features, self.shot_pools))

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            features, norms = self.features.features_and_derived(
                query_images, "norms", None, feature_norms
            )
            return prediction_logits(
                features, direction, COSINE_SCALE, query_images.shape[-2:], norms
            )

        return predict

    def settings(self) -> dict[str, Any]:
        return {
            "learner": self.name,
            "backbone": self.config.backbone,
            "backbone_weights": getattr(self.backbone, "weights_source", "unknown"),
            "feature_stride": self.backbone.stride,
        }


LEARNERS.register("baseline", "training-free: frozen ImageNet MobileNetV2 prototypes, cosine")(
    PrototypeBaseline
)
