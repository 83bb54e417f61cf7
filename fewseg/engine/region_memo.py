"""Superpixels of an evaluation's query images, computed once per image.

``--edges superpixels`` splits each query into Felzenszwalb regions (about 0.1 s per
400x400 image on one core), and an evaluation queries each image many times: a
1000-episode coco-mini fold has about a hundred distinct queries. The regions depend only
on the image and the scale, so the runner keeps them by the image's name
(fewseg.episodes.image_keys); unnamed images are split every time.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from fewseg.episodes.image_keys import image_keys
from fewseg.episodes.sample_cache import ByteBudgetLRU
from fewseg.refinement.pipeline import rgb
from fewseg.refinement.superpixels import felzenszwalb_regions

DEFAULT_MAX_BYTES = 256 * 400 * 400 * 4  # 256 region maps (int32) of 400x400 images


class RegionMemo:
    """``memo(images, scale)`` → each image's region labels [H,W], least recently used
    out beyond ``max_bytes`` of them (one thread)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._regions: ByteBudgetLRU[torch.Tensor] = ByteBudgetLRU(max_bytes)
        self.hits = 0
        self.misses = 0

    def __call__(self, images: torch.Tensor, scale: float) -> list[torch.Tensor]:
        keys = image_keys(images)
        if keys is None:
            return [felzenszwalb_regions(image, scale) for image in rgb(images)]
        return [self._get(key, image, scale) for key, image in zip(keys, images, strict=True)]

    def _get(self, name: Hashable, image: torch.Tensor, scale: float) -> torch.Tensor:
        key = (name, scale)
        regions = self._regions.get(key)
        if regions is not None:
            self.hits += 1
            return regions
        self.misses += 1
        regions = felzenszwalb_regions(rgb(image[None])[0], scale).int()
        self._regions.put(key, regions)
        return regions
