"""Feature extractors, registered by name.

A backbone is an :class:`~fewseg.models.encoder.Encoder`: it maps normalised images
[B,3,H,W] to a feature map [B,C,h,w] and states its ``out_channels`` and ``stride``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from fewseg.errors import FewSegError
from fewseg.models.batchnorm_folding import FoldedInference
from fewseg.models.encoder import Encoder
from fewseg.registry import Registry

BackboneFactory = Callable[..., "Backbone"]
BACKBONES: Registry[BackboneFactory] = Registry("backbone")


class Backbone(Encoder):
    """An image encoder with a name in :data:`BACKBONES` and (for most) pretrained weights."""


def pretrained_weights_file(weights: MobileNet_V2_Weights) -> Path:
    """Where torchvision's weights API looks for ``weights`` before it would download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FewSegError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle refused, truncated file …
        raise FewSegError(f"{path}: cannot load weights ({type(exc).__name__})") from None


def channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last)


class TappedBackbone(Backbone):
    """A pretrained network as a sequence of blocks, tapped at some of them.

    ``taps`` are block indices; the features are the tapped blocks' outputs, upsampled to
    the first tap's resolution and concatenated, or with ``pyramid`` each as it is (a
    tuple, finest first). Subclasses give ``blocks`` (an ``nn.Sequential``), ``STRIDES``
    (each block's output stride), ``PER_IMAGE_BLOCKS`` (the blocks whose input stride is
    below 8) and, where their weights expect another input normalisation than fewseg's
    ImageNet mean and standard deviation, :meth:`prepare`.
    """

    STRIDES: tuple[int, ...]
    PER_IMAGE_BLOCKS: int
    # four 96×96 images at once take 10% less time than one at a time and 2.5× the memory
    EARLY_BATCH_PIXELS = 4 * 96 * 96
    name: str

    def __init__(
        self,
        blocks: nn.Sequential,
        taps: Sequence[int],
        frozen: bool,
        weights_source: str,
        pyramid: bool = False,
    ) -> None:
        super().__init__(frozen)
        taps = tuple(taps)
        if (
            not taps
            or sorted(set(taps)) != list(taps)
            or not 0 <= taps[0] <= taps[-1] < len(self.STRIDES)
        ):
            raise FewSegError(
                f"{self.name} taps must be increasing indices 0..{len(self.STRIDES) - 1}, "
                f"got {taps}"
            )
        self.taps = taps
        self.pyramid = pyramid
        # channels-last convolutions are about 1.5x faster on CPU (docs/performance.md)
        self.blocks = blocks[: taps[-1] + 1].to(memory_format=torch.channels_last)
        self.tap_channels = tuple(block_channels(self.blocks[t]) for t in taps)
        self.tap_strides = tuple(self.STRIDES[t] for t in taps)
        self.out_channels = sum(self.tap_channels)
        self.stride = self.tap_strides[0]
        self.weights_source = weights_source
        # frozen: the blocks run with BatchNorm folded into the convolutions
        self._inference = FoldedInference()
        self.register_load_state_dict_post_hook(lambda module, _: module._inference.invalidate())
        if frozen:
            self.freeze()

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> TappedBackbone:
        self._inference.invalidate()  # .to(), .double(), .cuda() replace the weights
        return super()._apply(fn, recurse)

    def freeze(self) -> None:
        super().freeze()
        self._inference.invalidate()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images normalised as fewseg normalises them → as the weights expect them."""
        return images

    def _run(self, x: torch.Tensor, blocks: range, outputs: list[torch.Tensor]) -> torch.Tensor:
        network = self._inference.of(self.blocks) if self.frozen else self.blocks
        for i in blocks:
            x = network[i](x)
            if i in self.taps:
                outputs.append(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Without autograd, the high-resolution blocks (input stride < 8) take images in
        groups of up to ``EARLY_BATCH_PIXELS`` pixels (four 96×96 images; one at a time from
        192×192 up: at 400×400 a group is slower than one image at a time) and the rest the
        whole batch: the peak memory of a batch is then about that of one group in the early
        blocks, which dominate it, plus the batch's small stride-8 maps. The features are
        bitwise those of one batched pass on CPU (tests/test_backbones.py)."""
        images = self.prepare(images)
        split = min(self.PER_IMAGE_BLOCKS, len(self.blocks))
        outputs: list[torch.Tensor] = []
        if len(images) > 1 and not torch.is_grad_enabled():
            group = max(1, self.EARLY_BATCH_PIXELS // (images.shape[-2] * images.shape[-1]))
            groups = images.split(group)
            per_group = [[] for _ in groups]  # tap outputs among the early blocks
            x = torch.cat(
                [
                    self._run(channels_last(g), range(split), taps)
                    for g, taps in zip(groups, per_group, strict=True)
                ]
            )
            outputs = [torch.cat(maps) for maps in zip(*per_group, strict=True)]
        else:
            x = self._run(channels_last(images), range(split), outputs)
        self._run(x, range(split, len(self.blocks)), outputs)
        if self.pyramid:
            return tuple(o.contiguous() for o in outputs)
        size = outputs[0].shape[-2:]
        resized = [
            o if o.shape[-2:] == size else F.interpolate(o, size, mode="bilinear") for o in outputs
        ]
        return torch.cat(resized, dim=1).contiguous()


def block_channels(block: nn.Module) -> int:
    """The output channels of a block: those of its last convolution."""
    if hasattr(block, "out_channels"):
        return int(block.out_channels)
    convolutions = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convolutions[-1].out_channels


def load_network_weights(network: nn.Module, weights_path: str | Path, what: str) -> None:
    try:
        network.load_state_dict(load_state_dict_file(weights_path))
    except RuntimeError:
        raise FewSegError(f"{weights_path}: not {what} weights") from None


class MobileNetV2Features(TappedBackbone):
    """MobileNetV2 (torchvision, ImageNet weights); ``taps`` index ``mobilenet_v2().features``.
    The default (13, 17) joins the stride-16 (96 ch) and stride-32 (320 ch) blocks at
    stride 16. Its weights take ImageNet mean/std-normalised images, as fewseg makes them."""

    name = "mobilenet_v2"
    STRIDES = (2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)
    PER_IMAGE_BLOCKS = 5  # blocks 0-4: their inputs are at stride 2 or 4

    def __init__(
        self,
        pretrained: bool = True,
        weights_path: str | None = None,
        taps: Sequence[int] = (13, 17),
        frozen: bool = True,
        pyramid: bool = False,
    ) -> None:
        network = mobilenet_v2()
        if weights_path is not None:
            load_network_weights(network, weights_path, "MobileNetV2")
        elif pretrained:
            weights = MobileNet_V2_Weights.IMAGENET1K_V1
            if not pretrained_weights_file(weights).is_file():
                raise FewSegError(
                    f"ImageNet MobileNetV2 weights not found at {pretrained_weights_file(weights)}"
                    " (run `make install`, or pass a local weights file)"
                )
            network.load_state_dict(weights.get_state_dict(progress=False))
        source = weights_path or ("imagenet" if pretrained else "random")
        super().__init__(network.features, taps, frozen, source, pyramid)


@BACKBONES.register(
    "mobilenet_v2", "MobileNetV2 with ImageNet weights (torchvision), frozen, stride-16 features"
)
def build_mobilenet_v2(
    pretrained: bool = True, weights_path: str | None = None, frozen: bool = True
) -> Backbone:
    return MobileNetV2Features(pretrained=pretrained, weights_path=weights_path, frozen=frozen)


@BACKBONES.register(
    "mobilenet_v2_s8",
    "MobileNetV2 with ImageNet weights, frozen, stride-8 features (blocks 6 + 13) for small images",
)
def build_mobilenet_v2_s8(
    pretrained: bool = True, weights_path: str | None = None, frozen: bool = True
) -> Backbone:
    return MobileNetV2Features(
        pretrained=pretrained, weights_path=weights_path, taps=(6, 13), frozen=frozen
    )
