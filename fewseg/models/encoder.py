"""The encoder: the part of a learner that maps each image alone to features.

What an encoder computes for an image does not depend on the support set, so while the
encoder's weights stay as they are (a frozen backbone; any learner's encoder during one
evaluation) the engine may answer its calls from features computed before: it attaches a
*feature store* (fewseg.engine.features), and the encoder hands each call to it. A learner
only calls its encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from fewseg.models.upsample import bilinear_resize

Features = torch.Tensor | tuple[torch.Tensor, ...]
"""An encoder's output for images [B,3,H,W]: a feature map [B,C,h,w], or several (a
feature pyramid), each with the batch first."""

HALF_DTYPES = (torch.bfloat16, torch.float16)


def full_precision(features: Features) -> Features:
    """Features computed under autocast (``--precision bf16|fp16``) as float32: the
    learners' heads may run inside ``torch.func.vmap``, which autocast does not reach (on
    the CPU at least), where half-precision features would meet float32 weights; and every
    path (stored features or not) then gives the head the same input."""
    if isinstance(features, torch.Tensor):
        return features.float() if features.dtype in HALF_DTYPES else features
    return tuple(full_precision(part) for part in features)


class FeatureStore(Protocol):
    def features(self, encoder: Encoder, images: torch.Tensor) -> Features: ...


class Encoder(nn.Module):
    """Base class: ``forward(images) -> features``, ``out_channels``, ``stride``, ``frozen``.

    A frozen encoder's weights never change: it runs without gradients and stays in eval
    mode whatever mode its parent is put in, so BatchNorm running statistics never change.

    ``enlarge`` > 1: the encoder reads its images enlarged that many times (bilinear), for
    finer feature cells (``stride`` stays that of the enlarged image). It happens inside
    :meth:`compute`, so a feature store still answers for the images as given.

    ``output``: a fixed function of the network's features (no weights of its own), also
    applied inside :meth:`compute`, so that a feature store keeps its result and a learner
    that reads its features through it does not recompute it in every episode.
    """

    out_channels: int
    stride: int
    enlarge: float = 1.0
    output: Callable[[Features], Features] | None = None

    def __init__(self, frozen: bool) -> None:
        super().__init__()
        self.frozen = frozen
        self._feature_store: FeatureStore | None = None
        # counts the replacements of its weights (a load, a cast, a move)
        self.weights_version = 0
        self.register_load_state_dict_post_hook(lambda module, _: module._weights_replaced())

    def _weights_replaced(self) -> None:
        self.weights_version += 1

    def _apply(self, fn: Any, recurse: bool = True) -> Encoder:
        """.to(), .double(), .cuda(): the weights are replaced unless they stay where and
        as they were (``.to`` the device they are on)."""
        before = self._weight_addresses()
        result = super()._apply(fn, recurse)
        if self._weight_addresses() != before:
            self._weights_replaced()
        return result

    def _weight_addresses(self) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.parameters(), *self.buffers()))

    def freeze(self) -> None:
        self.frozen = True
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Encoder:
        """A frozen encoder stays in eval mode; a trainable one keeps its BatchNorm layers in
        eval mode (running statistics are never updated, in inner loops or elsewhere)."""
        super().train(mode and not self.frozen)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def attach(self, store: FeatureStore | None) -> FeatureStore | None:
        """Hand this encoder's calls to ``store`` (None: compute them); returns the store
        attached before."""
        previous, self._feature_store = self._feature_store, store
        return previous

    def __call__(self, images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self._feature_store is not None:
            return self._feature_store.features(self, images)
        return self.compute(images)

    def compute(self, images: torch.Tensor) -> Any:
        """The features, computed (what a feature store calls for what it lacks); float32
        even when computed under autocast (:func:`full_precision`)."""
        if self.enlarge != 1:
            height, width = images.shape[-2:]
            size = (round(height * self.enlarge), round(width * self.enlarge))
            images = bilinear_resize(images, size)
        if self.frozen:
            with torch.no_grad():
                features = full_precision(super().__call__(images))
        else:
            features = full_precision(super().__call__(images))
        return features if self.output is None else self.output(features)

    def __getstate__(self) -> dict[str, Any]:  # a copy or a pickle has no store attached
        state = super().__getstate__()  # type: ignore[misc]
        return {**state, "_feature_store": None}
