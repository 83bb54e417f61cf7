"""The guided filter (He, Sun and Tang, ECCV 2010 / TPAMI 2013) and its fast form as a
guided upsampler (He and Sun 2015), as pure functions of tensors.

The output is locally an affine function of the guide image: q = a·I + b in every window,
a and b fitted to the input by ridge regression (``eps`` the ridge). Filtering a
segmentation's foreground probability with the image as guide moves its transitions onto
the image's edges; where the image is flat the probability is only smoothed.

Windows are (2r+1)² squares clipped at the image border (the box means divide by the
number of pixels inside), computed by cumulative sums in float64: O(pixels) whatever r.
"""

from __future__ import annotations

import torch

from fewseg.models.upsample import bilinear_resize


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of x [..., H, W] over the (2r+1)² window around each pixel, clipped at the
    border (float64)."""
    x = x.double()
    return _box_sum(x, radius) / _box_sum(torch.ones_like(x[..., :1, :, :]), radius)


def _box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    for dim in (-2, -1):
        n = x.shape[dim]
        zeros = torch.zeros_like(x.narrow(dim, 0, 1))
        cumulative = torch.cat([zeros, x.cumsum(dim)], dim=dim)  # [..., n+1]
        upper = torch.arange(n, device=x.device).add(radius + 1).clamp_max(n)
        lower = torch.arange(n, device=x.device).sub(radius).clamp_min(0)
        x = cumulative.index_select(dim, upper) - cumulative.index_select(dim, lower)
    return x


def guided_coefficients(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The window-averaged affine coefficients (mean a [B,C,H,W], mean b [B,1,H,W]) of the
    guided filter of ``source`` [B,1,H,W] by ``guide`` [B,C,H,W] (C = 1: grey, C = 3:
    colour, the 3x3 covariance of each window inverted with ``eps`` on its diagonal)."""
    if guide.shape[-2:] != source.shape[-2:] or source.shape[1] != 1:
        raise ValueError(
            f"guide {tuple(guide.shape)} and source {tuple(source.shape)} do not match"
        )
    guide, source = guide.double(), source.double()
    channels = guide.shape[1]
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(source, radius)
    cov_ip = box_mean(guide * source, radius) - mean_i * mean_p  # [B,C,H,W]
    if channels == 1:
        var_i = box_mean(guide * guide, radius) - mean_i * mean_i
        a = cov_ip / (var_i + eps)
    else:
        products = guide[:, :, None] * guide[:, None, :]  # [B,C,C,H,W]
        second = box_mean(products.flatten(1, 2), radius).unflatten(1, (channels, channels))
        sigma = second - mean_i[:, :, None] * mean_i[:, None, :]
        sigma = (
            sigma
            + eps
            * torch.eye(channels, dtype=sigma.dtype, device=sigma.device)[None, :, :, None, None]
        )
        # per pixel: solve sigma a = cov_ip  ([B,H,W,C,C] · [B,H,W,C,1])
        a = torch.linalg.solve(sigma.permute(0, 3, 4, 1, 2), cov_ip.permute(0, 2, 3, 1)[..., None])[
            ..., 0
        ].permute(0, 3, 1, 2)
    b = mean_p - (a * mean_i).sum(dim=1, keepdim=True)
    return box_mean(a, radius), box_mean(b, radius)


def guided_filter(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """The guided filter's output [B,1,H,W] (float64): mean a · guide + mean b."""
    mean_a, mean_b = guided_coefficients(guide, source, radius, eps)
    return (mean_a * guide.double()).sum(dim=1, keepdim=True) + mean_b


def guided_upsample(
    guide_low: torch.Tensor,
    source_low: torch.Tensor,
    guide_high: torch.Tensor,
    radius: int,
    eps: float,
) -> torch.Tensor:
    """The fast guided filter: coefficients fitted at the low resolution of ``source_low``
    and ``guide_low``, resized bilinearly to ``guide_high``'s size and applied to it
    [B,1,H,W]. Equal to :func:`guided_filter` when the two guides are one."""
    mean_a, mean_b = guided_coefficients(guide_low, source_low, radius, eps)
    size = guide_high.shape[-2:]
    mean_a, mean_b = bilinear_resize(mean_a, size), bilinear_resize(mean_b, size)
    return (mean_a * guide_high.double()).sum(dim=1, keepdim=True) + mean_b
