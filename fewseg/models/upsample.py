"""Bilinear resizing and adaptive average pooling as two small matrix products.

Bilinear interpolation (``align_corners=False``, no antialiasing) is separable: resizing
[..., h, w] to [..., H, W] is A_H · x · A_Wᵀ with fixed interpolation matrices. As matrix
products its backward pass is two more products, where ``F.interpolate``'s backward
scatters into the input and, on CPU, dominates an inner-loop step that upsamples coarse
logits to the image for the loss (docs/performance.md). Values equal ``F.interpolate``'s
to float rounding; it composes with ``torch.func`` transforms like any matmul. Adaptive
average pooling is separable the same way, and as two products it takes a fraction of
``F.adaptive_avg_pool2d``'s time on a 400x400 mask.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any

import torch
import torch.nn.functional as F


def cached_outside_transforms(build: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``build``, cached by its arguments, and run outside any ``torch.func`` transform
    (``torch._C._DisableFuncTorch``, as torch does for its random number state). A matrix
    first built inside one (the batched inner loop's ``vmap`` and ``grad``) would otherwise
    be kept as that transform's wrapper, and a later nested ``grad`` using it failed on
    functorch's internal assertion "escaped?"."""
    cached = lru_cache(maxsize=64)(build)

    @wraps(build)
    def matrix(*args: Any) -> torch.Tensor:
        with torch._C._DisableFuncTorch():
            return cached(*args)

    matrix.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return matrix


@cached_outside_transforms
def interpolation_matrix(
    size_in: int, size_out: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """[size_out, size_in]: 1-D linear interpolation with half-pixel centres."""
    identity = torch.eye(size_in, dtype=torch.float64)[None]  # each column as a signal
    resized = F.interpolate(identity, size=size_out, mode="linear", align_corners=False)
    return resized[0].T.contiguous().to(dtype=dtype, device=device)


@cached_outside_transforms
def average_pooling_matrix(
    size_in: int, size_out: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """[size_out, size_in]: output i averages inputs ⌊i·n/m⌋ to ⌈(i+1)·n/m⌉ − 1, the windows
    of ``F.adaptive_avg_pool1d``."""
    i = torch.arange(size_out)
    start = i * size_in // size_out
    end = ((i + 1) * size_in + size_out - 1) // size_out
    j = torch.arange(size_in)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return (inside / (end - start)[:, None].double()).to(dtype=dtype, device=device)


def adaptive_average_pool(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` for x [..., H, W] (floating point). When the size
    divides the input's, the windows are equal blocks and their means are taken directly
    (400×400 → 25×25: about half the matrix products' time); for {0, 1} inputs, as
    masks are, both ways are exact and give the same bits."""
    height, width = int(size[0]), int(size[1])
    if x.shape[-2] % height == 0 and x.shape[-1] % width == 0:
        blocks = x.unflatten(-1, (width, x.shape[-1] // width))
        blocks = blocks.unflatten(-3, (height, x.shape[-2] // height))
        return blocks.mean(dim=(-3, -1))
    rows = average_pooling_matrix(x.shape[-2], int(size[0]), x.dtype, x.device)
    columns = average_pooling_matrix(x.shape[-1], int(size[1]), x.dtype, x.device)
    return rows @ x @ columns.T


def bilinear_resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear")`` for x [..., h, w]."""
    height, width = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (height, width):
        return x
    rows = interpolation_matrix(x.shape[-2], height, x.dtype, x.device)
    columns = interpolation_matrix(x.shape[-1], width, x.dtype, x.device)
    return rows @ x @ columns.T
