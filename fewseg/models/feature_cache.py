"""Reuse of a frozen backbone's features across episodes.

In an evaluation every image appears in many episodes; with a frozen backbone its
features never change, so they are computed once. Images are keyed by their content
(a hash of the preprocessed tensor), so a cache hit is exact by construction, and each
miss runs through the backbone alone, so a feature never depends on which other images
shared its batch.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn

from fewseg.models.backbones import Backbone


def image_key(image: torch.Tensor) -> bytes:
    data = image.detach().contiguous().cpu().numpy().tobytes()
    shape = ",".join(map(str, image.shape)).encode()
    return hashlib.blake2b(data, digest_size=20, person=b"fewseg-img").digest() + shape


class FeatureCache(nn.Module):
    """Wraps a frozen backbone; memoises per-image features, least recently used out first."""

    def __init__(self, backbone: Backbone, max_bytes: int = 1 << 30) -> None:
        super().__init__()
        self.backbone = backbone
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _lookup(self, image: torch.Tensor) -> torch.Tensor:
        key = image_key(image)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        features = self.backbone(image[None])[0]
        self._entries[key] = features
        self._bytes += features.numel() * features.element_size()
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()
        return features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.backbone.frozen:
            return self.backbone(images)
        return torch.stack([self._lookup(image) for image in images])
