import math

import torch
import torch.nn.functional as F

from fewseg.learners.losses import balanced_pixel_weights, foreground_bce, weighted_bce


def bce(x: float, t: float) -> float:
    return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))


def test_foreground_bce_is_the_mean_of_the_foreground_and_background_means():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])
    masks = torch.tensor([[[1, 0], [0, 0]]])
    ignore = torch.tensor([[[False, False], [False, True]]])
    foreground = bce(0.5, 1)
    background = (bce(-1.0, 0) + bce(2.0, 0)) / 2
    expected = (foreground + background) / 2
    assert abs(foreground_bce(logits, masks, ignore).item() - expected) < 1e-6


def test_foreground_bce_with_one_kind_of_pixel_is_that_kind_s_mean():
    logits = torch.tensor([[[0.3, -0.7]]])
    masks = torch.zeros(1, 1, 2, dtype=torch.long)
    ignore = torch.zeros(1, 1, 2, dtype=torch.bool)
    expected = (bce(0.3, 0) + bce(-0.7, 0)) / 2
    assert abs(foreground_bce(logits, masks, ignore).item() - expected) < 1e-6
    assert foreground_bce(logits, masks, torch.ones_like(ignore)).item() == 0.0


def test_weights_sum_to_one_and_ignore_weighs_nothing():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 8, 8, generator=generator) > 0.8).long()
    ignore = torch.rand(3, 8, 8, generator=generator) > 0.9
    target, weights = balanced_pixel_weights(masks, ignore)
    assert torch.equal(target, masks.float())
    assert abs(weights.sum().item() - 1.0) < 1e-6
    assert bool((weights[ignore] == 0).all())


def test_weighted_bce_gradients_equal_the_unfused_formula_to_second_order():
    generator = torch.Generator().manual_seed(1)
    masks = (torch.rand(2, 6, 6, generator=generator) > 0.7).long()
    ignore = torch.rand(2, 6, 6, generator=generator) > 0.9
    target, weights = balanced_pixel_weights(masks, ignore, torch.float64)
    logits = torch.randn(2, 1, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)

    def unfused(x: torch.Tensor) -> torch.Tensor:
        losses = F.binary_cross_entropy_with_logits(
            x.reshape(target.shape), target, reduction="none"
        )
        return (losses * weights).sum()

    for loss in (weighted_bce(logits, target, weights), unfused(logits)):
        assert loss.dtype == torch.float64
    (g1,) = torch.autograd.grad(weighted_bce(logits, target, weights), logits, create_graph=True)
    (g2,) = torch.autograd.grad(unfused(logits), logits, create_graph=True)
    assert torch.allclose(g1, g2, atol=1e-12)
    (h1,) = torch.autograd.grad(g1.square().sum(), logits)
    (h2,) = torch.autograd.grad(g2.square().sum(), logits)
    assert torch.allclose(h1, h2, atol=1e-12)


def test_weighted_bce_composes_with_vmap():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 1, 4, 4, generator=generator)
    masks = (torch.rand(3, 1, 4, 4, generator=generator) > 0.5).long()
    ignore = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    batched = torch.vmap(foreground_bce)(logits, masks, ignore)
    one_by_one = torch.stack([foreground_bce(*a) for a in zip(logits, masks, ignore, strict=True)])
    assert torch.allclose(batched, one_by_one, atol=1e-6)
