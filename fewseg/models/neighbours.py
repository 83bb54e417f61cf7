"""Class-balanced nearest-neighbour matching's shared pieces (the correlation model's
``balanced`` statistics and ``--refine nearest``): how many nearest cells each class
averages, and that average."""

from __future__ import annotations

import torch


def balanced_neighbours(fg_cells: int, bg_cells: int) -> tuple[int, int]:
    """The same fraction of each class's cells, one of the smaller class's; one each when a
    class has none. Without the balance the class with more cells (the background, mostly)
    wins too often: the best of many candidates is higher than the best of few."""
    smaller = min(fg_cells, bg_cells)
    if smaller == 0:
        return 1, 1
    return max(1, round(fg_cells / smaller)), max(1, round(bg_cells / smaller))


def nearest_mean(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of the ``k`` largest similarities along the last dimension (all of them when
    there are fewer); it must not be empty."""
    return similarity.topk(min(k, similarity.shape[-1]), dim=-1).values.mean(dim=-1)
