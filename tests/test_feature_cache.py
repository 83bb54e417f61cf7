"""The feature cache returns exactly what the backbone computes, once per distinct image."""

import pytest
import torch

from fewseg.models.backbones import Backbone
from fewseg.models.feature_cache import FeatureCache, image_key


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
    with torch.no_grad():  # the three misses went through together: equal to rounding
        torch.testing.assert_close(first[1], backbone.conv(images[1:2])[0])


def test_least_recently_used_entries_are_evicted() -> None:
    backbone = CountingBackbone()
    one_entry = (4 * 4 * 4 + 3 * 8 * 8) * 4  # features 4x4x4 + the image's copy, float32
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


def test_images_that_share_the_sampled_values_do_not_share_features() -> None:
    torch.manual_seed(0)
    backbone = CountingBackbone()
    cache = FeatureCache(backbone)
    a = torch.randn(1, 3, 64, 64)
    b = a.clone()
    b.view(-1)[1] += 1.0  # the key samples every 3rd value of 3x64x64: index 1 is unseen
    assert image_key(a[0]) == image_key(b[0])
    features_a, features_b = cache(a), cache(b)
    with torch.no_grad():
        assert torch.equal(features_b, backbone.conv(b))
        assert torch.equal(features_a, backbone.conv(a))
    assert not torch.equal(features_a, features_b)
    assert torch.equal(cache(b), features_b)  # the newer of the two is kept
    assert cache.misses == 2 and cache.hits == 1


def test_an_image_that_owns_its_memory_is_kept_by_reference_until_changed() -> None:
    torch.manual_seed(0)
    backbone = CountingBackbone()
    cache = FeatureCache(backbone)
    image = torch.randn(3, 8, 8)
    first = cache(image[None])
    entry = next(iter(cache._entries.values()))
    assert entry.image.data_ptr() == image.data_ptr() and entry.nbytes == first.nbytes  # no copy
    assert torch.equal(cache(image[None]), first) and cache.hits == 1
    image.mul_(2)  # in place: the version changes, the features are recomputed
    with torch.no_grad():
        assert torch.equal(cache(image[None]), backbone.conv(image[None]))
    assert cache.misses == 2


def test_trainable_backbone_is_refused() -> None:
    cache = FeatureCache(CountingBackbone(frozen=False))
    with pytest.raises(ValueError, match="frozen"):
        cache(torch.randn(1, 3, 8, 8))


def test_misses_of_one_call_are_encoded_together_and_equal_one_by_one() -> None:
    from fewseg.models.backbones import MobileNetV2Features

    torch.manual_seed(0)
    backbone = MobileNetV2Features(pretrained=False, frozen=True)
    images = torch.randn(5, 3, 64, 64)
    batched = FeatureCache(backbone)
    together = batched(images)
    assert batched.misses == 5
    with torch.no_grad():
        one_by_one = torch.cat([backbone(image[None]) for image in images])
    assert torch.equal(together, one_by_one)
    assert torch.equal(batched(images[[3, 1]]), one_by_one[[3, 1]])
    assert batched.hits == 2


def test_a_copied_cache_has_its_own_lock_and_entries() -> None:
    import copy

    from fewseg.models.backbones import BACKBONES

    cache = FeatureCache(BACKBONES.get("mobilenet_v2")(pretrained=False, frozen=True).eval())
    images = torch.randn(1, 3, 64, 64)
    cache(images)
    copied = copy.deepcopy(cache)
    assert copied._lock is not cache._lock and copied.backbone is not cache.backbone
    assert torch.equal(copied(images), cache(images)) and copied.hits == 1
