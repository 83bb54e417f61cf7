"""Encoder → light decoder head → one foreground logit map at the input resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewseg.models.backbones import Backbone


class ForegroundHead(nn.Module):
    """conv3x3 → GroupNorm → ReLU → conv3x3 → GroupNorm → ReLU → conv1x1 to one logit."""

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
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
        return F.interpolate(logits, images.shape[-2:], mode="bilinear")


def two_class_logits(foreground: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] foreground logit → [B,2,H,W] (background 0, foreground logit)."""
    return torch.cat([torch.zeros_like(foreground), foreground], dim=1)
