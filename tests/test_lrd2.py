"""``lrd2``: the probe's optimum differentiated by the implicit function theorem against
finite differences of the exact (Newton) optimum, the soft IoU loss by hand, an initialised
learner equal to ``probe``, and meta-gradients reaching every meta-parameter (also
``imaml``'s θ₀)."""

from __future__ import annotations

import math

import pytest
import torch
from test_correlation_model import shots
from test_probe import newton_reference

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners import build_learner
from fewseg.learners.losses import soft_iou_loss
from fewseg.models.probe import fit_probe, probe_optimum


def separable_cells() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    cells = torch.randn(50, 4, dtype=torch.float64)
    fraction = (cells[:, 0] + 0.7 * torch.randn(50, dtype=torch.float64) > 0.3).double()
    return cells, fraction / fraction.sum(), (1 - fraction) / (1 - fraction).sum()


def test_the_optimum_differentiates_as_the_exact_solution() -> None:
    cells, fg_weight, bg_weight = separable_cells()
    direction = torch.randn(5, dtype=torch.float64)  # a fixed readout of (weights, bias)

    def readout(cells: torch.Tensor, decay: float) -> torch.Tensor:
        return newton_reference(cells, fg_weight, bg_weight, decay) @ direction

    decay = torch.tensor(1e-2, dtype=torch.float64, requires_grad=True)
    variable = cells.clone().requires_grad_(True)
    weights, bias = probe_optimum(variable, fg_weight, bg_weight, decay)
    torch.testing.assert_close(
        torch.cat([weights, bias[None]]).detach(),
        newton_reference(cells, fg_weight, bg_weight, 1e-2),
        atol=1e-6,
        rtol=0,
    )
    (torch.cat([weights, bias[None]]) @ direction).backward()

    eps = 1e-6
    by_decay = (readout(cells, 1e-2 + eps) - readout(cells, 1e-2 - eps)) / (2 * eps)
    torch.testing.assert_close(decay.grad, by_decay, atol=0, rtol=1e-4)
    for i, j in [(0, 0), (7, 2), (31, 3)]:
        plus, minus = cells.clone(), cells.clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        by_cell = (readout(plus, 1e-2) - readout(minus, 1e-2)) / (2 * eps)
        torch.testing.assert_close(variable.grad[i, j], by_cell, atol=1e-6, rtol=1e-4)


def test_the_soft_iou_loss_by_hand() -> None:
    log_odds = torch.tensor([0.0, 2.0, -2.0, 5.0])
    target = torch.tensor([1.0, 0.5, 0.0, 1.0])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last cell ignored
    p = torch.sigmoid(log_odds[:3])
    intersection = p[0] * 1 + p[1] * 0.5
    union = (p[0] + 1 - p[0]) + (p[1] + 0.5 - 0.5 * p[1]) + p[2]
    torch.testing.assert_close(soft_iou_loss(log_odds, target, weight), 1 - intersection / union)
    assert float(soft_iou_loss(torch.full((3,), 30.0), torch.ones(3), torch.ones(3))) < 1e-6


def test_an_initialised_lrd2_predicts_as_the_probe() -> None:
    support, query = shots(3, 64), torch.rand(2, 3, 64, 64)
    lrd2, probe = build_learner("lrd2").eval(), build_learner("probe").eval()
    # equal up to the solver's tolerance: lrd2's decay is exp(log 1e-3) in float32, and with
    # gradients it takes one Newton step from L-BFGS's optimum
    torch.testing.assert_close(
        lrd2.adapt(support)(query), probe.adapt(support)(query), atol=5e-3, rtol=0
    )
    torch.testing.assert_close(
        lrd2.cell_predictor(support)(query), probe.cell_predictor(support)(query), atol=5e-3, rtol=0
    )


def test_without_a_gradient_the_optimum_is_the_fit_itself() -> None:
    cells, fg_weight, bg_weight = separable_cells()
    decay = torch.tensor(1e-2, dtype=torch.float64, requires_grad=True)
    fitted = fit_probe(cells, fg_weight, bg_weight, 1e-2)
    for skipped in (
        probe_optimum(cells, fg_weight, bg_weight, 1e-2),  # nothing requires a gradient
        torch.no_grad()(probe_optimum)(cells.requires_grad_(True), fg_weight, bg_weight, decay),
    ):
        assert all(torch.equal(a, b) for a, b in zip(skipped, fitted, strict=True))


CALIBRATION = {"log_decay", "log_scale", "shift", "log_channel_scale"}


@pytest.mark.parametrize(
    ("name", "extra", "support_shots", "names"),
    [
        ("lrd2", {}, 3, CALIBRATION),
        ("imaml", {}, 1, CALIBRATION | {"initial_weights"}),
        ("imaml", {"shot_decay": True}, 3, CALIBRATION | {"initial_weights", "decay_exponent"}),
        ("lrd2", {"area_prior": True}, 3, CALIBRATION | {"area_gain"}),
        ("imaml", {"area_prior": True}, 1, CALIBRATION | {"initial_weights", "area_gain"}),
    ],
)
def test_meta_gradients_reach_every_meta_parameter_and_lower_the_loss(
    name: str, extra: dict, support_shots: int, names: set[str]
) -> None:
    images = shots(4, 96)
    k = support_shots
    support = LabelledImages(images.images[:k], images.masks[:k], images.ignore[:k])
    query = LabelledImages(images.images[3:], images.masks[3:], images.ignore[3:])
    episode = EpisodeTensors(0, support, query)
    learner = build_learner(name, {"outer_lr": 0.05, **extra}).train()
    optimizer = learner.make_optimizer()
    assert {n for n, _ in learner.named_parameters() if _.requires_grad} == names
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        losses.append(learner.meta_gradients([episode])["loss"])
        if not losses[1:]:
            assert all(bool(p.grad.abs().sum() > 0) for p in learner.outer_parameters())
        optimizer.step()
    assert losses[-1] < losses[0]


def test_an_area_prior_shifts_the_log_odds_by_its_gain_times_the_support_area() -> None:
    """With the gain at zero it predicts as without; with a gain g every query cell's
    log-odds move by g·logit(the support's foreground fraction of its valid pixels), here
    by hand: the square covers a quarter of each image, the ignored left quarter none of it,
    so the fraction is 1/3 and the shift g·log(1/2)."""
    images = shots(4, 96)
    ignore = torch.zeros_like(images.ignore)
    ignore[..., :24] = True
    support = LabelledImages(images.images[:3], images.masks[:3], ignore[:3])
    query = images.images[3:]
    with_prior = build_learner("lrd2", {"area_prior": True}).eval()
    plain = build_learner("lrd2").eval()
    assert float(with_prior.area_gain.detach()) == 0
    assert torch.equal(with_prior.adapt(support)(query), plain.adapt(support)(query))
    with torch.no_grad():
        with_prior.area_gain.fill_(0.8)
        shifted = with_prior.cell_predictor(support)(query) - plain.cell_predictor(support)(query)
    torch.testing.assert_close(shifted, torch.full_like(shifted, 0.8 * math.log(0.5)))


def test_a_bad_outer_lr_is_one_line_error() -> None:
    with pytest.raises(FewSegError, match="lrd2: outer_lr must be > 0, got 0"):
        build_learner("lrd2", {"outer_lr": 0})
