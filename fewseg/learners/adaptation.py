"""Shared base of the learners that adapt a segmenter by gradient descent on the support set
(``maml``, ``fomaml``, ``reptile``, ``finetune``), on either model:

- ``head``: a decoder head on the backbone's features (``Segmenter``);
- ``correlation``: the class-agnostic correlation model (fewseg.models.correlation), whose
  decoder head adapts; its support-only loss segments each shot from the other shots
  (leave-one-out, K > 1) or an augmented copy of the shot from the shot (K = 1).

The adapted parameters are the decoder head's alone when the encoder is frozen or the
``head_only`` (ANIL) option is on, and every trainable parameter otherwise. In the
head-only case the support features are computed once per episode and only the head runs
inside the inner loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.func import functional_call

from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner, Predictor, TrainableOptions, build_backbone
from fewseg.learners.correlation_tasks import (
    MODELS,
    CorrelationTasks,
    balanced_option,
    check_probe,
    correlation_tasks,
    prior_option,
    probe_option,
    shot_mean_option,
)
from fewseg.learners.inner_loop import LossFunction, Params, adapt_parameters
from fewseg.learners.losses import balanced_pixel_weights, weighted_bce
from fewseg.learners.masks import subsample_masks
from fewseg.models.correlation import CorrelationModel
from fewseg.models.encoder import Encoder
from fewseg.models.segmenter import Segmenter
from fewseg.models.upsample import bilinear_resize
from fewseg.options import option

HEAD_PREFIX = "head."


@dataclass
class GradientOptions(TrainableOptions):
    """Options of the learners that adapt by SGD steps on the support set."""

    hidden: int = option(64, "width of the decoder head (a multiple of 8)")
    inner_steps: int = option(5, "SGD steps on the support set when adapting")
    inner_lr: float = option(0.1, "learning rate of those steps")
    head_only: bool = option(
        False, "adapt the decoder head only (ANIL); always so with a frozen backbone"
    )
    loss_size: int = option(
        0, "side of the grid the pixel losses use, masks subsampled (0: the image size)"
    )
    model: str = option(
        "head",
        "what is adapted: head (a decoder head on backbone features) or correlation "
        "(the class-agnostic correlation model's decoder head)",
    )
    prior: bool = prior_option()
    balanced: bool = balanced_option()
    probe: str = probe_option()
    shot_mean: bool = shot_mean_option()

    def __post_init__(self) -> None:
        check_probe(self.probe)
        if self.model not in MODELS:
            raise FewSegError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.loss_size < 0:
            raise FewSegError(f"loss_size must be >= 0 (0: the image size), got {self.loss_size}")
        if self.inner_steps < 0:
            raise FewSegError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.hidden < 8 or self.hidden % 8:
            raise FewSegError(f"hidden must be a positive multiple of 8, got {self.hidden}")


class GradientAdaptedSegmenter(Learner):
    """A :class:`Segmenter` (or the correlation model) plus the machinery to adapt some of
    its parameters functionally."""

    options: GradientOptions
    # which part of the correlation model adapts: its decoder's head, or all the decoder
    correlation_adapts: ClassVar[str] = "head"

    def __init__(self, options: GradientOptions) -> None:
        super().__init__(options)
        self.model: Segmenter | CorrelationModel
        if options.model == "correlation":
            self.tasks: CorrelationTasks | None = correlation_tasks(options)
            self.model = self.tasks.model
        else:
            self.model = Segmenter(build_backbone(options), options.hidden)
            self.tasks = None

    @property
    def head_only(self) -> bool:
        """Only the decoder head adapts: ANIL, a frozen encoder, or the correlation model."""
        return self.options.head_only or self.model.encoder.frozen

    @property
    def encoder(self) -> Encoder | None:  # type: ignore[override]
        """The backbone when only the head adapts; otherwise adaptation changes it too."""
        return self.model.encoder if self.head_only else None

    def adapted_names(self) -> list[str]:
        return list(self.initial_parameters())

    def initial_parameters(self) -> Params:
        """The current (meta-learned) values of the adapted parameters, still attached."""
        if self.tasks is not None and self.correlation_adapts == "decoder":
            module, prefix = self.model.decoder, ""
        else:
            module = self.model.head if self.head_only else self.model
            prefix = HEAD_PREFIX if self.head_only else ""
        return {prefix + n: p for n, p in module.named_parameters() if p.requires_grad}

    def logits(
        self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Foreground logits [B,1,H,W] with ``params`` substituted.

        ``inputs`` are encoder features in head-only mode and images otherwise.
        """
        if self.tasks is not None:
            return self.tasks.logits(params, inputs, size)
        if self.head_only:
            head_params = {n.removeprefix(HEAD_PREFIX): p for n, p in params.items()}
            logits = functional_call(self.model.head, head_params, (inputs,))
            return bilinear_resize(logits, size)
        return functional_call(self.model, dict(params), (inputs,))

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What :meth:`logits` takes: the encoder's features in head-only mode, else images."""
        return self.model.encoder(images) if self.head_only else images

    def query_inputs(self, images: torch.Tensor, support: LabelledImages) -> Any:
        """What :meth:`logits` takes for query ``images`` of an episode with ``support``."""
        if self.tasks is not None:
            return self.tasks.inputs(images, support)
        return self.inputs(images)

    def query_loss(self, query: LabelledImages, support: LabelledImages) -> LossFunction:
        """params → the pixel loss of the query given the support set."""
        inputs = self.query_inputs(query.images, support)
        return self.pixel_loss(inputs, query.images.shape[-2:], query.masks, query.ignore)

    def pixel_loss(
        self,
        inputs: torch.Tensor,
        size: tuple[int, int] | torch.Size,
        masks: torch.Tensor,
        ignore: torch.Tensor,
    ) -> LossFunction:
        """params → the class-balanced BCE (``foreground_bce``) of the logits on ``inputs``
        (features or images) against masks of ``size``; the pixel weights are computed
        once, here. With ``loss_size`` set (and a frozen encoder) the logits are resized
        straight to that grid and the masks subsampled onto it. The correlation model's
        loss is at its decoder's own grid (stride 4)."""
        if self.tasks is not None:
            return self.tasks.loss_function(inputs, masks, ignore)
        if self.head_only and self.options.loss_size:
            size, masks, ignore = subsample_masks(masks, ignore, self.options.loss_size)
        target, weights = balanced_pixel_weights(masks, ignore, inputs.dtype)

        def loss(params: Params) -> torch.Tensor:
            return weighted_bce(self.logits(params, inputs, size), target, weights)

        return loss

    def support_loss(self, support: LabelledImages) -> LossFunction:
        """params → the loss the inner loop descends, from the support set alone."""
        if self.tasks is not None:
            losses = [
                self.pixel_loss(inputs, target.images.shape[-2:], target.masks, target.ignore)
                for inputs, target in self.tasks.support_examples(support)
            ]
            return lambda params: torch.stack([loss(params) for loss in losses]).mean()
        inputs = self.inputs(support.images)
        return self.pixel_loss(inputs, support.images.shape[-2:], support.masks, support.ignore)

    def inner_learning_rates(self) -> Mapping[str, torch.Tensor | float] | float:
        return self.options.inner_lr

    def adapt_with(
        self, loss: LossFunction, first_order: bool, losses: list[torch.Tensor] | None = None
    ) -> Params:
        """The adapted parameters after ``inner_steps`` SGD steps on ``loss`` (``losses``
        receives the loss before each step)."""
        return adapt_parameters(
            loss,
            self.initial_parameters(),
            self.inner_learning_rates(),
            self.options.inner_steps,
            first_order=first_order,
            losses=losses,
        )

    def adapt(self, support: LabelledImages) -> Predictor:
        """Test time: ``inner_steps`` SGD steps at ``inner_lr`` on the support loss."""
        with torch.no_grad():  # support features need no graph at test time
            loss = self.support_loss(support)
        with torch.enable_grad():
            adapted = {k: v.detach() for k, v in self.adapt_with(loss, first_order=True).items()}

        if self.tasks is not None:
            return self.tasks.predictor(support, adapted)

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            size = query_images.shape[-2:]
            return self.logits(adapted, self.inputs(query_images), size)

        return predict
