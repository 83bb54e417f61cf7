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
    one_entry = 4 * 4 * 4 * 4  # features 4x4x4, float32; the image is kept by reference
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


def test_a_sequence_of_images_is_encoded_in_one_batch_with_no_copy() -> None:
    torch.manual_seed(0)
    backbone = CountingBackbone()
    batches: list[int] = []
    backbone.register_forward_hook(lambda _m, inputs, _o: batches.append(len(inputs[0])))
    cache = FeatureCache(backbone)
    support = torch.randn(2, 3, 8, 8)  # an episode's support: its rows are views
    query = torch.randn(3, 8, 8)
    out = cache([*support, query])
    assert batches == [3]
    with torch.no_grad():
        torch.testing.assert_close(out, backbone.conv(torch.cat([support, query[None]])))
    entries = list(cache._entries.values())
    kept = [entry.image.data_ptr() for entry in entries]
    assert kept == [support[0].data_ptr(), support[1].data_ptr(), query.data_ptr()]
    assert all(entry.nbytes == entry.features.nbytes for entry in entries)  # no image copied
    # all missed: the backbone's output itself is returned, the entries are its rows
    assert all(e.features.untyped_storage().data_ptr() == out.data_ptr() for e in entries)
    assert torch.equal(cache([query, support[1]]), out[[2, 1]]) and batches == [3]
    assert cache.hits == 2


def test_a_non_contiguous_image_is_copied() -> None:
    backbone = CountingBackbone()
    cache = FeatureCache(backbone)
    image = torch.randn(3, 8, 16)[:, :, ::2]
    features = cache([image])
    entry = next(iter(cache._entries.values()))
    assert entry.image.is_contiguous() and torch.equal(entry.image, image)
    assert entry.nbytes == features.nbytes + image.numel() * 4
    assert torch.equal(cache([image]), features) and cache.hits == 1


def test_a_kept_image_met_again_is_found_without_hashing(monkeypatch) -> None:
    import fewseg.models.feature_cache as module

    hashed: list[int] = []
    real_key = module.image_key
    monkeypatch.setattr(module, "image_key", lambda image: hashed.append(1) or real_key(image))
    cache = FeatureCache(CountingBackbone())
    image, other = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    first = cache([image])
    assert len(hashed) == 1
    assert torch.equal(cache([image, other])[0], first[0]) and len(hashed) == 2  # other only
    assert torch.equal(cache([image.clone()]), first) and len(hashed) == 3  # a copy: hashed
    image.add_(1.0)  # in place: the identity no longer vouches for the content
    with torch.no_grad():
        assert torch.equal(cache([image]), cache.backbone.conv(image[None]))
    assert len(hashed) == 4


def test_evicted_entries_leave_no_identity_behind() -> None:
    backbone = CountingBackbone()
    cache = FeatureCache(backbone, max_bytes=2 * 4 * 4 * 4 * 4)  # two entries
    images = list(torch.randn(4, 3, 8, 8))
    for image in images:
        cache([image])
    assert len(cache._entries) == len(cache._keys_by_identity) == 2
    calls = backbone.calls
    cache([images[0]])  # evicted: computed again
    assert backbone.calls == calls + 1
    cache.clear()
    assert not cache._keys_by_identity


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


def test_derived_values_are_computed_once_per_image_and_kept_with_its_features() -> None:
    torch.manual_seed(0)
    cache = FeatureCache(CountingBackbone())
    images = torch.randn(3, 3, 8, 8)
    calls: list[int] = []

    def doubled(features: torch.Tensor) -> torch.Tensor:
        calls.append(features.shape[0])
        return features * 2

    first = cache.derived(images[:2], "doubled", 1, doubled)
    again = cache.derived(images, "doubled", 1, doubled)
    assert calls == [2, 1]  # the misses of each call in one batch; image 2 only, then
    assert torch.equal(first, cache(images[:2]) * 2)
    assert torch.equal(again, cache(images) * 2)
    features_bytes = 4 * 4 * 4 * 4
    assert cache._bytes == 3 * 2 * features_bytes  # features and derived values both count
    renewed = cache.derived(images[:1], "doubled", 2, lambda f: f * 3)  # another version
    assert torch.equal(renewed, cache(images[:1]) * 3)
    assert cache._bytes == 3 * 2 * features_bytes  # replaced, not added


def test_features_and_derived_values_in_one_lookup() -> None:
    torch.manual_seed(0)
    backbone = CountingBackbone()
    cache = FeatureCache(backbone)
    images = torch.randn(3, 3, 8, 8)
    features, halved = cache.features_and_derived(images[:2], "halved", 0, lambda f: f / 2)
    assert backbone.calls == 2 and cache.misses == 2 and cache.hits == 0
    assert torch.equal(features, cache(images[:2])) and torch.equal(halved, features / 2)
    hits = cache.hits
    features, halved = cache.features_and_derived(images, "halved", 0, lambda f: f / 2)
    assert backbone.calls == 3  # image 2 alone
    assert cache.hits == hits + 2 and cache.misses == 3  # one lookup per image
    assert torch.equal(features, cache(images)) and torch.equal(halved, features / 2)


def test_derived_values_go_with_their_entry() -> None:
    torch.manual_seed(0)
    one_entry = 2 * 4 * 4 * 4 * 4  # features and one derived value of the same size
    cache = FeatureCache(CountingBackbone(), max_bytes=2 * one_entry)
    images = torch.randn(3, 3, 8, 8)
    for i in range(3):
        cache.derived(images[i : i + 1], "copy", 0, lambda f: f.clone())
    assert len(cache._entries) == 2 and cache._bytes == 2 * one_entry  # the first evicted
    cache.clear()
    assert cache._bytes == 0
    cache.derived(images[:1], "copy", 0, lambda f: f.clone())
    assert cache._bytes == one_entry
