"""Masks on a coarser grid than their image's, for losses computed there (pure functions)."""

from __future__ import annotations

import torch


def nearest_indices(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """The input pixel whose centre is nearest each output pixel's centre."""
    centres = (
        (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * size_in / size_out
    )
    return centres.floor().long().clamp_max(size_in - 1)


def subsample_masks(
    masks: torch.Tensor, ignore: torch.Tensor, side: int
) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
    """Masks and ignore [..., H, W] on a grid whose longer side is ``side`` (nearest
    pixel; unchanged when already that small): the new (h, w), masks, ignore."""
    height, width = masks.shape[-2:]
    if max(height, width) <= side:
        return (height, width), masks, ignore
    scale = side / max(height, width)
    new = (max(1, round(height * scale)), max(1, round(width * scale)))
    rows = nearest_indices(height, new[0], masks.device)
    columns = nearest_indices(width, new[1], masks.device)

    def grid(x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-2, rows).index_select(-1, columns)

    return new, grid(masks), grid(ignore)
