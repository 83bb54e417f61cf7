"""A small convolutional encoder for training from scratch (the ``synthetic`` demo)."""

from __future__ import annotations

import torch
from torch import nn

from fewseg.models.backbones import BACKBONES, Backbone


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvEncoder(Backbone):
    """Four conv-GroupNorm-ReLU blocks, the first three followed by 2x max-pooling.

    GroupNorm keeps no running statistics, so nothing changes inside an inner loop but the
    parameters the loop adapts.
    """

    stride = 8

    def __init__(self, width: int = 48, frozen: bool = False) -> None:
        super().__init__(frozen)
        self.blocks = nn.Sequential(
            conv_block(3, width // 2, pool=True),
            conv_block(width // 2, width, pool=True),
            conv_block(width, width, pool=True),
            conv_block(width, width, pool=False),
        )
        self.out_channels = width
        self.weights_source = "random"
        if frozen:
            self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images)


@BACKBONES.register("convnet", "small 4-block conv encoder (GroupNorm), stride 8, from scratch")
def build_convnet(
    pretrained: bool = False, weights_path: str | None = None, frozen: bool = False
) -> Backbone:
    del pretrained, weights_path, frozen  # always trained from scratch; uniform signature
    return ConvEncoder()
