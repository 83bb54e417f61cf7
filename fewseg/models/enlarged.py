"""An encoder that reads its images enlarged: the same backbone, finer feature cells.

A stride-16 backbone gives a 400x400 image 25x25 cells, too coarse for COCO's many small
objects; read at 1.4 times the size the same backbone gives 35x35 (README, issue #17:
the support-fitted probe gains 2.4 and 3.4 mIoU at 5 shots on coco-mini folds 0 and 1).
The engine's feature store answers for the images as given, so every image is still
enlarged and encoded once.
"""

from __future__ import annotations

import torch

from fewseg.models.encoder import Encoder, Features
from fewseg.models.upsample import bilinear_resize


class EnlargedInput(Encoder):
    """``inner`` applied to the images enlarged ``factor`` times (bilinear); its features
    as they come (``stride`` is the inner encoder's, on the enlarged image)."""

    def __init__(self, inner: Encoder, factor: float) -> None:
        super().__init__(frozen=inner.frozen)
        self.inner = inner
        self.factor = factor
        self.out_channels = inner.out_channels
        self.stride = inner.stride

    def freeze(self) -> None:
        self.inner.freeze()
        super().freeze()

    def forward(self, images: torch.Tensor) -> Features:
        height, width = images.shape[-2:]
        size = (round(height * self.factor), round(width * self.factor))
        return self.inner(bilinear_resize(images, size))
