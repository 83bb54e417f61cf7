"""Metric checks against hand-computed intersection/union values."""

import math

import numpy as np
import pytest
import torch

from fewseg.metrics import (
    GroundTruth,
    SegmentationScores,
    boundary_intersection_union,
    boundary_width,
    intersection_union,
    mask_boundary,
)


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


# ---- Boundary IoU ---------------------------------------------------------------------------


def brute_force_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Mask pixels with a pixel outside the mask or the image within chessboard distance."""
    height, wide = mask.shape
    out = np.zeros_like(mask)
    for y in range(height):
        for x in range(wide):
            if not mask[y, x]:
                continue
            window = mask[max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
            near_border = min(y, x, height - 1 - y, wide - 1 - x) < width
            out[y, x] = near_border or not window.all()
    return out


def test_boundary_width_is_two_percent_of_the_diagonal() -> None:
    assert boundary_width(400, 400) == 11  # 0.02 · 565.7 = 11.3
    assert boundary_width(300, 400) == 10  # 0.02 · 500
    assert boundary_width(20, 20) == 1  # 0.57 rounds to 1
    assert boundary_width(10, 10) == 1  # 0.28 rounds to 0: at least 1


def test_the_boundary_of_a_square_by_hand() -> None:
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True  # a 5x5 square
    ring = mask.copy()
    ring[3:6, 3:6] = False  # width 1: the outer ring of 16 pixels
    assert np.array_equal(mask_boundary(mask, 1), ring)
    # the centre (4, 4) is 3 from the nearest pixel outside, (4, 1): on the boundary from d = 3
    centre_out = mask.copy()
    centre_out[4, 4] = False
    assert np.array_equal(mask_boundary(mask, 2), centre_out)
    assert np.array_equal(mask_boundary(mask, 3), mask)


def test_the_image_border_counts_as_outside() -> None:
    full = np.ones((6, 7), bool)
    expected = full.copy()
    expected[1:-1, 1:-1] = False
    assert np.array_equal(mask_boundary(full, 1), expected)


def test_mask_boundary_equals_a_brute_force_erosion() -> None:
    rng = np.random.default_rng(0)
    for width in (1, 2, 3):
        for _ in range(10):
            mask = rng.random((13, 11)) > 0.3
            assert np.array_equal(mask_boundary(mask, width), brute_force_boundary(mask, width))


def test_boundary_iou_by_hand() -> None:
    # 1 x 8 "image", d = 1: every pixel of a 1-row image touches the border above and
    # below, so a mask's boundary region is the whole mask
    target = row(0, 1, 1, 1, 1, 1, 0, 0)
    prediction = row(0, 0, 1, 1, 1, 1, 1, 0)
    ignore = row(0, 0, 0, 0, 0, 0, 1, 0)
    both, either = boundary_intersection_union(prediction, target, ignore)
    # G_d = {1..5}, P_d = {2..6} minus ignored {6} = {2..5}: I 4, U 5
    assert (both, either) == (4.0, 5.0)


def test_boundary_iou_of_squares_by_hand() -> None:
    target = torch.zeros(20, 20, dtype=torch.bool)  # d = 1 at 20x20
    target[5:15, 5:15] = True  # ring of 36 pixels
    prediction = torch.zeros(20, 20, dtype=torch.bool)
    prediction[5:15, 6:16] = True  # shifted one column right: its ring, 36 pixels
    ignore = torch.zeros(20, 20, dtype=torch.bool)
    both, either = boundary_intersection_union(prediction, target, ignore)
    # shared: the top and bottom rows over columns 6..14 (9 each) = 18, plus the target's
    # right column (col 14, rows 6..13: 8 px) is inside the prediction but not on its ring; the
    # prediction's left column (col 6, rows 6..13) is not on the target's ring: I = 18
    assert both == 18.0
    assert either == 36 + 36 - 18
    truth = GroundTruth.of(target.float(), ignore)
    assert truth.boundary.intersection_union(prediction) == (both, either)


def test_boundary_iou_accumulates_per_class() -> None:
    scores = SegmentationScores([0, 1])
    for episode in EPISODES:
        scores.update(*episode)
    # 1-row images: every mask pixel is on the boundary, so the boundary counts are the
    # foreground counts (class 0: 2/5 + 0/1; class 1: the ignored pixel out: 2/2)
    assert scores.boundary_intersection.tolist() == [2, 2]
    assert scores.boundary_union.tolist() == [6, 2]
    assert scores.class_boundary_iou() == {0: pytest.approx(1 / 3), 1: pytest.approx(1.0)}
    assert scores.boundary_iou() == pytest.approx((1 / 3 + 1) / 2)
    prepared = SegmentationScores([0, 1])
    for c, prediction, target, ignore in EPISODES:
        prepared.update_with(c, prediction, GroundTruth.of(target, ignore))
    assert torch.equal(prepared.boundary_intersection, scores.boundary_intersection)
    assert torch.equal(prepared.boundary_union, scores.boundary_union)
