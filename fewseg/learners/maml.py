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
from torch.func import vmap

from fewseg.episodes.tensors import EpisodeTensors
from fewseg.errors import FewSegError
from fewseg.learners.adaptation import GradientAdaptedSegmenter
from fewseg.learners.base import LEARNERS
from fewseg.learners.config import LearnerConfig


def learning_rate_key(name: str) -> str:
    """A parameter name as a :class:`nn.ParameterDict` key (keys cannot contain '.')."""
    return name.replace(".", "__")


TASKS_PER_ENCODER_BATCH = 2
"""One task at a time (``batch_tasks`` off), a frozen encoder still takes the images of
this many tasks per batch: most of batching's speed, a bounded working memory."""


EARLY_BATCH_PIXELS = 4 * 96 * 96
"""Tasks adapted together (the speed mode) let up to this many pixels of images through
a frozen MobileNetV2's high-resolution blocks at once: four 96×96 images, one 400×400."""


def meta_batch_images(tasks: Sequence[EpisodeTensors]) -> list[torch.Tensor]:
    """The support images of every task, then every query image: the episodes' own
    tensors, not a stacked copy (the feature cache keeps them by reference)."""
    return [image for t in tasks for image in t.support.images] + [t.query_image for t in tasks]


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
        if self.config.batch_tasks and self.model.encoder.frozen and self.config.inner_steps > 0:
            groups: dict[tuple[Any, ...], list[EpisodeTensors]] = {}
            for task in tasks:
                shape = (task.support.images.shape, task.query_image.shape)
                groups.setdefault(shape, []).append(task)
            losses = [self._group_meta_gradients(g, len(tasks)) for g in groups.values()]
        else:
            for start in range(0, len(tasks), TASKS_PER_ENCODER_BATCH):  # if frozen
                self.cache_features(
                    meta_batch_images(tasks[start : start + TASKS_PER_ENCODER_BATCH])
                )
            losses = [self._task_meta_gradients(task, len(tasks)) for task in tasks]
        outer, support = (torch.cat(values) for values in zip(*losses, strict=True))
        return {"loss": outer.mean().item(), "support_loss": support.mean().item()}

    def _task_meta_gradients(
        self, task: EpisodeTensors, n_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        support_loss = self.support_loss(task.support)  # encodes the support once
        inner_losses: list[torch.Tensor] = []
        adapted = self.adapt_with(support_loss, self.config.first_order, inner_losses)
        if inner_losses:
            before = inner_losses[0]
        else:  # no inner steps: the support loss is measured for the metric alone
            with torch.no_grad():
                before = support_loss(self.initial_parameters())
        query = task.query_image[None]
        query_loss = self.pixel_loss(
            self.inputs(query), query.shape[-2:], task.query_mask[None], task.query_ignore[None]
        )
        loss = query_loss(adapted)
        (loss / n_tasks).backward()
        return loss.detach()[None], before[None]

    def _group_meta_gradients(
        self, group: list[EpisodeTensors], n_tasks: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tasks of one shape, adapted in one vmapped call; returns their losses."""
        shots = group[0].support.shots
        features = self.encode(meta_batch_images(group), early_batch_pixels=EARLY_BATCH_PIXELS)
        support_features = features[: len(group) * shots].unflatten(0, (len(group), shots))
        query_features = features[len(group) * shots :]
        size = group[0].query_image.shape[-2:]

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
            adapted = self.adapt_with(support_loss, self.config.first_order, inner)
            query_loss = self.pixel_loss(query[None], size, query_mask[None], query_ignore[None])
            return query_loss(adapted), inner[0]

        outer, before = vmap(task_losses)(
            support_features,
            torch.stack([t.support.masks for t in group]),
            torch.stack([t.support.ignore for t in group]),
            query_features,
            torch.stack([t.query_mask for t in group]),
            torch.stack([t.query_ignore for t in group]),
        )
        (outer.sum() / n_tasks).backward()
        return outer.detach(), before

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
