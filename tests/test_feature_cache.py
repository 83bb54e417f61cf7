"""The feature cache returns exactly what the backbone computes, once per distinct image."""

import pytest
import torch

from fewseg.models.backbones import Backbone
from fewseg.models.feature_cache import FeatureCache


class CountingBackbone(Backbone):
    out_channels, stride = 4, 2

    def __init__(self, frozen: bool = True) -> None:
        super().__init__(frozen)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += images.shape[0]
        return self.conv(images)


def test_hits_equal_fresh_computation() -> None:
    torch.manual_seed(0)
    backbone = CountingBackbone()
    cache = FeatureCache(backbone)
    images = torch.randn(3, 3, 8, 8)
    first = cache(images)
    again = cache(images[[2, 0]])
    assert backbone.calls == 3
    assert (cache.hits, cache.misses) == (2, 3)
    assert torch.equal(again, first[[2, 0]])
    with torch.no_grad():
        assert torch.equal(first[1], backbone.conv(images[1:2])[0])


def test_least_recently_used_entries_are_evicted() -> None:
    backbone = CountingBackbone()
    one_entry = 4 * 4 * 4 * 4  # 4 channels x 4 x 4 float32
    cache = FeatureCache(backbone, max_bytes=2 * one_entry)
    a, b, c = torch.randn(3, 1, 3, 8, 8)
    cache(a)
    cache(b)
    cache(a)  # a is now the most recent
    cache(c)  # evicts b
    calls = backbone.calls
    cache(a)
    assert backbone.calls == calls
    cache(b)
    assert backbone.calls == calls + 1


def test_trainable_backbone_is_refused() -> None:
    cache = FeatureCache(CountingBackbone(frozen=False))
    with pytest.raises(ValueError, match="frozen"):
        cache(torch.randn(1, 3, 8, 8))
