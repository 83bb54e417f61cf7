"""Superpixel voting: every region of a Felzenszwalb-Huttenlocher over-segmentation of the
query (Felzenszwalb and Huttenlocher, IJCV 2004; scikit-image's) takes the mean
foreground probability of its pixels, so that the mask's edges become region edges, which
follow the image's colour edges. A pure function of tensors and the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

REFERENCE_AREA = 400 * 400  # the smallest region is given at 400x400, scaled with the area
MIN_REGION_AT_REFERENCE = 100  # pixels
SMOOTHING = 0.8  # the Gaussian blur before segmenting (scikit-image's default)


def felzenszwalb_regions(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Region labels [H,W] (int64, 0..n−1) of an RGB image [3,H,W] in [0, 1]; larger
    ``scale``: larger regions."""
    from skimage.segmentation import felzenszwalb  # only when asked for: a slow import

    height, width = image.shape[-2:]
    min_size = max(1, round(MIN_REGION_AT_REFERENCE * height * width / REFERENCE_AREA))
    pixels = image.detach().permute(1, 2, 0).float().cpu().numpy()
    labels = felzenszwalb(pixels, scale=scale, sigma=SMOOTHING, min_size=min_size)
    return torch.from_numpy(labels.astype(np.int64))


def region_mean(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Each pixel of ``values`` [H,W] replaced by the mean over its region (``regions``
    [H,W] integer labels 0..n−1)."""
    flat = regions.flatten().to(values.device, torch.int64)
    n = int(flat.max()) + 1
    sums = torch.zeros(n, dtype=values.dtype, device=values.device)
    sums.index_add_(0, flat, values.flatten())
    counts = torch.bincount(flat, minlength=n).to(values.dtype)
    return (sums / counts)[flat].view_as(values)


def superpixel_vote(
    probability: torch.Tensor,
    images: torch.Tensor,
    scale: float,
    regions: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Foreground probabilities [B,1,H,W] → each region's mean, the regions those of the
    RGB ``images`` [B,3,H,W] (in [0, 1], at the same size), or ``regions`` given (each
    image's :func:`felzenszwalb_regions`, computed before)."""
    if images.shape[-2:] != probability.shape[-2:]:
        raise ValueError(
            f"images {tuple(images.shape)} and probabilities {tuple(probability.shape)} differ"
        )
    if regions is None:
        regions = [felzenszwalb_regions(image, scale) for image in images]
    voted = [region_mean(p[0], r)[None] for p, r in zip(probability, regions, strict=True)]
    return torch.stack(voted)
