"""The learner interface every algorithm implements, its options and its registry.

A learner is one algorithm: it adapts to a support set (:meth:`Learner.adapt`) and, if it
learns, computes the meta-gradient of a meta-batch (:meth:`Learner.meta_gradients`). It
declares its options as a dataclass (``Options``) next to its class and registers both
under its name (:func:`register_learner`); the command line's flags, the checks of config
files and the comparison of a resumed run with its checkpoint all come from there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.models.backbones import BACKBONES, Backbone
from fewseg.models.encoder import Encoder
from fewseg.options import as_dict, option
from fewseg.registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Query images [B,3,H,W] → logits at input resolution: foreground logits [B,1,H,W] (the
log-odds of foreground, what fewseg's learners return) or (background, foreground) logits
[B,2,H,W]; :func:`fewseg.models.segmenter.foreground_logit` reads either."""


@dataclass
class LearnerOptions:
    """Options every learner has: its encoder."""

    backbone: str = option("mobilenet_v2", "the encoder: a registered backbone (fewseg list)")
    weights_path: str | None = option(
        None, "local backbone weights file (.pth) instead of torchvision's"
    )


@dataclass
class TrainableOptions(LearnerOptions):
    """Options of the learners that meta-train."""

    pretrained: bool = option(True, "start the backbone from its ImageNet weights")
    freeze_backbone: bool = option(
        True, "keep a pretrained backbone frozen (a backbone trained from scratch always trains)"
    )


class Learner(nn.Module, ABC):
    """A few-shot segmenter.

    (a) :meth:`adapt` turns a support set into a :data:`Predictor` for query images.
    (b) :meth:`meta_gradients` takes one meta-training step's worth of episodes and leaves
    the meta-gradient in ``.grad`` of :meth:`outer_parameters`; the engine then (all-reduces
    and) applies the optimizer from :meth:`make_optimizer`.

    ``encoder`` is the part that maps each image alone to features, the same whatever the
    support set (None when adaptation changes all of the network): the learner calls it on
    the image batches of its episodes, and the engine may answer from features computed
    before (fewseg.models.encoder).
    """

    name: ClassVar[str]
    Options: ClassVar[type[LearnerOptions]] = LearnerOptions
    trainable: ClassVar[bool] = True
    encoder: Encoder | None

    def __init__(self, options: LearnerOptions) -> None:
        super().__init__()
        if not isinstance(options, self.Options):
            raise TypeError(f"{self.name} takes {self.Options.__name__}, got {options!r}")
        self.options = options

    @abstractmethod
    def adapt(self, support: LabelledImages) -> Predictor:
        """Adapt to the support set of one episode."""

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Accumulate the meta-gradient of a meta-batch into ``.grad``; return its metrics."""
        raise FewSegError(f"learner {self.name!r} is training-free: nothing to train")

    def outer_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise FewSegError(f"learner {self.name!r} is training-free: nothing to train")

    def settings(self) -> dict[str, Any]:
        """What identifies this learner in a report: its name, options and encoder."""
        backbone = next((m for m in self.modules() if isinstance(m, Backbone)), None)
        encoder: dict[str, Any] = {}
        if backbone is not None:
            encoder = {
                "backbone_weights": getattr(backbone, "weights_source", "unknown"),
                "backbone_frozen": backbone.frozen,
                "feature_stride": backbone.stride,
            }
        return {"learner": self.name, **as_dict(self.options), **encoder}


def build_backbone(options: LearnerOptions) -> Backbone:
    """The configured encoder; a pretrained one is frozen unless ``freeze_backbone`` is off.
    Training-free learners always take a frozen, pretrained one."""
    pretrained = getattr(options, "pretrained", True)
    frozen = getattr(options, "freeze_backbone", True) and pretrained
    return BACKBONES.get(options.backbone)(
        pretrained=pretrained, weights_path=options.weights_path, frozen=frozen
    )


LearnerClass = TypeVar("LearnerClass", bound=type[Learner])
LEARNERS: Registry[type[Learner]] = Registry("learner")


def register_learner(name: str, description: str) -> Callable[[LearnerClass], LearnerClass]:
    """Class decorator: make the learner class ``name`` known, with its ``Options``."""

    def decorator(cls: LearnerClass) -> LearnerClass:
        cls.name = name
        LEARNERS.register(name, description)(cls)
        return cls

    return decorator


def build_learner(name: str, options: dict[str, Any] | LearnerOptions | None = None) -> Learner:
    """The registered learner ``name`` with ``options`` (a dict is checked; None: defaults)."""
    from fewseg.options import options_from

    cls = LEARNERS.get(name)
    if options is None or isinstance(options, dict):
        options = options_from(cls.Options, options or {}, "options", f"learner {name}")
    return cls(options)
