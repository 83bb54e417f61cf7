"""The learner interface every algorithm implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from fewseg.episodes.tensors import EpisodeTensors, SupportSet
from fewseg.errors import FewSegError
from fewseg.learners.config import LearnerConfig
from fewseg.models.backbones import BACKBONES, Backbone
from fewseg.models.feature_cache import FeatureCache
from fewseg.registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Query images [B,3,H,W] → logits at input resolution: foreground logits [B,1,H,W] (the
log-odds of foreground, what fewseg's learners return) or (background, foreground) logits
[B,2,H,W]; :func:`fewseg.models.segmenter.foreground_logit` reads either."""


class Learner(nn.Module, ABC):
    """A few-shot segmenter.

    (a) :meth:`meta_gradients` takes one meta-training step's worth of episodes and leaves
    the meta-gradient in ``.grad`` of :meth:`outer_parameters`; the engine then (all-reduces
    and) applies the optimizer from :meth:`make_optimizer`. (b) :meth:`adapt` turns a
    support set into a :data:`Predictor` for query images.
    """

    name: ClassVar[str]
    trainable: ClassVar[bool] = True
    # Its predictors change no module state, so they may run on another thread while it
    # adapts to the next support set (not so with torch.func.functional_call, which swaps
    # the module's parameters for the duration of a call).
    concurrent_prediction: ClassVar[bool] = False

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__()
        self.config = config

    @abstractmethod
    def adapt(self, support: SupportSet) -> Predictor:
        """Adapt to the support set of one episode."""

    def feature_caches(self) -> list[FeatureCache]:
        """The caches of frozen-backbone features this learner keeps (attributes)."""
        return [value for value in vars(self).values() if isinstance(value, FeatureCache)]

    def cache_features(self, images: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Compute and keep the encoder features of ``images`` in each of this learner's
        caches whose backbone is frozen; otherwise nothing. The evaluation calls it for each
        episode's images (on its main thread, or on encoder threads), then adapts and
        predicts on its scoring thread, where the features are found."""
        for cache in self.feature_caches():
            if cache.backbone.frozen:
                cache(images)

    def forget_features(self) -> None:
        """Drop every feature this learner cached. Training with augmentation calls it
        before each step: an augmented image never comes back, and the caches would
        otherwise fill their budget (1 GiB each) with features never met again."""
        for cache in self.feature_caches():
            cache.clear()

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Accumulate the meta-gradient of a meta-batch into ``.grad``; return its metrics."""
        raise FewSegError(f"learner {self.name!r} is training-free: nothing to train")

    def outer_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.outer_parameters(), lr=self.config.outer_lr)

    def settings(self) -> dict[str, Any]:
        """What identifies this learner in a report."""
        return {"learner": self.name, **self.config.to_dict()}


def build_backbone(config: LearnerConfig) -> Backbone:
    """The configured encoder; a pretrained one is frozen unless ``freeze_backbone`` is off."""
    factory = BACKBONES.get(config.backbone)
    return factory(
        pretrained=config.pretrained,
        weights_path=config.weights_path,
        frozen=config.freeze_backbone and config.pretrained,
    )


LearnerFactory = Callable[[LearnerConfig], Learner]
LEARNERS: Registry[LearnerFactory] = Registry("learner")
