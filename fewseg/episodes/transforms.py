"""Image/mask preprocessing: joint resize and augmentation, ImageNet normalisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2 import query_size

from fewseg.data.source import ClassSample
from fewseg.refinement.options import RESIZE_MODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_LABEL = 255


# How an image reaches the square size x size the models see (RESIZE_MODES): ``squash``
# (resized to it, its aspect ratio lost: HSNet's protocol) or ``pad`` (its longer side
# resized to ``size``, the aspect ratio kept, the rest of the square filled with the
# ImageNet mean colour and its labels ignored: PFENet's test-time resize, padded at the
# bottom and right).
_MEAN_COLOUR = [round(255 * m) for m in IMAGENET_MEAN]  # normalises to about 0


def resize_transform(size: int, mode: str = "squash") -> v2.Transform:
    """Evaluation: size x size by ``mode`` (:data:`RESIZE_MODES`), bilinear for the image,
    nearest for the mask."""
    if mode == "pad":
        return Letterbox(size)
    if mode != "squash":
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return v2.Resize((size, size), antialias=True)


def letterbox_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) an image of this size occupies in its ``pad`` square: the longer
    side ``size``, the other scaled alike (at least 1)."""
    scale = size / max(height, width)
    return max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))


def unpadded(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Maps [..., S, S] of an image of (height, width) padded to S x S (``pad``) → the part
    the image occupies, [..., h, w] (a view)."""
    h, w = letterbox_shape(height, width, maps.shape[-1])
    return maps[..., :h, :w]


class Letterbox(v2.Transform):
    """The ``pad`` resize: aspect ratio kept, padded at the bottom and right to size x size
    with the mean colour (images) or :data:`IGNORE_LABEL` (label maps)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"shape": letterbox_shape(*query_size(flat_inputs), self.size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = params["shape"]
        resized = TF.resize(inpt, [height, width], antialias=True)
        fill = IGNORE_LABEL if isinstance(inpt, tv_tensors.Mask) else _MEAN_COLOUR
        return TF.pad(resized, [0, 0, self.size - width, self.size - height], fill=fill)


def augment_transform(size: int) -> v2.Transform:
    """Training: random scale-crop, horizontal flip and colour jitter, applied jointly.

    Randomness comes from torch's global generator, which the trainer seeds.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
        ]
    )


_STD = torch.tensor(IMAGENET_STD)[:, None, None]
_SCALE = 1.0 / (255.0 * _STD)
_SHIFT = -torch.tensor(IMAGENET_MEAN)[:, None, None] / _STD


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 [3,H,W] → (x/255 − mean)/std in float32, as one multiply-add."""
    return torch.addcmul(_SHIFT, image.float(), _SCALE)


def sample_to_tensors(
    sample: ClassSample, transform: v2.Transform
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image [3,S,S] normalised float, mask [S,S] float in {0,1}, ignore [S,S] bool)."""
    image = tv_tensors.Image(torch.from_numpy(np.array(sample.image, copy=True)).permute(2, 0, 1))
    image, label_map = transform(image, _label_map(sample.mask, sample.ignore))
    # the resize keeps the decoded image's channels-last layout; planar channels
    # normalise faster
    return normalise(image.as_subclass(torch.Tensor).contiguous()), *_split_labels(label_map)


def masks_to_tensors(
    mask: np.ndarray, ignore: np.ndarray, transform: v2.Transform
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mask, ignore) of :func:`sample_to_tensors` without the image, for a transform
    that depends on nothing random (the evaluation's resize)."""
    return _split_labels(transform(_label_map(mask, ignore)))


def _label_map(mask: np.ndarray, ignore: np.ndarray) -> tv_tensors.Mask:
    """uint8 [1,H,W]: 1 foreground, 0 background, IGNORE_LABEL where ignored (which wins)."""
    foreground = mask.astype(bool, copy=False).view(np.uint8)
    ignored = ignore.astype(bool, copy=False).view(np.uint8) * np.uint8(IGNORE_LABEL)
    # row-major: resizing a column-major map took twice as long
    label = np.ascontiguousarray(np.maximum(foreground, ignored))
    return tv_tensors.Mask(torch.from_numpy(label)[None])


def _split_labels(label_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # NumPy: torch's comparisons and casts took several times as long here
    labels = label_map.as_subclass(torch.Tensor)[0].numpy()
    foreground = (labels == 1).astype(np.float32)
    return torch.from_numpy(foreground), torch.from_numpy(labels == IGNORE_LABEL)
