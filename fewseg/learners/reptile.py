"""``reptile``: first-order meta-learning by moving towards task-adapted weights.

Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999
(2018). For each task of a meta-batch the inner optimizer (SGD or Adam) takes
``inner_steps`` steps from the current weights θ on all of the task's labelled images,
giving θ'_i; the outer step is θ ← θ + ε (mean_i θ'_i − θ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.adaptation import GradientAdaptedSegmenter, GradientOptions
from fewseg.learners.base import Predictor, register_learner
from fewseg.learners.inner_loop import LossFunction, Params
from fewseg.options import option

INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class ReptileOptions(GradientOptions):
    reptile_optimizer: str = option("sgd", "the inner optimizer: sgd or adam")
    reptile_epsilon: float = option(0.5, "outer step size: θ ← θ + ε (mean θ' − θ)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reptile_optimizer not in INNER_OPTIMIZERS:
            raise FewSegError(
                f"reptile_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, "
                f"got {self.reptile_optimizer!r}"
            )


@register_learner(
    "reptile", "Reptile (Nichol et al. 2018): move towards SGD/Adam-adapted weights, first order"
)
class Reptile(GradientAdaptedSegmenter):
    """Reptile on the adapted parameters (the head alone under ``head_only``/frozen encoder).

    ``meta_gradients`` leaves ``θ − mean_i θ'_i`` in ``.grad`` — an average over tasks, so
    averaging it over processes averages over the global meta-batch — and
    :meth:`make_optimizer` is plain SGD with learning rate ε, whose step is exactly the
    Reptile update. Parameters that are not adapted receive no update.
    """

    Options = ReptileOptions
    options: ReptileOptions
    correlation_adapts = "decoder"  # what Reptile moves is what the inner loop adapts

    def outer_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.initial_parameters().values())

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.outer_parameters(), lr=self.options.reptile_epsilon)

    def task_loss(self, examples: LabelledImages) -> LossFunction:
        """Mean foreground BCE of ``examples`` as a function of the adapted parameters
        (head model: every labelled image of a task; the correlation model needs a
        support set: :meth:`episode_loss`)."""
        if self.tasks is not None:
            return self.support_loss(examples)
        with torch.no_grad():  # the encoder is not adapted in head-only mode: constant features
            inputs = self.inputs(examples.images)
        return self.pixel_loss(inputs, examples.images.shape[-2:], examples.masks, examples.ignore)

    def episode_loss(self, episode: EpisodeTensors) -> LossFunction:
        """The loss of a training task: the head model's on all its labelled images, the
        correlation model's on its query given its support set."""
        if self.tasks is not None:
            return self.query_loss(episode.query, episode.support)
        return self.task_loss(episode.labelled_images())

    def inner_optimize(self, loss: LossFunction, start: Params) -> tuple[Params, torch.Tensor]:
        """``inner_steps`` steps of the inner optimizer (fresh state) on detached copies of
        ``start``; returns the adapted parameters and the loss at ``start``."""
        params = {n: p.detach().clone().requires_grad_(True) for n, p in start.items()}
        leaves = list(params.values())
        lr = self.options.inner_lr
        optimizer = (
            torch.optim.Adam(leaves, lr=lr)
            if self.options.reptile_optimizer == "adam"
            else torch.optim.SGD(leaves, lr=lr)
        )
        initial_loss: torch.Tensor | None = None
        with torch.enable_grad():
            for _ in range(self.options.inner_steps):
                value = loss(params)
                for leaf, g in zip(leaves, torch.autograd.grad(value, leaves), strict=True):
                    leaf.grad = g
                optimizer.step()
                if initial_loss is None:
                    initial_loss = value.detach()
        if initial_loss is None:
            with torch.no_grad():
                initial_loss = loss(params)
        return {n: p.detach() for n, p in params.items()}, initial_loss

    def meta_gradients(self, episodes: Sequence[EpisodeTensors]) -> dict[str, float]:
        """Add ``θ − mean_i θ'_i`` to ``.grad`` of the adapted parameters (the engine zeroes
        them first). Metrics: each task's loss on all its images before (``loss``) and after
        (``adapted_loss``) the inner loop, averaged over the tasks."""
        if not episodes:
            raise FewSegError("reptile: empty meta-batch")
        theta = {n: p.detach() for n, p in self.initial_parameters().items()}
        displacement = {n: torch.zeros_like(p) for n, p in theta.items()}  # Σ_i (θ − θ'_i)
        device = next(iter(theta.values())).device
        losses, adapted_losses = [], []
        for episode in episodes:
            loss = self.episode_loss(episode.to(device))
            adapted, initial_loss = self.inner_optimize(loss, theta)
            with torch.no_grad():
                adapted_losses.append(loss(adapted))
            losses.append(initial_loss)
            for n, total in displacement.items():
                total += theta[n] - adapted[n]
        for n, p in self.initial_parameters().items():
            gradient = displacement[n] / len(episodes)
            if p.grad is None:
                p.grad = gradient
            else:
                p.grad += gradient
        return {
            "loss": torch.stack(losses).mean().item(),
            "adapted_loss": torch.stack(adapted_losses).mean().item(),
        }

    def adapt(self, support: LabelledImages) -> Predictor:
        """Test time: the training inner optimizer, ``inner_steps`` steps on the support set
        (SGD through the shared functional loop; Adam with fresh state)."""
        if self.options.reptile_optimizer == "sgd":
            return super().adapt(support)
        adapted, _ = self.inner_optimize(self.task_loss(support), self.initial_parameters())

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            size = query_images.shape[-2:]
            return self.logits(adapted, self.inputs(query_images), size)

        return predict
