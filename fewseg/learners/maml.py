"""``maml`` and ``fomaml``: meta-learn an initialisation that a few SGD steps on the
support set turn into a good segmenter of the query (Finn et al. 2017).

``fomaml`` drops the inner loop's second derivatives (first-order MAML). Options:
``head_only`` adapts only the decoder head (ANIL, Raghu et al. 2020); ``meta_sgd``
meta-learns one inner learning rate per parameter element (Meta-SGD, Li et al. 2017).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import vmap

from fewseg.episodes.image_keys import cat_images
from fewseg.episodes.tensors import EpisodeTensors
from fewseg.errors import FewSegError
from fewseg.learners.adaptation import GradientAdaptedSegmenter, GradientOptions
from fewseg.learners.base import register_learner
from fewseg.options import option


def learning_rate_key(name: str) -> str:
    """A parameter name as a :class:`nn.ParameterDict` key (keys cannot contain '.')."""
    return name.replace(".", "__")


@dataclass
class MAMLOptions(GradientOptions):
    meta_sgd: bool = option(False, "meta-learn one inner learning rate per parameter (Meta-SGD)")
    batch_tasks: bool = option(
        True, "frozen encoder: adapt a meta-batch's same-shape tasks together (vmap)"
    )
    outer_lr: float = option(1e-3, "learning rate of the meta-training optimizer (Adam)")


def meta_batch_images(tasks: Sequence[EpisodeTensors]) -> torch.Tensor:
    """The support images of every task, then every query image, in one batch."""
    return cat_images([t.support.images for t in tasks] + [t.query.images for t in tasks])


@register_learner(
    "maml",
    "MAML (Finn et al. 2017): S inner SGD steps on the support loss, outer loss on the query;"
    " second order",
)
class MAML(GradientAdaptedSegmenter):
    """MAML (Finn et al. 2017): ``inner_steps`` SGD steps on the support loss, outer loss
    on the query, differentiated through the inner loop (second order; first order in
    ``fomaml``). With ``meta_sgd`` the inner learning rates are outer parameters,
    initialised to ``inner_lr`` and used at test time as well (Li et al. 2017).
    """

    Options = MAMLOptions
    options: MAMLOptions
    first_order: ClassVar[bool] = False

    def __init__(self, options: MAMLOptions) -> None:
        super().__init__(options)
        self.learning_rates = nn.ParameterDict()
        if options.meta_sgd:
            for name, param in self.initial_parameters().items():
                self.learning_rates[learning_rate_key(name)] = nn.Parameter(
                    torch.full_like(param.detach(), options.inner_lr)
                )

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.outer_parameters(), lr=self.options.outer_lr)

    def inner_learning_rates(self) -> Mapping[str, torch.Tensor | float] | float:
        if not self.options.meta_sgd:
            return super().inner_learning_rates()
        return {n: self.learning_rates[learning_rate_key(n)] for n in self.adapted_names()}

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Add the gradient of the mean post-adaptation query loss to ``.grad``.

        Gradients accumulate: the engine zeroes them (``optimizer.zero_grad``) before the
        call. With a frozen encoder (and ``batch_tasks``, the default), the tasks that
        share a shape are adapted together: all their images go through the encoder in
        one batch and the inner loops run under ``torch.func.vmap``, one backward pass per
        group: faster, but every task's graph is held at once. Otherwise each task is
        backpropagated on its own, so only one inner-loop graph is held at a time (a
        frozen encoder still takes the images of ``TASKS_PER_ENCODER_BATCH`` tasks per
        batch, before any adaptation).
        Metrics: ``loss`` (query, after adaptation) and ``support_loss`` (before
        adaptation), each averaged over the tasks.
        """
        if not episodes:
            raise FewSegError("meta_gradients needs at least one episode")
        device = next(self.model.head.parameters()).device
        tasks = [task.to(device) for task in episodes]
        batched = self.options.batch_tasks and self.tasks is None and self.model.encoder.frozen
        if batched and self.options.inner_steps > 0:
            groups: dict[tuple[Any, ...], list[EpisodeTensors]] = {}
            for task in tasks:
                shape = (task.support.images.shape, task.query.images.shape)
                groups.setdefault(shape, []).append(task)
            losses = [self._group_meta_gradients(g, len(tasks)) for g in groups.values()]
        else:
            losses = [self._task_meta_gradients(task, len(tasks)) for task in tasks]
        outer, support = (torch.cat(values) for values in zip(*losses, strict=True))
        return {"loss": outer.mean().item(), "support_loss": support.mean().item()}

    def _task_meta_gradients(
        self, task: EpisodeTensors, n_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        support_loss = self.support_loss(task.support)  # encodes the support once
        inner_losses: list[torch.Tensor] = []
        adapted = self.adapt_with(support_loss, self.first_order, inner_losses)
        if inner_losses:
            before = inner_losses[0]
        else:  # no inner steps: the support loss is measured for the metric alone
            with torch.no_grad():
                before = support_loss(self.initial_parameters())
        loss = self.query_loss(task.query, task.support)(adapted)
        (loss / n_tasks).backward()
        return loss.detach()[None], before[None]

    def _group_meta_gradients(
        self, group: list[EpisodeTensors], n_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tasks of one shape, adapted in one vmapped call; returns their losses."""
        shots = group[0].support.shots
        features = self.model.encoder(meta_batch_images(group))
        support_features = features[: len(group) * shots].unflatten(0, (len(group), shots))
        query_features = features[len(group) * shots :]
        size = group[0].query.images.shape[-2:]

        def task_losses(
            features: torch.Tensor,
            masks: torch.Tensor,
            ignore: torch.Tensor,
            query: torch.Tensor,
            query_mask: torch.Tensor,
            query_ignore: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            inner: list[torch.Tensor] = []
            support_loss = self.pixel_loss(features, size, masks, ignore)
            adapted = self.adapt_with(support_loss, self.first_order, inner)
            query_loss = self.pixel_loss(query[None], size, query_mask[None], query_ignore[None])
            return query_loss(adapted), inner[0]

        outer, before = vmap(task_losses)(
            support_features,
            torch.stack([t.support.masks for t in group]),
            torch.stack([t.support.ignore for t in group]),
            query_features,
            torch.cat([t.query.masks for t in group]),
            torch.cat([t.query.ignore for t in group]),
        )
        (outer.sum() / n_tasks).backward()
        return outer.detach(), before


@register_learner("fomaml", "first-order MAML: the inner loop's second derivatives dropped")
class FOMAML(MAML):
    first_order = True
