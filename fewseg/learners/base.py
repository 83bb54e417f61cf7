"""The learner interface every algorithm implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from fewseg.episodes.tensors import SupportSet
from fewseg.registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Query images [B,3,H,W] → logits [B,2,H,W] (background, foreground) at input resolution."""


class Learner(nn.Module, ABC):
    """A few-shot segmenter: :meth:`adapt` turns a support set into a :data:`Predictor`."""

    name: ClassVar[str]

    @abstractmethod
    def adapt(self, support: SupportSet) -> Predictor:
        """Adapt to the support set of one episode."""

    def settings(self) -> dict[str, Any]:
        """What identifies this learner in a report."""
        return {"learner": self.name}


LearnerFactory = Callable[..., Learner]
LEARNERS: Registry[LearnerFactory] = Registry("learner")
