"""Dropping the weakly predicted regions of a mask (pure functions).

The error left after edge-aware upsampling is mostly a region of the wrong object: a
blob on something that looks a little like the support's object. Such a blob is usually
predicted with less confidence than the object itself, so each connected region of the
predicted foreground is scored by its mean foreground log-odds, and a region scoring
below a fraction of the strongest region's is dropped. A mask with one region is kept as
it is: the rule only chooses among the regions of one prediction, never empties it.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label

DROPPED_LOG_ODDS = -10.0  # what a dropped region's pixels get: well below any threshold


def region_scores(log_odds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One map of foreground log-odds [H,W] → (its foreground regions' labels [H,W]: 0 off
    the mask, 1..n on its 4-connected regions; each region's mean log-odds [n])."""
    regions = label(log_odds > 0, connectivity=1)
    counts = np.bincount(regions.ravel())[1:]
    sums = np.bincount(regions.ravel(), weights=log_odds.ravel().astype(np.float64))[1:]
    return regions, sums / np.maximum(counts, 1)


def drop_weak_regions(log_odds: torch.Tensor, fraction: float) -> torch.Tensor:
    """Foreground log-odds [B,1,H,W] → the same with each connected foreground region
    whose mean log-odds is below ``fraction`` × its image's strongest region's set to
    :data:`DROPPED_LOG_ODDS`. ``fraction`` 0 keeps every region."""
    if fraction <= 0:
        return log_odds
    out = log_odds.clone()
    for image, result in zip(log_odds[:, 0], out[:, 0], strict=True):
        regions, means = region_scores(image.detach().float().cpu().numpy())
        if len(means) < 2:
            continue
        weak = np.flatnonzero(means < fraction * means.max()) + 1
        if len(weak):
            dropped = torch.from_numpy(np.isin(regions, weak)).to(result.device)
            result.masked_fill_(dropped, DROPPED_LOG_ODDS)
    return out
