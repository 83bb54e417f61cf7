"""Shared base of the learners that adapt a segmenter by gradient descent on the support set
(``maml``, ``fomaml``, ``reptile``, ``finetune``).

The adapted parameters are the decoder head's alone when the encoder is frozen or the
``head_only`` (ANIL) option is on, and every trainable parameter otherwise. In the
head-only case the support features are computed once per episode and only the head runs
inside the inner loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call

from fewseg.episodes.tensors import SupportSet
from fewseg.learners.base import Learner, Predictor, build_backbone
from fewseg.learners.config import LearnerConfig
from fewseg.learners.inner_loop import LossFunction, Params, adapt_parameters
from fewseg.learners.losses import balanced_pixel_weights, weighted_bce
from fewseg.models.feature_cache import FeatureCache, encode
from fewseg.models.segmenter import Segmenter
from fewseg.models.upsample import bilinear_resize

HEAD_PREFIX = "head."


def nearest_indices(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """The input pixel whose centre is nearest each output pixel's centre."""
    centres = (
        (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * size_in / size_out
    )
    return centres.floor().long().clamp_max(size_in - 1)


def subsample_masks(
    masks: torch.Tensor, ignore: torch.Tensor, side: int
) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
    """Masks and ignore [..., H, W] on a grid whose longer side is ``side`` (nearest
    pixel; unchanged when already that small): the new (h, w), masks, ignore."""
    height, width = masks.shape[-2:]
    if max(height, width) <= side:
        return (height, width), masks, ignore
    scale = side / max(height, width)
    new = (max(1, round(height * scale)), max(1, round(width * scale)))
    rows = nearest_indices(height, new[0], masks.device)
    columns = nearest_indices(width, new[1], masks.device)

    def grid(x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-2, rows).index_select(-1, columns)

    return new, grid(masks), grid(ignore)


class GradientAdaptedSegmenter(Learner):
    """A :class:`Segmenter` plus the machinery to adapt some of its parameters functionally."""

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.model = Segmenter(build_backbone(config), config.hidden)
        self.feature_cache = FeatureCache(self.model.encoder)

    @property
    def head_only(self) -> bool:
        return self.config.head_only or self.model.encoder.frozen

    def adapted_names(self) -> list[str]:
        return list(self.initial_parameters())

    def initial_parameters(self) -> Params:
        """The current (meta-learned) values of the adapted parameters, still attached."""
        module = self.model.head if self.head_only else self.model
        prefix = HEAD_PREFIX if self.head_only else ""
        return {prefix + n: p for n, p in module.named_parameters() if p.requires_grad}

    def encode(
        self, images: torch.Tensor | Sequence[torch.Tensor], **frozen_options: Any
    ) -> torch.Tensor:
        return encode(self.model.encoder, self.feature_cache, images, **frozen_options)

    def logits(
        self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Foreground logits [B,1,H,W] with ``params`` substituted.

        ``inputs`` are encoder features in head-only mode and images otherwise.
        """
        if self.head_only:
            head_params = {n.removeprefix(HEAD_PREFIX): p for n, p in params.items()}
            logits = functional_call(self.model.head, head_params, (inputs,))
            return bilinear_resize(logits, size)
        return functional_call(self.model, dict(params), (inputs,))

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images) if self.head_only else images

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
        straight to that grid and the masks subsampled onto it."""
        if self.head_only and self.config.loss_size:
            size, masks, ignore = subsample_masks(masks, ignore, self.config.loss_size)
        target, weights = balanced_pixel_weights(masks, ignore, inputs.dtype)

        def loss(params: Params) -> torch.Tensor:
            return weighted_bce(self.logits(params, inputs, size), target, weights)

        return loss

    def support_loss(self, support: SupportSet) -> LossFunction:
        inputs = self.inputs(support.images)
        return self.pixel_loss(inputs, support.images.shape[-2:], support.masks, support.ignore)

    def inner_learning_rates(self) -> Mapping[str, torch.Tensor | float] | float:
        return self.config.inner_lr

    def adapt_to(self, support: SupportSet, first_order: bool) -> Params:
        return self.adapt_with(self.support_loss(support), first_order)

    def adapt_with(
        self, loss: LossFunction, first_order: bool, losses: list[torch.Tensor] | None = None
    ) -> Params:
        """The adapted parameters after ``inner_steps`` SGD steps on ``loss`` (``losses``
        receives the loss before each step)."""
        return adapt_parameters(
            loss,
            self.initial_parameters(),
            self.inner_learning_rates(),
            self.config.inner_steps,
            first_order=first_order,
            losses=losses,
        )

    def adapt(self, support: SupportSet) -> Predictor:
        """Test time: ``inner_steps`` SGD steps at ``inner_lr`` on the support loss."""
        with torch.no_grad():  # support features need no graph at test time
            loss = self.support_loss(support)
        with torch.enable_grad():
            adapted = {k: v.detach() for k, v in self.adapt_with(loss, first_order=True).items()}

        @torch.no_grad()
        def predict(query_images: torch.Tensor) -> torch.Tensor:
            size = query_images.shape[-2:]
            return self.logits(adapted, self.inputs(query_images), size)

        return predict
