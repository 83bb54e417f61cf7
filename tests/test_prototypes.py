"""Prototype and cosine math against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewseg.episodes.tensors import LabelledImages
from fewseg.learners.base import LearnerOptions
from fewseg.learners.baseline import PrototypeBaseline
from fewseg.learners.prototypes import (
    cosine_logits,
    cosine_margin,
    feature_norms,
    margin_direction,
    mask_weights,
    masked_average_pool,
    prediction_logits,
    shot_prototypes,
    support_prototypes,
)
from fewseg.models.backbones import Backbone


def test_mask_weights_are_cell_fractions() -> None:
    masks = torch.tensor([[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]]).float()
    ignore = torch.zeros(1, 4, 4, dtype=torch.bool)
    ignore[0, 3, 3] = True
    weights = mask_weights(masks, ignore, (2, 2))
    assert weights[0, 1].tolist() == [[0.75, 0.0], [0.0, 0.25]]
    assert weights[0, 0].tolist() == [[0.25, 1.0], [1.0, 0.5]]


def test_mask_weights_equal_adaptive_average_pooling() -> None:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 37, 41, generator=g) > 0.5).float()
    ignore = torch.rand(3, 37, 41, generator=g) > 0.8
    valid = (~ignore).float()
    pooled = F.adaptive_avg_pool2d(torch.stack([valid, masks * valid], dim=1), (5, 6))
    expected = torch.stack([pooled[:, 0] - pooled[:, 1], pooled[:, 1]], dim=1)
    torch.testing.assert_close(mask_weights(masks, ignore, (5, 6)), expected)


def test_support_prototypes_pooled_shot_by_shot_equal_the_batched_ones() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 4, 4, generator=g)
    masks = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    ignore = torch.rand(3, 8, 8, generator=g) > 0.9
    masks[2] = 0  # a shot without foreground: left out of that prototype
    torch.testing.assert_close(
        support_prototypes(features, masks, ignore), shot_prototypes(features, masks, ignore)
    )
    each = [
        support_prototypes(features[k : k + 1], masks[k : k + 1], ignore[k : k + 1]) for k in (0, 1)
    ]
    torch.testing.assert_close(
        support_prototypes(features, masks, ignore)[1], (each[0][1] + each[1][1]) / 2
    )


def test_masked_average_pool_by_hand() -> None:
    features = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 2.0], [0.0, 2.0]]]])
    weights = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.5], [0.0, 0.0]]]])
    pooled = masked_average_pool(features, weights)
    assert pooled[0, 0].tolist() == [2.0, 1.0]  # mean of the top row
    assert pooled[0, 1].tolist() == [3.0, 2.0]  # only the (0, 1) cell


def test_shot_prototypes_skip_shots_without_the_class() -> None:
    features = torch.stack([torch.full((1, 2, 2), 4.0), torch.full((1, 2, 2), 8.0)])
    masks = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])
    ignore = torch.zeros(2, 2, 2, dtype=torch.bool)
    prototypes = shot_prototypes(features, masks, ignore)
    assert prototypes[1].item() == 4.0  # foreground: only the first shot has it
    assert prototypes[0].item() == 8.0  # background: only the second shot has it


def test_cosine_logits_by_hand() -> None:
    features = torch.tensor([[[[1.0]], [[1.0]]]])  # one pixel, vector (1, 1)
    prototypes = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    logits = cosine_logits(features, prototypes, 10.0)
    assert logits.flatten().tolist() == pytest.approx([10 / math.sqrt(2), 10.0])


def test_cosine_logits_equal_normalised_dot_products() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 16, 5, 7)
    features[0, :, 1, 2] = 0.0  # a zero vector: 0, as with F.normalize
    prototypes = torch.randn(3, 16)
    expected = 4.0 * torch.einsum(
        "bchw,pc->bphw", F.normalize(features, dim=1), F.normalize(prototypes, dim=1)
    )
    torch.testing.assert_close(cosine_logits(features, prototypes, 4.0), expected)
    assert (cosine_logits(features, prototypes, 4.0)[0, :, 1, 2] == 0).all()


def test_cosine_margin_is_the_difference_of_the_two_cosine_logits() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 16, 5, 7)
    features[1, :, 3, 4] = 0.0
    prototypes = torch.randn(2, 16)
    two = cosine_logits(features, prototypes, 4.0)
    direction = margin_direction(prototypes)
    torch.testing.assert_close(
        direction, F.normalize(prototypes[1], dim=0) - F.normalize(prototypes[0], dim=0)
    )
    margin = cosine_margin(features, direction, 4.0)
    assert margin.shape == (2, 1, 5, 7)
    torch.testing.assert_close(margin, two[:, 1:] - two[:, :1])
    assert (margin[1, :, 3, 4] == 0).all()


def test_prediction_logits_are_the_resized_margin() -> None:
    torch.manual_seed(0)
    features, prototypes = torch.randn(2, 16, 5, 6), torch.randn(2, 16)
    predicted = prediction_logits(features, margin_direction(prototypes), 3.0, (20, 18))
    resized = F.interpolate(cosine_logits(features, prototypes, 3.0), (20, 18), mode="bilinear")
    assert predicted.shape == (2, 1, 20, 18)
    torch.testing.assert_close(predicted[:, 0], resized[:, 1] - resized[:, 0])
    two_class = torch.cat([torch.zeros_like(predicted), predicted], dim=1)
    torch.testing.assert_close(two_class.softmax(dim=1), resized.softmax(dim=1))


class Identity(Backbone):
    out_channels, stride = 3, 1

    def __init__(self) -> None:
        super().__init__(frozen=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def test_baseline_labels_pixels_by_nearest_prototype() -> None:
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    support_mask = torch.zeros(4, 4)
    support_mask[:2] = 1
    support_image = torch.where(support_mask.bool(), red[:, None, None], blue[:, None, None])
    query_mask = torch.zeros(4, 4, dtype=torch.bool)
    query_mask[:, 1] = True
    query_image = torch.where(query_mask, red[:, None, None] * 0.5, blue[:, None, None])
    learner = PrototypeBaseline(LearnerOptions(backbone="identity"), Identity())
    support = LabelledImages(support_image[None], support_mask[None], torch.zeros(1, 4, 4).bool())
    logits = learner.adapt(support)(query_image[None])
    assert logits.shape == (1, 1, 4, 4)
    assert torch.equal(logits[0, 0] > 0, query_mask)


def test_cosine_logits_divide_by_the_clamped_feature_norms() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 3, 4, generator=g)
    features[0, :, 0, 0] = 0  # a zero vector: norm clamped as F.normalize clamps it
    prototypes = torch.randn(2, 5, generator=g)
    norms = feature_norms(features)
    torch.testing.assert_close(norms, features.norm(dim=1, keepdim=True).clamp_min(1e-12))
    expected = 3.0 * torch.einsum(
        "bchw,pc->bphw", F.normalize(features, dim=1), F.normalize(prototypes, dim=1)
    )
    torch.testing.assert_close(cosine_logits(features, prototypes, 3.0), expected)
