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
from dataclasses import dataclass

import torch
from torch import nn

from fewseg.episodes.image_keys import cat_images
from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import (
    Learner,
    Predictor,
    TrainableOptions,
    build_backbone,
    register_learner,
)
from fewseg.learners.correlation_tasks import (
    CorrelationTasks,
    balanced_option,
    check_probe,
    correlation_tasks,
    prior_option,
    probe_option,
    shot_mean_option,
)
from fewseg.learners.losses import two_class_cross_entropy
from fewseg.learners.prototypes import (
    cosine_logits,
    margin_direction,
    prediction_logits,
    shot_prototypes,
    support_prototypes,
)
from fewseg.models.backbones import Backbone
from fewseg.models.encoder import Encoder
from fewseg.models.upsample import bilinear_resize
from fewseg.options import option


@dataclass
class ProtoNetOptions(TrainableOptions):
    hidden: int = option(64, "width of the projection neck's embedding")
    scale_init: float = option(20.0, "initial cosine scale (learnt)")
    alignment_weight: float = option(
        1.0, "weight of prototype alignment regularisation, PAR (0: off)"
    )
    outer_lr: float = option(1e-3, "learning rate of the meta-training optimizer (Adam)")
    model: str = option(
        "prototypes",
        "prototypes (PANet's cosine to masked-average prototypes) or correlation (the "
        "class-agnostic correlation model, trained on episodes, no test-time adaptation)",
    )
    prior: bool = prior_option()
    balanced: bool = balanced_option()
    probe: str = probe_option()
    shot_mean: bool = shot_mean_option()

    def __post_init__(self) -> None:
        check_probe(self.probe)
        if self.model not in ("prototypes", "correlation"):
            raise FewSegError(
                f"protonet: model must be prototypes or correlation, got {self.model!r}"
            )
        if not self.scale_init > 0:
            raise FewSegError(f"protonet: scale_init must be > 0, got {self.scale_init}")
        if self.alignment_weight < 0:
            raise FewSegError(
                f"protonet: alignment_weight must be >= 0, got {self.alignment_weight}"
            )
        if self.hidden < 1:
            raise FewSegError(f"protonet: hidden must be >= 1, got {self.hidden}")


class EmbeddingNetwork(Encoder):
    """Backbone → neck (conv3x3 → ReLU → conv1x1 to ``hidden`` channels)."""

    def __init__(self, backbone: Backbone, hidden: int) -> None:
        super().__init__(frozen=False)
        self.backbone = backbone
        self.neck = nn.Sequential(
            nn.Conv2d(backbone.out_channels, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
        )
        self.out_channels = hidden
        self.stride = backbone.stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(images))


@register_learner(
    "protonet", "PANet prototypes: trainable neck, learnt cosine scale, alignment (PAR)"
)
class ProtoNet(Learner):
    """Embedding network (backbone → neck) → prototypes → cosine.

    The cosine scale is learnt as ``log_scale`` (scale = exp(log_scale), so it stays
    positive), initialised to ``scale_init``. With a frozen backbone only the neck and the
    scale learn.

    With ``model: correlation`` the metric is the correlation model's instead (its
    statistics of the query against the support features, decoded): trained on the query
    loss of each episode, applied without test-time adaptation.
    """

    Options = ProtoNetOptions
    options: ProtoNetOptions

    def __init__(self, options: ProtoNetOptions, backbone: Backbone | None = None) -> None:
        super().__init__(options)
        self.tasks: CorrelationTasks | None = None
        if options.model == "correlation":
            self.tasks = correlation_tasks(options)
            self.model = self.tasks.model
            self.encoder = self.model.encoder
            return
        backbone = backbone if backbone is not None else build_backbone(options)
        self.encoder = EmbeddingNetwork(backbone, options.hidden)
        self.log_scale = nn.Parameter(torch.tensor(math.log(options.scale_init)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.outer_parameters(), lr=self.options.outer_lr)

    def logits(
        self, features: torch.Tensor, prototypes: torch.Tensor, size: torch.Size | tuple[int, int]
    ) -> torch.Tensor:
        """Scaled cosine logits [B,2,H,W], bilinearly upsampled to ``size``."""
        logits = cosine_logits(features, prototypes, self.scale)
        return bilinear_resize(logits, size)

    @torch.no_grad()
    def adapt(self, support: LabelledImages) -> Predictor:
        if self.tasks is not None:
            return self.tasks.predictor(support)
        embedded = self.encoder(support.images)
        direction = margin_direction(support_prototypes(embedded, support.masks, support.ignore))

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            embedded = self.encoder(query_images)
            return prediction_logits(embedded, direction, self.scale, query_images.shape[-2:])

        return predict

    def _embed_episodes(
        self, episodes: Sequence[EpisodeTensors]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(support features, query features [1,...]) per episode, in one encoder pass when
        all images share a size."""
        images = [cat_images([e.support.images, e.query.images]) for e in episodes]
        if len({x.shape[1:] for x in images}) == 1:
            features = self.encoder(cat_images(images)).split([len(x) for x in images])
        else:
            features = [self.encoder(x) for x in images]
        return [(f[:-1], f[-1:]) for f in features]

    def alignment_loss(
        self,
        query_features: torch.Tensor,
        query_logits: torch.Tensor,
        support_features: torch.Tensor,
        support: LabelledImages,
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
        query = episode.query
        logits = bilinear_resize(coarse, query.images.shape[-2:])
        query_loss = two_class_cross_entropy(logits, query.masks, query.ignore)
        if self.options.alignment_weight == 0:
            return query_loss, query_loss.new_zeros(())
        alignment = self.alignment_loss(query_features, coarse, support_features, support)
        return query_loss, alignment

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Mean over episodes of query loss + alignment_weight × alignment loss, backpropagated."""
        if not episodes:
            raise FewSegError("protonet: meta_gradients needs at least one episode")
        if self.tasks is not None:
            loss = self.tasks.episodic_loss(episodes)
            loss.backward()
            return {"loss": loss.item()}
        query_losses, alignment_losses = zip(
            *(
                self.episode_losses(s, q, e)
                for (s, q), e in zip(self._embed_episodes(episodes), episodes, strict=True)
            ),
            strict=True,
        )
        query_loss = torch.stack(query_losses).mean()
        alignment_loss = torch.stack(alignment_losses).mean()
        loss = query_loss + self.options.alignment_weight * alignment_loss
        loss.backward()
        return {
            "loss": loss.item(),
            "query_loss": query_loss.item(),
            "alignment_loss": alignment_loss.item(),
        }
