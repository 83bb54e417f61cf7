"""Image/mask preprocessing: joint resize and augmentation, ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from fewseg.data.source import ClassSample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_LABEL = 255


def resize_transform(size: int) -> v2.Transform:
    """Evaluation: squash to size x size (bilinear for the image, nearest for the mask)."""
    return v2.Resize((size, size), antialias=True)


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
