"""Encoder → light decoder head → one foreground logit map at the input resolution."""

from __future__ import annotations

import torch
from torch import nn

from fewseg.errors import FewSegError
from fewseg.models.backbones import Backbone
from fewseg.models.upsample import bilinear_resize


class ForegroundHead(nn.Module):
    """conv1x1 → GroupNorm → ReLU → conv3x3 → GroupNorm → ReLU → conv1x1 to one logit.

    The first layer only mixes channels: from MobileNetV2's 416 channels a 3x3 there would
    cost 9x the multiply-adds, and every inner-loop step pays for them (docs/performance.md).
    """

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.GroupNorm(8, hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GroupNorm(8, hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class Segmenter(nn.Module):
    """``forward(images)`` → foreground logits [B,1,H,W]; ``head_logits`` works on features."""

    def __init__(self, encoder: Backbone, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ForegroundHead(encoder.out_channels, hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(images))
        return bilinear_resize(logits, images.shape[-2:])


def foreground_logit(logits: torch.Tensor) -> torch.Tensor:
    """A predictor's output → the foreground's log-odds [B,H,W]: from foreground logits
    [B,1,H,W] (against a background logit of 0) as they are, from (background, foreground)
    logits [B,2,H,W] their difference."""
    if logits.dim() != 4 or logits.shape[1] not in (1, 2):
        raise FewSegError(
            f"a predictor returned logits of shape {tuple(logits.shape)}; expected "
            "[B,1,H,W] foreground or [B,2,H,W] (background, foreground) logits"
        )
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
