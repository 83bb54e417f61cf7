"""Metric checks against hand-computed intersection/union values."""

import math

import pytest
import torch

from fewseg.metrics import GroundTruth, SegmentationScores, intersection_union


def row(*values: int) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.bool)


# (class, prediction, target, ignore) — 1 x 8 "images"
EPISODES = [
    (0, row(1, 1, 0, 0, 1, 0, 0, 0), row(1, 1, 1, 1, 0, 0, 0, 0), row(0, 0, 0, 0, 0, 0, 0, 0)),
    (0, row(0, 0, 0, 0, 0, 0, 0, 0), row(1, 0, 0, 0, 0, 0, 0, 0), row(0, 0, 0, 0, 0, 0, 0, 0)),
    (1, row(1, 1, 1, 0, 0, 0, 0, 0), row(1, 1, 0, 0, 0, 0, 0, 0), row(0, 0, 1, 0, 0, 0, 0, 0)),
]


def test_intersection_union_by_hand() -> None:
    _, prediction, target, ignore = EPISODES[0]
    intersection, union = intersection_union(prediction, target, ignore)
    # fg: pred {0,1,4}, true {0,1,2,3} → I 2, U 5; bg: pred {2,3,5,6,7}, true {4,5,6,7} → I 3, U 6
    assert intersection.tolist() == [3, 2]
    assert union.tolist() == [6, 5]


def test_ignored_pixels_count_in_neither() -> None:
    _, prediction, target, ignore = EPISODES[2]
    intersection, union = intersection_union(prediction, target, ignore)
    assert intersection.tolist() == [5, 2]
    assert union.tolist() == [5, 2]
    _, union_without_ignore = intersection_union(prediction, target, torch.zeros_like(ignore))
    assert union_without_ignore.tolist() == [6, 3]


@pytest.mark.parametrize("episode", EPISODES)
def test_a_prepared_ground_truth_counts_as_intersection_union(episode) -> None:
    _, prediction, target, ignore = episode
    truth = GroundTruth.of(target, ignore)
    for counts, expected in zip(
        truth.intersection_union(prediction),
        intersection_union(prediction, target, ignore),
        strict=True,
    ):
        assert counts.dtype == expected.dtype and torch.equal(counts, expected)


def test_prepared_counts_equal_intersection_union_on_random_maps() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        prediction, target = (torch.rand(9, 7, generator=g) > 0.5 for _ in range(2))
        ignore = torch.rand(9, 7, generator=g) > 0.8
        truth = GroundTruth.of(target.float(), ignore)
        for counts, expected in zip(
            truth.intersection_union(prediction),
            intersection_union(prediction, target, ignore),
            strict=True,
        ):
            assert torch.equal(counts, expected)


def test_per_class_accumulation_not_mean_of_episodes() -> None:
    scores = SegmentationScores([0, 1])
    for episode in EPISODES:
        scores.update(*episode)
    iou = scores.class_iou()
    assert iou[0] == pytest.approx((2 + 0) / (5 + 1))  # accumulated: 1/3
    mean_of_episodes = (2 / 5 + 0 / 1) / 2  # 0.2: what the protocol does NOT report
    assert not math.isclose(iou[0], mean_of_episodes)
    assert iou[1] == pytest.approx(1.0)
    assert scores.miou() == pytest.approx((1 / 3 + 1) / 2)


def test_fbiou_pools_all_episodes() -> None:
    scores = SegmentationScores([0, 1])
    for episode in EPISODES:
        scores.update(*episode)
    foreground = (2 + 0 + 2) / (5 + 1 + 2)
    background = (3 + 7 + 5) / (6 + 8 + 5)
    assert scores.fbiou() == pytest.approx((foreground + background) / 2)
    assert scores.episodes.tolist() == [2, 1]


def test_class_without_episodes_is_not_scored() -> None:
    scores = SegmentationScores([0, 1, 2])
    scores.update(*EPISODES[2])
    assert scores.class_iou() == {1: pytest.approx(1.0)}
    assert scores.miou() == pytest.approx(1.0)


def test_state_sums_like_an_all_reduce() -> None:
    whole, first, second = (SegmentationScores([0, 1]) for _ in range(3))
    for i, episode in enumerate(EPISODES):
        whole.update(*episode)
        (first if i % 2 == 0 else second).update(*episode)
    assert torch.equal(first.intersection + second.intersection, whole.intersection)
    assert torch.equal(first.union + second.union, whole.union)
