"""The class-agnostic correlation model: its statistics against hand-computed values, its
K-shot combination, PFENet's prior, its size, and the support-only loss examples."""

from __future__ import annotations

import math

import pytest
import torch

from fewseg.episodes.tensors import LabelledImages
from fewseg.learners.correlation_tasks import CorrelationTasks, augmented_copy
from fewseg.models.correlation import (
    CorrelationModel,
    block_statistics,
    correlation_statistics,
    prior_map,
    stride_groups,
)


def feature_map(*columns: tuple[float, float]) -> torch.Tensor:
    """Cells of a one-row feature map [C=2, 1, len(columns)]."""
    return torch.tensor(columns, dtype=torch.float32).T[:, None, :]


def test_block_statistics_equal_hand_computed_cosines() -> None:
    query = feature_map((1, 0), (1, 1))
    # support cells: foreground, half foreground, background
    support = feature_map((0, 2), (2, 2), (3, 0))
    foreground = torch.tensor([[1.0, 0.5, 0.0]])
    valid = torch.ones(1, 3)
    stats = block_statistics(query, support, foreground, valid)
    r2, r10, r17 = math.sqrt(2), math.sqrt(10), math.sqrt(17)
    expected = torch.tensor(
        [
            [1 / r2, 1.0],  # largest cosine to a foreground cell (cells 0 and 1)
            [1.0, 1 / r2],  # to a background cell: only cell 2 is more than half background
            [1 / r10, 4 / (r2 * r10)],  # to the foreground prototype (1, 3)
            [4 / r17, 5 / (r2 * r17)],  # to the background prototype (4, 1)
        ]
    )
    torch.testing.assert_close(stats[:, 0, :], expected)


def test_ignored_cells_are_neither_foreground_nor_background() -> None:
    query = feature_map((1, 0), (0, 1))
    support = feature_map((0, 1), (1, 0), (5, 5))
    foreground = torch.tensor([[1.0, 0.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 0.0]])  # cell 2 ignored
    stats = block_statistics(query, support, foreground, valid)
    torch.testing.assert_close(stats[0, 0], torch.tensor([0.0, 1.0]))  # fg: cell 0
    torch.testing.assert_close(stats[1, 0], torch.tensor([1.0, 0.0]))  # bg: cell 1 only


def test_a_support_without_foreground_gives_zero_foreground_maxima() -> None:
    query, support = feature_map((1, 0)), feature_map((1, 0), (0, 1))
    stats = block_statistics(query, support, torch.zeros(1, 2), torch.ones(1, 2))
    assert stats[0].abs().max() == 0 and stats[2].abs().max() == 0


def test_the_prior_is_min_max_normalised() -> None:
    prior = prior_map(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
    torch.testing.assert_close(prior, torch.tensor([[0.0, 0.5], [0.25, 1.0]]), atol=1e-6, rtol=0)


def test_strides_are_grouped_coarsest_first() -> None:
    assert stride_groups([16, 16, 32, 16, 32]) == [[2, 4], [0, 1, 3]]


@pytest.fixture(scope="module")
def model() -> CorrelationModel:
    torch.manual_seed(0)
    # ImageNet weights: randomly initialised deep blocks give vanishing features
    return CorrelationModel("mobilenet_v2", pretrained=True).eval()


def test_the_decoder_has_the_documented_size(model: CorrelationModel) -> None:
    # MobileNetV2 blocks 14-17 at stride 32 (4 x 4 statistics + the prior = 17 channels),
    # blocks 7-13 at stride 16 (28), block 3's 24 channels as the skip; width 32, skip 16
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    expected = (
        conv(17, 32, 3)
        + 2 * conv(32, 32, 3)  # stride-32 group: squeeze, merge
        + conv(28, 32, 3)
        + conv(64, 32, 3)
        + conv(32, 32, 3)  # stride-16 group
        + conv(24, 16, 1)  # skip
        + conv(48, 32, 3)
        + conv(32, 1, 1)  # head
    )
    assert expected == 73_521
    assert sum(p.numel() for p in model.decoder.parameters()) == expected
    assert model.encoder.frozen and not any(p.requires_grad for p in model.encoder.parameters())


def test_a_query_against_itself_finds_itself_everywhere_in_the_foreground(
    model: CorrelationModel,
) -> None:
    torch.manual_seed(1)
    image = torch.rand(1, 3, 64, 64)
    masks, ignore = torch.ones(1, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    groups, skip = model.inputs(image, image, masks, ignore)
    assert [tuple(g.shape) for g in groups] == [(1, 17, 2, 2), (1, 28, 4, 4)]
    assert tuple(skip.shape) == (1, 24, 16, 16)
    # channel 0 of each level is the largest foreground cosine: 1 (the cell itself)
    for group, levels in zip(groups, (4, 7), strict=True):
        maxima = group[0, 0 : 4 * levels : 4]
        torch.testing.assert_close(maxima, torch.ones_like(maxima))
    assert tuple(model(groups, skip).shape) == (1, 1, 16, 16)


def shots(count: int, size: int = 32) -> LabelledImages:
    """``count`` noisy dark images with the same bright centred square object (half the
    side), masked."""
    torch.manual_seed(2)
    masks = torch.zeros(count, size, size, dtype=torch.long)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    images = 0.5 * torch.rand(count, 3, size, size) + 0.5 * masks[:, None].float()
    return LabelledImages(images, masks, torch.zeros(count, size, size, dtype=torch.bool))


def test_the_support_loss_segments_each_shot_from_the_others(model: CorrelationModel) -> None:
    support = shots(3)
    examples = CorrelationTasks(model).support_examples(support)
    assert len(examples) == 3
    for k, (_, shot) in enumerate(examples):
        assert torch.equal(shot.images, support.images[k : k + 1])


def test_one_shot_is_segmented_from_a_fixed_augmented_copy(model: CorrelationModel) -> None:
    support = shots(1)
    first = augmented_copy(support, torch.Generator().manual_seed(0))
    second = augmented_copy(support, torch.Generator().manual_seed(0))
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert not torch.equal(first.images, support.images) and bool(first.masks.any())
    ((_, copy),) = CorrelationTasks(model).support_examples(support)
    assert torch.equal(copy.images, first.images)


@pytest.mark.parametrize("shots", [1, 3])
def test_the_batched_statistics_equal_each_shots_block_statistics(shots: int) -> None:
    """Pooled masks, ignored pixels, a shot without foreground, cells at a coarser level."""
    torch.manual_seed(3)
    query = [torch.randn(5, 4, 4), torch.randn(7, 2, 2)]
    support = [torch.randn(shots, 5, 4, 4), torch.randn(shots, 7, 2, 2)]
    masks = (torch.rand(shots, 8, 8) > 0.6).long()
    masks[-1] = 0 if shots > 1 else masks[-1]
    ignore = torch.rand(shots, 8, 8) > 0.8
    batched = correlation_statistics(query, support, masks, ignore, (0, 1))
    for level, combined in enumerate(batched):
        size = query[level].shape[-2:]
        valid = (~ignore).float()
        fg = torch.nn.functional.adaptive_avg_pool2d(masks.float() * valid, size)
        va = torch.nn.functional.adaptive_avg_pool2d(valid, size)
        each = torch.stack(
            [block_statistics(query[level], support[level][k], fg[k], va[k]) for k in range(shots)]
        )
        torch.testing.assert_close(combined[:2], each[:, :2].amax(dim=0))
        torch.testing.assert_close(combined[2:], each[:, 2:].mean(dim=0))


@pytest.mark.parametrize("balanced", [False, True])
def test_each_shots_own_statistics_are_those_of_the_shot_alone(balanced: bool) -> None:
    """Bit for bit, on grids that do not divide the masks' size (pooled by matrix
    products), with a shot without foreground."""
    torch.manual_seed(5)
    query = [torch.randn(5, 3, 3), torch.randn(7, 2, 2)]
    support = [torch.randn(3, 5, 3, 3), torch.randn(3, 7, 2, 2)]
    masks = (torch.rand(3, 100, 100) > 0.6).long()  # 100 → 3 rounds differently in a batch
    masks[1] = 0
    ignore = torch.rand(3, 100, 100) > 0.8
    each = correlation_statistics(query, support, masks, ignore, (0, 1), balanced, per_shot=True)
    for k in range(3):
        alone = correlation_statistics(
            query, [s[k : k + 1] for s in support], masks[k : k + 1], ignore[k : k + 1], (0, 1),
            balanced,
        )  # fmt: skip
        for level, shot_level in zip(each, alone, strict=True):
            assert torch.equal(level[k], shot_level)
    combined = correlation_statistics(query, support, masks, ignore, (0, 1), balanced)
    for level, joint in zip(each, combined, strict=True):
        torch.testing.assert_close(joint[:2], level[:, :2].amax(dim=0))
        torch.testing.assert_close(joint[2:], level[:, 2:].mean(dim=0))
    assert torch.equal(each[0][1, 0], torch.zeros(3, 3))  # no foreground cell: 0


def test_per_shot_inputs_are_each_shots_own_rows_shot_major(model: CorrelationModel) -> None:
    support = shots(3)
    query = torch.rand(2, 3, 32, 32)
    groups, skip = model.inputs(query, support.images, support.masks, support.ignore, per_shot=True)
    assert len(skip) == 6 and all(len(g) == 6 for g in groups)
    for k in range(3):
        shot = support.select([k])
        alone, alone_skip = model.inputs(query, shot.images, shot.masks, shot.ignore)
        for group, group_alone in zip(groups, alone, strict=True):
            assert torch.equal(group[2 * k : 2 * k + 2], group_alone)
        assert torch.equal(skip[2 * k : 2 * k + 2], alone_skip)


def test_a_larger_query_is_compared_with_the_supports_own_cells() -> None:
    """A query at twice the support's size whose cells repeat the same-size query's in 2x2
    blocks gets those statistics repeated in 2x2 blocks."""
    torch.manual_seed(4)
    query = [torch.randn(5, 4, 4), torch.randn(7, 2, 2)]
    support = [torch.randn(2, 5, 4, 4), torch.randn(2, 7, 2, 2)]
    masks = (torch.rand(2, 8, 8) > 0.6).long()
    ignore = torch.rand(2, 8, 8) > 0.8
    same = correlation_statistics(query, support, masks, ignore, (0, 1))
    larger = [level.repeat_interleave(2, -1).repeat_interleave(2, -2) for level in query]
    enlarged = correlation_statistics(larger, support, masks, ignore, (0, 1))
    for small, big in zip(same, enlarged, strict=True):
        assert big.shape[-2:] == (2 * small.shape[-2], 2 * small.shape[-1])
        torch.testing.assert_close(big, small.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_k_shots_average_the_logits_of_each_shot_unless_told_otherwise(
    model: CorrelationModel,
) -> None:
    support = shots(3)
    query = torch.rand(2, 3, 32, 32)
    mean, joint = CorrelationTasks(model), CorrelationTasks(model, shot_mean=False)
    each = [mean.predictor(support.select([k]))(query) for k in range(3)]
    torch.testing.assert_close(mean.predictor(support)(query), torch.stack(each).mean(dim=0))
    groups, skip = model.inputs(query, support.images, support.masks, support.ignore)
    expected = torch.nn.functional.interpolate(model(groups, skip), size=(32, 32), mode="bilinear")
    torch.testing.assert_close(joint.predictor(support)(query), expected)


def test_balanced_statistics_average_the_same_fraction_of_each_class() -> None:
    """One foreground cell (1, 0) and three background cells; the query cell (0.8, 0.6) is
    0.8 like the foreground and 0.6, 0.96, 1 like the background: the plain maximum says
    1, the balanced statistic the mean of all three (one foreground cell : three)."""
    query = [feature_map(*[(0.8, 0.6)] * 4)]  # the same size as the support's
    support = [feature_map((1, 0), (0, 1), (0.6, 0.8), (0.8, 0.6))[None]]
    masks = torch.tensor([[[1, 0, 0, 0]]])
    ignore = torch.zeros(1, 1, 4, dtype=torch.bool)
    plain = correlation_statistics(query, support, masks, ignore, (0,))[0][:, 0, 0]
    balanced = correlation_statistics(query, support, masks, ignore, (0,), balanced=True)
    fg, bg, *prototypes = balanced[0][:, 0, 0].tolist()
    assert plain[:2].tolist() == pytest.approx([0.8, 1.0])
    assert [fg, bg] == pytest.approx([0.8, (0.6 + 0.96 + 1.0) / 3])
    assert prototypes == pytest.approx(plain[2:].tolist())  # the prototypes are unchanged


def test_balanced_statistics_take_the_largest_over_shots() -> None:
    # shot 0 has the query's own cell as foreground; shot 1 has no foreground at all (0)
    query = [feature_map((1, 0), (1, 0))]
    support = [torch.stack([feature_map((1, 0), (0, 1)), feature_map((0, 1), (0.6, 0.8))])]
    masks = torch.tensor([[[1, 0]], [[0, 0]]])
    ignore = torch.zeros(2, 1, 2, dtype=torch.bool)
    stats = correlation_statistics(query, support, masks, ignore, (0,), balanced=True)[0]
    # foreground: 1 (shot 0), shot 1 counts 0; background: shot 0's 0, shot 1's cells
    # (0, 1) and (0.6, 0.8) with no foreground to balance against: its nearest, 0.6
    assert stats[:2, 0, 0].tolist() == pytest.approx([1.0, 0.6])
