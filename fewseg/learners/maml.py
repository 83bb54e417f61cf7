"""``maml`` and ``fomaml``: meta-learn an initialisation that a few SGD steps on the
support set turn into a good segmenter of the query (Finn et al. 2017).

Options of :class:`LearnerConfig`: ``first_order`` drops the inner loop's second
derivatives (FOMAML); ``head_only`` adapts only the decoder head (ANIL, Raghu et al.
2020); ``meta_sgd`` meta-learns one inner learning rate per parameter element (Meta-SGD,
Li et al. 2017).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from fewseg.episodes.tensors import EpisodeTensors
from fewseg.errors import FewSegError
from fewseg.learners.adaptation import GradientAdaptedSegmenter
from fewseg.learners.base import LEARNERS
from fewseg.learners.config import LearnerConfig
from fewseg.learners.losses import foreground_bce


def learning_rate_key(name: str) -> str:
    """A parameter name as a :class:`nn.ParameterDict` key (keys cannot contain '.')."""
    return name.replace(".", "__")


class MAML(GradientAdaptedSegmenter):
    """MAML (Finn et al. 2017): ``inner_steps`` SGD steps on the support loss, outer loss
    on the query, differentiated through the inner loop (second order unless
    ``first_order``). With ``meta_sgd`` the inner learning rates are outer parameters,
    initialised to ``inner_lr`` and used at test time as well (Li et al. 2017).
    """

    name = "maml"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.learning_rates = nn.ParameterDict()
        if config.meta_sgd:
            for name, param in self.initial_parameters().items():
                self.learning_rates[learning_rate_key(name)] = nn.Parameter(
                    torch.full_like(param.detach(), config.inner_lr)
                )

    def inner_learning_rates(self) -> Mapping[str, torch.Tensor | float] | float:
        if not self.config.meta_sgd:
            return super().inner_learning_rates()
        return {n: self.learning_rates[learning_rate_key(n)] for n in self.adapted_names()}

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Add the gradient of the mean post-adaptation query loss to ``.grad``.

        Gradients accumulate: the engine zeroes them (``optimizer.zero_grad``) before the
        call. Each task is backpropagated on its own, so only one inner-loop graph is held
        at a time. Metrics: ``loss`` (query, after adaptation) and ``support_loss``
        (before adaptation), each averaged over the tasks.
        """
        if not episodes:
            raise FewSegError("meta_gradients needs at least one episode")
        device = next(self.model.head.parameters()).device
        outer_losses, support_losses = [], []
        for task in episodes:
            task = task.to(device)
            support_loss = self.support_loss(task.support)  # encodes the support once
            with torch.no_grad():
                support_losses.append(support_loss(self.initial_parameters()))
            adapted = self.adapt_with(support_loss, first_order=self.config.first_order)
            query = task.query_image[None]
            logits = self.logits(adapted, self.inputs(query), query.shape[-2:])
            loss = foreground_bce(logits, task.query_mask[None], task.query_ignore[None])
            (loss / len(episodes)).backward()
            outer_losses.append(loss.detach())
        return {
            "loss": torch.stack(outer_losses).mean().item(),
            "support_loss": torch.stack(support_losses).mean().item(),
        }

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "learner": "fomaml" if self.config.first_order else "maml"}


LEARNERS.register(
    "maml",
    "MAML (Finn et al. 2017): S inner SGD steps on the support loss, outer loss on the query;"
    " second order",
)(MAML)


@LEARNERS.register("fomaml", "first-order MAML")
def build_fomaml(config: LearnerConfig) -> MAML:
    return MAML(replace(config, first_order=True))
