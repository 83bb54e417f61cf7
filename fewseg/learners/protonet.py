"""``protonet``: prototypical networks for segmentation, PANet-style.

Wang et al., "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment",
ICCV 2019. An encoder and a trainable projection neck embed the images; masked average
pooling of the support embeddings gives a background and a foreground prototype (averaged
over shots); every query pixel is scored by scaled cosine similarity to both. Meta-training
minimises the query cross-entropy plus, optionally, prototype alignment regularisation
(PAR): prototypes pooled from the query under its own predicted segmentation must segment
the support images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fewseg.episodes.tensors import EpisodeTensors, SupportSet
from fewseg.errors import FewSegError
from fewseg.learners.base import LEARNERS, Learner, Predictor, build_backbone
from fewseg.learners.config import LearnerConfig
from fewseg.learners.losses import two_class_cross_entropy
from fewseg.learners.prototypes import (
    cosine_logits,
    margin_direction,
    prediction_logits,
    shot_pools_memo,
    shot_prototypes,
    support_prototypes,
)
from fewseg.models.backbones import Backbone
from fewseg.models.feature_cache import FeatureCache, encode
from fewseg.models.upsample import bilinear_resize


class ProtoNet(Learner):
    """Encoder → neck (conv3x3 → ReLU → conv1x1 to ``hidden``) → prototypes → cosine.

    The cosine scale is learnt as ``log_scale`` (scale = exp(log_scale), so it stays
    positive), initialised to ``scale_init``. A frozen encoder's features are cached and
    only the neck and the scale learn.
    """

    name = "protonet"
    concurrent_prediction = True

    def __init__(self, config: LearnerConfig, backbone: Backbone | None = None) -> None:
        super().__init__(config)
        if not config.scale_init > 0:
            raise FewSegError(f"protonet: scale_init must be > 0, got {config.scale_init}")
        if config.alignment_weight < 0:
            raise FewSegError(
                f"protonet: alignment_weight must be >= 0, got {config.alignment_weight}"
            )
        self.encoder = backbone if backbone is not None else build_backbone(config)
        self.feature_cache = FeatureCache(self.encoder)
        self.shot_pools = shot_pools_memo()
        self.neck = nn.Sequential(
            nn.Conv2d(self.encoder.out_channels, config.hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.hidden, config.hidden, 1),
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.scale_init)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def embed(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Neck features [B,hidden,h,w] (see :func:`fewseg.models.feature_cache.encode`)."""
        features = encode(self.encoder, self.feature_cache, images)
        return self.neck(features)

    def logits(
        self, features: torch.Tensor, prototypes: torch.Tensor, size: torch.Size | tuple[int, int]
    ) -> torch.Tensor:
        """Scaled cosine logits [B,2,H,W], bilinearly upsampled to ``size``."""
        logits = cosine_logits(features, prototypes, self.scale)
        return bilinear_resize(logits, size)

    def prediction_embedding(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`embed` without gradients. With a frozen encoder the neck's output is kept
        with the image's cached features, for the neck's current parameters: an evaluation
        meets each image in many episodes, and the neck costs more than the rest of a
        prediction."""
        if not self.encoder.frozen:
            with torch.no_grad():
                return self.embed(images)
        return self.feature_cache.derived(images, "neck", self._neck_version(), self.neck)

    def _neck_version(self) -> tuple[tuple[int, int], ...]:
        """What identifies the neck's parameters: their addresses and versions."""
        return tuple((p.data_ptr(), p._version) for p in self.neck.parameters())

    @torch.no_grad()
    def adapt(self, support: SupportSet) -> Predictor:
        # a trained encoder's features are not kept, nor are the shots' pooled features
        kept = self.encoder.frozen
        prototypes = support_prototypes(
            support,
            self.prediction_embedding,
            self.shot_pools if kept else None,
            self._neck_version() if kept else None,
        )
        direction = margin_direction(prototypes)

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            embedded = self.prediction_embedding(query_images)
            return prediction_logits(embedded, direction, self.scale, query_images.shape[-2:])

        return predict

    def _embed_episodes(
        self, episodes: Sequence[EpisodeTensors]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(support features, query features [1,...]) per episode, in one encoder pass when
        all images share a size."""
        images = [torch.cat([e.support.images, e.query_image[None]]) for e in episodes]
        if len({x.shape[1:] for x in images}) == 1:
            features = self.embed(torch.cat(images)).split([len(x) for x in images])
        else:
            features = [self.embed(x) for x in images]
        return [(f[:-1], f[-1:]) for f in features]

    def alignment_loss(
        self,
        query_features: torch.Tensor,
        query_logits: torch.Tensor,
        support_features: torch.Tensor,
        support: SupportSet,
    ) -> torch.Tensor:
        """PAR: prototypes pooled from the query features [1,C,h,w] under the argmax of its
        feature-resolution logits [1,2,h,w] segment each support image; mean over shots of
        the cross-entropy against the support masks.

        As in PANet, the mask is the (non-differentiable) argmax prediction, gradients flow
        through the query and support features, and an episode whose predicted query has no
        foreground contributes zero.
        """
        predicted = query_logits.argmax(dim=1)  # [1, h, w]
        if not bool(predicted.any()):
            return query_features.new_zeros(())
        prototypes = shot_prototypes(
            query_features, predicted.float(), torch.zeros_like(predicted, dtype=torch.bool)
        )
        logits = self.logits(support_features, prototypes, support.images.shape[-2:])
        per_shot = [
            two_class_cross_entropy(
                logits[k : k + 1], support.masks[k : k + 1], support.ignore[k : k + 1]
            )
            for k in range(support.shots)
        ]
        return torch.stack(per_shot).mean()

    def episode_losses(
        self,
        support_features: torch.Tensor,
        query_features: torch.Tensor,
        episode: EpisodeTensors,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query loss, alignment loss) of one episode; the latter is 0 when PAR is off."""
        support = episode.support
        prototypes = shot_prototypes(support_features, support.masks, support.ignore)
        coarse = cosine_logits(query_features, prototypes, self.scale)
        logits = bilinear_resize(coarse, episode.query_image.shape[-2:])
        query_loss = two_class_cross_entropy(
            logits, episode.query_mask[None], episode.query_ignore[None]
        )
        if self.config.alignment_weight == 0:
            return query_loss, query_loss.new_zeros(())
        alignment = self.alignment_loss(query_features, coarse, support_features, support)
        return query_loss, alignment

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Mean over episodes of query loss + alignment_weight × alignment loss, backpropagated."""
        if not episodes:
            raise FewSegError("protonet: meta_gradients needs at least one episode")
        query_losses, alignment_losses = zip(
            *(
                self.episode_losses(s, q, e)
                for (s, q), e in zip(self._embed_episodes(episodes), episodes, strict=True)
            ),
            strict=True,
        )
        query_loss = torch.stack(query_losses).mean()
        alignment_loss = torch.stack(alignment_losses).mean()
        loss = query_loss + self.config.alignment_weight * alignment_loss
        loss.backward()
        return {
            "loss": loss.item(),
            "query_loss": query_loss.item(),
            "alignment_loss": alignment_loss.item(),
        }

    def settings(self) -> dict[str, Any]:
        return {
            "learner": self.name,
            "backbone": self.config.backbone,
            "backbone_weights": getattr(self.encoder, "weights_source", "unknown"),
            "backbone_frozen": self.encoder.frozen,
            "feature_stride": self.encoder.stride,
            "hidden": self.config.hidden,
            "scale_init": self.config.scale_init,
            "alignment_weight": self.config.alignment_weight,
            "outer_lr": self.config.outer_lr,
        }


LEARNERS.register(
    "protonet", "PANet prototypes: trainable neck, learnt cosine scale, alignment (PAR)"
)(ProtoNet)
