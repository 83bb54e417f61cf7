"""Episode lists (HSNet protocol) on a hand-made source, and fold splits."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import pytest
import torch

from fewseg.data.source import (
    ClassSample,
    FoldSplit,
    SegClass,
    SegmentationSource,
    consecutive_split,
    interleaved_split,
)
from fewseg.data.synthetic import SyntheticSource
from fewseg.episodes import Episode, episode_plan, load_episode
from fewseg.episodes.image_keys import image_keys, name_images
from fewseg.episodes.sampler import usable_classes
from fewseg.episodes.tensors import LabelledImages
from fewseg.episodes.transforms import resize_transform
from fewseg.errors import FewSegError

# class index → name and image ids (count = number of images the class is in)
CLASS_NAMES = ("cat", "dog", "cow", "bird", "fish", "owl")
IMAGES: dict[int, tuple[str, ...]] = {
    0: ("a", "b", "c", "d", "e", "f"),  # cat: 6
    1: ("a", "g", "h", "i"),  # dog: 4
    2: ("b", "j"),  # cow: 2
    3: ("k",),  # bird: 1
    4: (),  # fish: 0
    5: ("c", "d", "g", "j", "k"),  # owl: 5
}
ALL_IMAGE_IDS = sorted({i for ids in IMAGES.values() for i in ids})


class FakeSource(SegmentationSource):
    """Six classes with known image lists and 4x4 images.

    Image ``i`` is the constant colour ``(10 * ALL_IMAGE_IDS.index(i), 0, 0)``; the mask of
    an even class is the top-left 2x2 quadrant, that of an odd class the bottom-right one.
    """

    kind: ClassVar[str] = "fake"

    def classes(self) -> Sequence[SegClass]:
        return tuple(SegClass(i, n) for i, n in enumerate(CLASS_NAMES))

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        # pixel count = 1 + position in the class's list, so min_mask_pixels can filter
        return {c: {i: 1 + k for k, i in enumerate(ids)} for c, ids in IMAGES.items()}

    def load(self, image_id: str, class_index: int) -> ClassSample:
        assert image_id in IMAGES[class_index], (image_id, class_index)
        image = np.zeros((4, 4, 3), dtype=np.uint8)
        image[..., 0] = 10 * ALL_IMAGE_IDS.index(image_id)
        mask = np.zeros((4, 4), dtype=bool)
        if class_index % 2 == 0:
            mask[:2, :2] = True
        else:
            mask[2:, 2:] = True
        return ClassSample(image, mask, np.zeros_like(mask))


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


ALL_CLASSES = tuple(range(len(CLASS_NAMES)))


def check_episode(episode: Episode, shots: int, classes: Sequence[int]) -> None:
    assert episode.class_index in classes
    assert len(episode.support) == shots
    images = (episode.query, *episode.support)
    assert len(set(images)) == shots + 1, f"repeated image in {episode}"
    assert set(images) <= set(IMAGES[episode.class_index])


def test_images_of_is_the_sorted_list(source: FakeSource) -> None:
    assert source.images_of(0) == ("a", "b", "c", "d", "e", "f")
    assert source.images_of(5) == ("c", "d", "g", "j", "k")
    assert source.images_of(4) == ()


def test_plan_is_deterministic(source: FakeSource) -> None:
    first = episode_plan(source, ALL_CLASSES, shots=1, episodes=50, seed=3)
    second = episode_plan(FakeSource(), ALL_CLASSES, shots=1, episodes=50, seed=3)
    assert first == second
    assert first.episodes == second.episodes
    assert isinstance(first.episodes, tuple) and len(first.episodes) == 50


def test_plan_depends_on_seed(source: FakeSource) -> None:
    plans = {episode_plan(source, ALL_CLASSES, 1, 50, seed).episodes for seed in range(5)}
    assert len(plans) == 5


def test_plan_is_a_prefix_of_a_longer_plan(source: FakeSource) -> None:
    """Episodes are drawn one after another from one generator: more episodes extend the list."""
    short = episode_plan(source, ALL_CLASSES, 1, 20, seed=0).episodes
    long = episode_plan(source, ALL_CLASSES, 1, 60, seed=0).episodes
    assert long[:20] == short


@pytest.mark.parametrize("shots", [1, 2, 3, 4, 5])
def test_support_and_query_are_distinct_images_of_the_class(source: FakeSource, shots: int) -> None:
    plan = episode_plan(source, ALL_CLASSES, shots, episodes=200, seed=0)
    for episode in plan.episodes:
        check_episode(episode, shots, plan.classes_used)


def test_five_shot_of_a_six_image_class_uses_all_six(source: FakeSource) -> None:
    plan = episode_plan(source, [0, 1, 2], shots=5, episodes=30, seed=1)
    assert plan.classes_used == (0,)
    assert plan.classes_left_out == {1: 4, 2: 2}
    queries = Counter()
    for episode in plan.episodes:
        assert sorted((episode.query, *episode.support)) == list(IMAGES[0])
        queries[episode.query] += 1
    assert len(queries) > 1  # the query is not always the same image


@pytest.mark.parametrize(
    ("shots", "used", "left_out"),
    [
        (1, (0, 1, 2, 5), {3: 1, 4: 0}),
        (2, (0, 1, 5), {2: 2, 3: 1, 4: 0}),
        (3, (0, 1, 5), {2: 2, 3: 1, 4: 0}),
        (4, (0, 5), {1: 4, 2: 2, 3: 1, 4: 0}),
        (5, (0,), {1: 4, 2: 2, 3: 1, 4: 0, 5: 5}),
    ],
)
def test_classes_with_too_few_images_are_left_out(
    source: FakeSource, shots: int, used: tuple[int, ...], left_out: dict[int, int]
) -> None:
    assert usable_classes(source, ALL_CLASSES, shots) == (used, left_out)
    plan = episode_plan(source, ALL_CLASSES, shots, episodes=100, seed=0)
    assert plan.classes_used == used
    assert plan.classes_left_out == left_out
    assert {e.class_index for e in plan.episodes} == set(used)


def test_only_the_given_classes_are_considered(source: FakeSource) -> None:
    plan = episode_plan(source, [1, 3, 5], shots=1, episodes=100, seed=0)
    assert plan.classes_used == (1, 5)
    assert plan.classes_left_out == {3: 1}
    assert {e.class_index for e in plan.episodes} == {1, 5}


def test_min_mask_pixels_filters_images() -> None:
    # pixel count of an image = 1 + its position in IMAGES[c]: threshold 3 drops the first two
    source = FakeSource(min_mask_pixels=3)
    assert source.images_of(0) == ("c", "d", "e", "f")
    assert source.images_of(1) == ("h", "i")
    assert source.images_of(2) == ()
    plan = episode_plan(source, ALL_CLASSES, shots=2, episodes=50, seed=0)
    assert plan.classes_used == (0, 5)
    assert plan.classes_left_out == {1: 2, 2: 0, 3: 0, 4: 0}
    for episode in plan.episodes:
        images = (episode.query, *episode.support)
        assert set(images) <= set(source.images_of(episode.class_index))


def test_no_usable_class_raises_naming_the_classes(source: FakeSource) -> None:
    with pytest.raises(FewSegError) as error:
        episode_plan(source, [1, 2, 3, 4], shots=5, episodes=10, seed=0)
    message = str(error.value)
    assert "6 images a 5-shot episode needs" in message
    assert "dog (4), cow (2), bird (1), fish (0)" in message
    assert "\n" not in message


def test_empty_class_list_raises(source: FakeSource) -> None:
    with pytest.raises(FewSegError, match="no classes"):
        episode_plan(source, [], shots=1, episodes=10, seed=0)


@pytest.mark.parametrize(("shots", "episodes"), [(0, 10), (-1, 10), (1, 0), (1, -5)])
def test_bad_shots_or_episodes_raise(source: FakeSource, shots: int, episodes: int) -> None:
    with pytest.raises(FewSegError, match="must be >= 1"):
        episode_plan(source, ALL_CLASSES, shots, episodes, seed=0)


def test_classes_are_sampled_uniformly(source: FakeSource) -> None:
    """Classes first, uniformly (HSNet), not in proportion to their number of images."""
    n = 4000
    plan = episode_plan(source, ALL_CLASSES, shots=1, episodes=n, seed=0)
    counts = Counter(e.class_index for e in plan.episodes)
    assert set(counts) == {0, 1, 2, 5}
    expected = n / 4
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in (0, 1, 2, 5))
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    # image-proportional sampling would give cat 6/17 of the episodes and cow 2/17
    assert abs(counts[0] - counts[2]) < 0.1 * expected


def test_queries_cover_every_image_of_a_class(source: FakeSource) -> None:
    plan = episode_plan(source, [5], shots=1, episodes=500, seed=0)
    counts = Counter(e.query for e in plan.episodes)
    assert set(counts) == set(IMAGES[5])
    assert min(counts.values()) > 500 / 5 * 0.7


def test_load_episode_tensors_follow_the_episode(source: FakeSource) -> None:
    episode = Episode(class_index=1, query="i", support=("a", "h"))
    tensors = load_episode(source, episode, resize_transform(8))
    assert tensors.class_index == 1
    assert tensors.support.shots == 2
    assert tensors.support.images.shape == (2, 3, 8, 8)
    assert tensors.support.masks.shape == (2, 8, 8)
    assert tensors.support.ignore.shape == (2, 8, 8)
    assert tensors.query.images.shape == (1, 3, 8, 8)
    # odd class: the bottom-right quadrant is foreground, upsampled 4x4 → 8x8
    expected = torch.zeros(8, 8)
    expected[4:, 4:] = 1
    assert torch.equal(tensors.query.masks[0], expected)
    assert torch.equal(tensors.support.masks, expected.expand(2, 8, 8))
    assert not tensors.support.ignore.any() and not tensors.query.ignore.any()
    # red channel of image i is 10 * (position of i in ALL_IMAGE_IDS), ImageNet-normalised
    for image, image_id in zip(
        (*tensors.support.images, *tensors.query.images), ("a", "h", "i"), strict=True
    ):
        red = 10 * ALL_IMAGE_IDS.index(image_id) / 255
        assert torch.allclose(image[0], torch.full((8, 8), (red - 0.485) / 0.229), atol=1e-5)


# ---- fold splits ------------------------------------------------------------------------


def test_fold_split_rejects_overlap() -> None:
    with pytest.raises(FewSegError, match=r"fold 2: .*overlap: \[3, 5\]"):
        FoldSplit("2", "custom", train=(0, 3, 5), test=(3, 4, 5))


def test_fold_split_accepts_disjoint_classes() -> None:
    split = FoldSplit("1", "custom", train=(0, 2), test=(1, 3))
    assert split.train == (0, 2) and split.test == (1, 3)


@pytest.mark.parametrize(
    ("fold", "test", "train"),
    [
        (0, (0, 4), (1, 2, 3, 5, 6, 7)),
        (1, (1, 5), (0, 2, 3, 4, 6, 7)),
        (3, (3, 7), (0, 1, 2, 4, 5, 6)),
    ],
)
def test_interleaved_split_of_eight(
    fold: int, test: tuple[int, ...], train: tuple[int, ...]
) -> None:
    split = interleaved_split(8, fold, 4)
    assert (split.fold, split.convention, split.test, split.train) == (
        str(fold),
        "interleaved",
        test,
        train,
    )


@pytest.mark.parametrize(
    ("fold", "test", "train"),
    [
        (0, (0, 1), (2, 3, 4, 5, 6, 7)),
        (1, (2, 3), (0, 1, 4, 5, 6, 7)),
        (3, (6, 7), (0, 1, 2, 3, 4, 5)),
    ],
)
def test_consecutive_split_of_eight(
    fold: int, test: tuple[int, ...], train: tuple[int, ...]
) -> None:
    split = consecutive_split(8, fold, 4)
    assert (split.fold, split.convention, split.test, split.train) == (
        str(fold),
        "consecutive",
        test,
        train,
    )


def test_coco_sized_splits_match_the_papers() -> None:
    # COCO-20i, 0-based: interleaved fold 0 = {0, 4, ..., 76}; consecutive fold 2 = 40..59
    assert interleaved_split(80, 0, 4).test == tuple(range(0, 80, 4))
    assert interleaved_split(80, 3, 4).test[:3] == (3, 7, 11)
    assert consecutive_split(80, 2, 4).test == tuple(range(40, 60))
    for split in (interleaved_split, consecutive_split):
        tests = [set(split(80, f, 4).test) for f in range(4)]
        assert set().union(*tests) == set(range(80))
        assert all(len(t) == 20 for t in tests)


def test_generic_fold_split_on_the_fake(source: FakeSource) -> None:
    assert source.fold_split("1").test == (1, 5)
    assert source.fold_split("all").test == ALL_CLASSES
    assert source.fold_split("all").train == ()
    for bad in ("4", "-1", "x"):
        with pytest.raises(FewSegError, match="unknown fold"):
            source.fold_split(bad)


@pytest.fixture(scope="module")
def synthetic() -> SyntheticSource:
    return SyntheticSource(seed=0, images_per_class=4)


def test_synthetic_folds_are_class_disjoint(synthetic: SyntheticSource) -> None:
    n = len(synthetic.classes())
    splits = [synthetic.fold_split(str(f)) for f in range(4)]
    tests = [set(s.test) for s in splits]
    assert set().union(*tests) == set(range(n))
    for a, b in itertools.combinations(tests, 2):
        assert not a & b
    for split in splits:
        assert set(split.train) | set(split.test) == set(range(n))
        assert not set(split.train) & set(split.test)
        assert len(split.test) == n // 4


def test_synthetic_plans_use_only_test_classes(synthetic: SyntheticSource) -> None:
    for fold in "0123":
        split = synthetic.fold_split(fold)
        plan = episode_plan(synthetic, split.test, shots=2, episodes=300, seed=0)
        assert plan.classes_used == split.test
        assert plan.classes_left_out == {}
        for episode in plan.episodes:
            assert episode.class_index in split.test
            assert episode.class_index not in split.train
            images = (episode.query, *episode.support)
            assert len(set(images)) == 3
            assert set(images) <= set(synthetic.images_of(episode.class_index))


def test_labelled_images_of_samples_are_named_and_one_sample_is_a_view() -> None:
    g = torch.Generator().manual_seed(0)
    samples = [
        (
            torch.randn(3, 4, 5, generator=g),
            (torch.rand(4, 5, generator=g) > 0.5).float(),
            torch.rand(4, 5, generator=g) > 0.8,
        )
        for _ in range(3)
    ]
    named = LabelledImages.of(samples, ["a", "b", "c"])
    assert named.shots == 3 and len(named) == 3
    assert torch.equal(named.images, torch.stack([s[0] for s in samples]))
    assert torch.equal(named.ignore, torch.stack([s[2] for s in samples]))
    assert image_keys(named.images) == ("a", "b", "c")
    assert image_keys(LabelledImages.of(samples).images) is None
    one = LabelledImages.of(samples[:1], ["a"])
    assert one.images.data_ptr() == samples[0][0].data_ptr()  # one shot: a view, no copy
    assert one.images.shape == (1, 3, 4, 5) and one.masks.shape == (1, 4, 5)
    assert named.to("cpu") is named  # already there
    moved = named.to("meta")
    assert moved.images.device.type == moved.masks.device.type == "meta"
    assert image_keys(moved.images) == ("a", "b", "c")
    both = LabelledImages.cat([named, one])
    assert image_keys(both.images) == ("a", "b", "c", "a") and both.masks.shape == (4, 4, 5)
    assert image_keys(LabelledImages.cat([named, LabelledImages.of(samples)]).images) is None


def test_a_name_describes_its_tensor_until_the_tensor_changes() -> None:
    images = name_images(torch.zeros(2, 3, 4, 4), ["x", "y"])
    assert image_keys(images) == ("x", "y")
    assert image_keys(images[:1]) is None  # a new tensor
    images.add_(1.0)  # changed in place
    assert image_keys(images) is None
    with pytest.raises(ValueError, match="2 names for a batch of 1"):
        name_images(torch.zeros(1, 3, 4, 4), ["x", "y"])
