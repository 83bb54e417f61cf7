"""How many nearest cells each class averages in a class-balanced nearest-neighbour match
(shared by the correlation model's statistics and ``--refine nearest``)."""

from __future__ import annotations


def balanced_neighbours(fg_cells: int, bg_cells: int) -> tuple[int, int]:
    """The same fraction of each class's cells, one of the smaller class's; one each when a
    class has none. Without the balance the class with more cells (the background, mostly)
    wins too often: the best of many candidates is higher than the best of few."""
    smaller = min(fg_cells, bg_cells)
    if smaller == 0:
        return 1, 1
    return max(1, round(fg_cells / smaller)), max(1, round(bg_cells / smaller))
