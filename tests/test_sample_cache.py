"""Resized samples are decoded once per (image, class, size) and equal a fresh load."""

from __future__ import annotations

import numpy as np
import torch

from fewseg.data.source import ClassSample
from fewseg.data.synthetic import SyntheticSource
from fewseg.episodes import Episode, load_episode
from fewseg.episodes.image_keys import image_keys
from fewseg.episodes.sample_cache import ByteBudgetLRU, ResizedSamples, resized_samples
from fewseg.episodes.tensors import load_resized_episode, resized_image_key
from fewseg.episodes.transforms import resize_transform, sample_to_tensors


class CountingSource(SyntheticSource):
    """The synthetic source, with one ignored pixel per sample and a count of loads."""

    def __init__(self, seed: int = 3) -> None:
        super().__init__(seed=seed, images_per_class=2, size=64)
        self.loads = 0
        self.mask_loads = 0

    def load_masks(self, image_id: str, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        self.mask_loads += 1
        self.loads -= 1  # counted as a mask load only
        return super().load_masks(image_id, class_index)

    def load(self, image_id: str, class_index: int) -> ClassSample:
        self.loads += 1
        sample = super().load(image_id, class_index)
        ignore = np.zeros_like(sample.mask)
        ignore[0, 0] = True
        return ClassSample(sample.image, sample.mask & ~ignore, ignore)


def two_class_image(source: CountingSource) -> tuple[str, int, int]:
    for a in range(len(source.classes())):
        for b in range(a + 1, len(source.classes())):
            shared = set(source.images_of(a)) & set(source.images_of(b))
            if shared:
                return min(shared), a, b
    raise AssertionError("no image with two classes")


def assert_same_episode(cached, fresh) -> None:
    assert cached.class_index == fresh.class_index
    for a, b in (
        (cached.support.images, fresh.support.images),
        (cached.support.masks, fresh.support.masks),
        (cached.support.ignore, fresh.support.ignore),
        (cached.query.images, fresh.query.images),
        (cached.query.masks, fresh.query.masks),
        (cached.query.ignore, fresh.query.ignore),
    ):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


def test_cached_episode_equals_a_fresh_load_and_decodes_each_pair_once() -> None:
    source = CountingSource()
    c = 0
    ids = source.images_of(c)[:3]
    episode = Episode(class_index=c, query=ids[0], support=(ids[1], ids[2]))
    fresh = load_episode(source, episode, resize_transform(16))
    loads = source.loads
    first = load_resized_episode(source, episode, 16)
    assert source.loads == loads + 3
    again = load_resized_episode(source, Episode(c, ids[1], (ids[0], ids[2])), 16)
    assert source.loads == loads + 3  # every (image, class, size) was already prepared
    assert_same_episode(first, fresh)
    assert torch.equal(again.query.images[0], fresh.support.images[0])
    assert first.query.ignore[0, 0, 0] and first.query.ignore.sum() == 1
    load_resized_episode(source, episode, 20)  # another size is another sample
    assert source.loads == loads + 6


def test_classes_of_one_image_have_their_own_masks() -> None:
    source = CountingSource()
    image_id, a, b = two_class_image(source)
    samples = ResizedSamples(source)
    image_a, mask_a, _ = samples.load(image_id, a, 16)
    image_b, mask_b, _ = samples.load(image_id, b, 16)
    assert image_a is image_b  # one tensor per image, whichever class asked first
    assert not torch.equal(mask_a, mask_b)
    _, mask_b_again, ignore_b_again = samples.load(image_id, b, 16)
    assert mask_b_again is mask_b  # the stored tensors themselves: no conversion per load
    assert ignore_b_again is samples.load(image_id, b, 16)[2]
    assert ignore_b_again.dtype == torch.bool and mask_b.dtype == torch.float32
    assert (samples.hits, samples.misses) == (2, 2)


def test_a_second_class_of_a_held_image_reads_its_masks_alone() -> None:
    source = CountingSource()
    image_id, a, b = two_class_image(source)
    samples = ResizedSamples(source)
    samples.load(image_id, a, 16)
    assert (source.loads, source.mask_loads) == (1, 0)
    _, mask_b, ignore_b = samples.load(image_id, b, 16)
    assert (source.loads, source.mask_loads) == (1, 1)  # the image was not decoded again
    _, fresh_mask, fresh_ignore = sample_to_tensors(source.load(image_id, b), resize_transform(16))
    assert torch.equal(mask_b, fresh_mask) and torch.equal(ignore_b, fresh_ignore)
    assert mask_b.dtype == fresh_mask.dtype and ignore_b.dtype == fresh_ignore.dtype


def test_the_memo_is_one_per_source() -> None:
    one, other = CountingSource(), CountingSource()
    assert resized_samples(one) is resized_samples(one)
    assert resized_samples(one) is not resized_samples(other)


def test_least_recently_used_tensors_go_beyond_the_budget() -> None:
    lru = ByteBudgetLRU(max_bytes=2 * 16)
    a, b, c = (torch.zeros(4) for _ in range(3))  # 16 bytes each
    lru.put("a", a)
    lru.put("b", b)
    assert lru.get("a") is a  # a is now the most recent
    lru.put("c", c)
    assert lru.get("b") is None and lru.get("a") is a and lru.get("c") is c
    assert len(lru) == 2


def test_a_tuple_entry_counts_the_bytes_of_its_tensors() -> None:
    lru = ByteBudgetLRU(max_bytes=3 * 16)
    pair = (torch.zeros(4), torch.zeros(16, dtype=torch.bool))  # 16 + 16 bytes
    lru.put("pair", pair)
    lru.put("a", torch.zeros(4))  # 48 bytes: all kept
    assert len(lru) == 2
    lru.put("b", torch.zeros(4))  # 64 bytes: the pair, least recently used, goes
    assert lru.get("pair") is None and len(lru) == 2


def test_resized_episodes_name_their_images_and_share_the_held_samples() -> None:
    source = CountingSource()
    c = 0
    ids = source.images_of(c)[:3]
    first = load_resized_episode(source, Episode(c, ids[0], (ids[1], ids[2])), 16)
    again = load_resized_episode(source, Episode(c, ids[2], (ids[1],)), 16)
    key = resized_image_key
    assert image_keys(first.support.images) == (key(source, ids[1], 16), key(source, ids[2], 16))
    assert image_keys(first.query.images) == (key(source, ids[0], 16),)
    held = resized_samples(source).load(ids[1], c, 16)[0]
    assert again.support.images.data_ptr() == held.data_ptr()  # one shot: the held image
    assert key(source, ids[1], 16) != key(CountingSource(seed=1), ids[1], 16)
