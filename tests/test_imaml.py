"""``imaml``: the probe's fit decaying towards a meta-learned initialisation θ₀. Its optimum
and the implicit gradient with respect to θ₀ against Newton's method and finite
differences, the fit's pull towards θ₀, an initialised learner equal to ``lrd2``
(meta-gradients reaching θ₀: tests/test_lrd2.py)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_correlation_model import shots
from test_lrd2 import separable_cells
from test_probe import newton_minimum, newton_reference

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners import build_learner
from fewseg.models.probe import (
    fit_probe,
    labelled_cells,
    probe_examples,
    probe_loss,
    probe_optimum,
)


def test_the_optimum_near_a_centre_differentiates_as_the_exact_solution() -> None:
    cells, fg_weight, bg_weight = separable_cells()
    centre = torch.tensor([1.5, -0.5, 0.25, 2.0], dtype=torch.float64)
    direction = torch.randn(5, dtype=torch.float64)
    variable = centre.clone().requires_grad_(True)
    weights, bias = probe_optimum(cells, fg_weight, bg_weight, 1e-2, centre=variable)
    expected = newton_reference(cells, fg_weight, bg_weight, 1e-2, centre)
    fitted = torch.cat([weights, bias[None]]).detach()
    torch.testing.assert_close(fitted, expected, atol=1e-6, rtol=0)
    # not the optimum without the centre
    assert (expected - newton_reference(cells, fg_weight, bg_weight, 1e-2)).abs().max() > 0.1
    (torch.cat([weights, bias[None]]) @ direction).backward()
    eps = 1e-6
    for j in range(4):
        plus, minus = centre.clone(), centre.clone()
        plus[j] += eps
        minus[j] -= eps
        by_centre = (
            newton_reference(cells, fg_weight, bg_weight, 1e-2, plus) @ direction
            - newton_reference(cells, fg_weight, bg_weight, 1e-2, minus) @ direction
        ) / (2 * eps)
        torch.testing.assert_close(variable.grad[j], by_centre, atol=1e-6, rtol=1e-4)


def test_a_strong_decay_keeps_the_fit_at_its_centre() -> None:
    cells, fg_weight, bg_weight = separable_cells()
    centre = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    weights, bias = fit_probe(cells, fg_weight, bg_weight, 1e4, centre=centre)
    torch.testing.assert_close(weights, centre, atol=1e-4, rtol=0)
    assert float(probe_loss(weights, bias, cells, fg_weight, bg_weight, 1e4, centre)) < float(
        probe_loss(weights, bias, cells, fg_weight, bg_weight, 1e4)
    )


def test_the_decay_along_the_centre_is_the_fraction_given() -> None:
    """By hand, no cells: centre (3, 4), weights (1, 1), so the offset (−2, −3) has a
    component −3.6 along the centre's direction (0.6, 0.8); with that component's decay a
    quarter of the rest's, the penalty is λ·(13 − (1 − 1/4)·3.6²) = λ·3.28."""
    centre = torch.tensor([3.0, 4.0], dtype=torch.float64)
    weights, bias = torch.ones(2, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    none = torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    loss = probe_loss(weights, bias, none[0], none[1], none[1], 0.5, centre, 0.25)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 3.28, dtype=torch.float64))
    same = probe_loss(weights, bias, none[0], none[1], none[1], 0.5, centre, 1.0)
    torch.testing.assert_close(same, torch.tensor(0.5 * 13, dtype=torch.float64))


def rescaled_centre_reference(
    cells: torch.Tensor,
    fg_weight: torch.Tensor,
    bg_weight: torch.Tensor,
    decay: float,
    centre: torch.Tensor,
    centre_decay: float,
) -> torch.Tensor:
    """(weights, bias) minimising the probe's losses + decay·|δ|² + decay·ρ·|c|²·(a − 1)²
    over δ, a and the bias, the weights δ + a·c, ρ = f / (1 − f): the centre rescaled by
    the fit, by Newton's method in float64 (the decay f·λ along c, :func:`probe_loss`,
    is this objective minimised over a)."""
    rho = centre_decay / (1 - centre_decay)
    ones = torch.ones(len(cells), 1, dtype=torch.float64)
    x = torch.cat([cells, (cells @ centre)[:, None], ones], dim=1)
    penalty = torch.full((x.shape[1],), 2 * decay, dtype=torch.float64)
    penalty[-2] *= rho * centre.square().sum()
    penalty[-1] = 0
    target = torch.zeros(x.shape[1], dtype=torch.float64)
    target[-2] = 1
    theta = newton_minimum(x, fg_weight, bg_weight, penalty, target)
    return torch.cat([theta[:-2] + theta[-2] * centre, theta[-1:]])


def test_a_centre_the_fit_may_rescale_differentiates_as_the_exact_solution() -> None:
    """:func:`probe_optimum` with ``centre_decay`` against the fit that rescales its centre
    (:func:`rescaled_centre_reference`), and its gradients with respect to the centre and
    ``centre_decay`` against that reference's finite differences."""
    cells, fg_weight, bg_weight = separable_cells()
    centre = torch.tensor([1.5, -0.5, 0.25, 2.0], dtype=torch.float64)
    readout = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    variable = centre.clone().requires_grad_(True)
    fraction = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    weights, bias = probe_optimum(cells, fg_weight, bg_weight, 1e-2, variable, fraction)
    expected = rescaled_centre_reference(cells, fg_weight, bg_weight, 1e-2, centre, 0.2)
    torch.testing.assert_close(
        torch.cat([weights, bias[None]]).detach(), expected, atol=1e-6, rtol=0
    )
    rigid = newton_reference(cells, fg_weight, bg_weight, 1e-2, centre)
    assert (expected - rigid).abs().max() > 0.1  # not the fit that keeps the centre's scale
    (torch.cat([weights, bias[None]]) @ readout).backward()
    eps = 1e-6

    def value(centre: torch.Tensor, fraction: float) -> torch.Tensor:
        return (
            rescaled_centre_reference(cells, fg_weight, bg_weight, 1e-2, centre, fraction) @ readout
        )

    # the derivatives are taken at L-BFGS's optimum, whose gradient is ~1e-5 from zero here
    for j in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[j] = eps
        by_centre = (value(centre + step, 0.2) - value(centre - step, 0.2)) / (2 * eps)
        torch.testing.assert_close(variable.grad[j], by_centre, atol=2e-5, rtol=1e-4)
    by_fraction = (value(centre, 0.2 + eps) - value(centre, 0.2 - eps)) / (2 * eps)
    torch.testing.assert_close(fraction.grad, by_fraction, atol=2e-5, rtol=1e-4)
    assert abs(float(fraction.grad)) > 1e-2


def test_centre_decay_applies_at_prediction_only_and_lets_a_support_weaken_the_prior() -> None:
    """θ₀ set against the support's object: meta-training fits as plain ``imaml`` does;
    predicting, the fit with ``centre_decay`` 0.1 keeps less of θ₀'s direction than the
    plain fit, and its prediction differs."""
    support, query = support_and_query(1)
    rescaling = build_learner("imaml", {"centre_decay": 0.1})
    plain = build_learner("imaml")
    cells = plain._scaled_cells(support.images)
    examples = probe_examples(cells, support.masks, support.ignore)
    with torch.no_grad():
        foreground = (examples[0] * examples[1][:, None]).sum(0)
        background = (examples[0] * examples[2][:, None]).sum(0)
        for learner in (rescaling, plain):
            learner.initial_weights.copy_(-20 * (foreground - background))  # the wrong prior
            learner.train()
    torch.testing.assert_close(
        rescaling.fitted_probe(*examples, 1)[0], plain.fitted_probe(*examples, 1)[0]
    )
    rescaling.eval()
    plain.eval()
    with torch.no_grad():
        direction = F.normalize(plain.initial_weights, dim=0)
        kept = float(rescaling.fitted_probe(*examples, 1)[0] @ direction)
        rigid = float(plain.fitted_probe(*examples, 1)[0] @ direction)
        assert kept < rigid - 1
        assert not torch.equal(
            rescaling.adapt(support)(query.images), plain.adapt(support)(query.images)
        )


def test_an_initialised_imaml_predicts_as_lrd2() -> None:
    support, query = shots(3, 64), torch.rand(2, 3, 64, 64)
    imaml, lrd2 = build_learner("imaml").eval(), build_learner("lrd2").eval()
    assert torch.equal(imaml.initial_weights, torch.zeros(imaml.encoder.out_channels))
    assert torch.equal(imaml.adapt(support)(query), lrd2.adapt(support)(query))
    by_shots = build_learner("imaml", {"shot_decay": True}).eval()
    assert float(by_shots.decay_exponent.detach()) == 0
    assert torch.equal(by_shots.adapt(support)(query), lrd2.adapt(support)(query))


def support_and_query(support_count: int) -> tuple[LabelledImages, LabelledImages]:
    """``support_count`` shots of the square object and one query of it."""
    images = shots(support_count + 1, 96)
    return images.select(range(support_count)), images.select([support_count])


@pytest.mark.parametrize("activation", ["relu", "none"])
def test_an_adapter_starts_as_the_identity_and_is_meta_learned_at_a_tenth_of_the_rate(
    activation: str,
) -> None:
    """The residual map of the cells: with its up-projection zero it changes nothing; the
    first meta-gradient reaches the up-projection only, the next ones the down-projection
    too, and the loss falls."""
    support, query = support_and_query(3)
    options = {"adapter": 8, "adapter_activation": activation, "outer_lr": 0.05}
    adapted, plain = build_learner("imaml", options), build_learner("imaml", {"outer_lr": 0.05})
    adapted.eval(), plain.eval()
    assert torch.equal(adapted.adapt(support)(query.images), plain.adapt(support)(query.images))
    adapted.train()
    optimizer = adapted.make_optimizer()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.05, 0.005])
    assert set(optimizer.param_groups[1]["params"]) == {adapted.adapter_down, adapted.adapter_up}
    episode = EpisodeTensors(0, support, query)
    losses = []
    for step in range(5):
        optimizer.zero_grad()
        losses.append(adapted.meta_gradients([episode])["loss"])
        assert bool(adapted.adapter_up.grad.abs().sum() > 0)
        assert bool(adapted.adapter_down.grad.abs().sum() > 0) == (step > 0)
        optimizer.step()
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adapter": -1}, "imaml: adapter must be >= 0, got -1"),
        ({"transductive": -1}, "imaml: transductive must be >= 0, got -1"),
        ({"view_shots": -1}, "imaml: view_shots must be >= 0, got -1"),
        ({"centre_decay": 0.0}, "imaml: centre_decay must be in (0, 1], got 0.0"),
        ({"centre_decay": 1.5}, "imaml: centre_decay must be in (0, 1], got 1.5"),
        (
            {"support_views": "mirror,flip"},
            "imaml: support_views takes mirror or a scale in [0.25, 4] other than 1, got 'flip'",
        ),
        (
            {"support_views": "1"},
            "imaml: support_views takes mirror or a scale in [0.25, 4] other than 1, got '1'",
        ),
        (
            {"adapter_activation": "tanh"},
            "imaml: adapter_activation must be one of relu, none, got 'tanh'",
        ),
    ],
)
def test_a_bad_option_is_one_line_error(options: dict, message: str) -> None:
    with pytest.raises(FewSegError, match=f"^{re.escape(message)}$"):
        build_learner("imaml", options)


def test_a_prototype_centre_starts_at_theta0_and_its_gain_is_meta_learned() -> None:
    """With the gain at zero it predicts as plain ``imaml``; with a gain and a decay so strong
    that the fit stays at its centre, the fitted weights are θ₀ + g·(class-balanced mean
    foreground cell − mean background cell) computed by hand; the meta-gradient reaches the
    gain (at ten times the outer learning rate) and the loss falls."""
    support, query = support_and_query(3)
    centred = build_learner("imaml", {"prototype_centre": True, "outer_lr": 0.05}).eval()
    plain = build_learner("imaml", {"outer_lr": 0.05}).eval()
    assert float(centred.prototype_gain.detach()) == 0
    assert torch.equal(centred.adapt(support)(query.images), plain.adapt(support)(query.images))

    with torch.no_grad():
        centred.prototype_gain.fill_(2.0)
        centred.initial_weights.normal_(generator=torch.Generator().manual_seed(0))
        cells = centred._scaled_cells(support.images)  # [K,C,h,w]
        fraction, valid = labelled_cells(support.masks, support.ignore, cells.shape[-2:])
        rows = cells.permute(0, 2, 3, 1)[valid > 0.5]  # [n,C], the cells more than half valid
        fg = fraction[valid > 0.5]
        prototype_difference = (fg[:, None] * rows).sum(0) / fg.sum() - (
            (1 - fg)[:, None] * rows
        ).sum(0) / (1 - fg).sum()
        expected = centred.initial_weights + 2.0 * prototype_difference
        assert (expected - centred.initial_weights).abs().max() > 0.1
        # the fit moves from its centre by about 1/decay of the loss's gradient (≤ 1)
        centred.log_decay.fill_(math.log(1e5))
        weights, _ = centred.fitted_probe(*probe_examples(cells, support.masks, support.ignore), 3)
        torch.testing.assert_close(weights, expected, atol=1e-4, rtol=0)
        centred.log_decay.fill_(math.log(1e-3))
        centred.prototype_gain.zero_()
        centred.initial_weights.zero_()

    centred.train()
    optimizer = centred.make_optimizer()
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates == pytest.approx([0.05, 0.5])
    assert optimizer.param_groups[1]["params"] == [centred.prototype_gain]
    episode = EpisodeTensors(0, support, query)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        losses.append(centred.meta_gradients([episode])["loss"])
        assert bool(centred.prototype_gain.grad.abs() > 0)
        optimizer.step()
    assert losses[-1] < losses[0]
    assert float(centred.prototype_gain.detach()) != 0


def assert_plain_in_training_and_at_three_shots(
    learner: torch.nn.Module,
    plain: torch.nn.Module,
    support: LabelledImages,
    query: LabelledImages,
    first: torch.Tensor,
) -> None:
    """A prediction-only option at one shot: meta-training predicts ``first`` (plain
    ``imaml``'s log-odds of ``query``), and so does a three-shot support set."""
    learner.train()
    assert torch.equal(learner.cell_predictor(support)(query.images)[0], first)
    learner.eval()
    three, query_of_three = support_and_query(3)
    assert torch.equal(
        learner.adapt(three)(query_of_three.images), plain.adapt(three)(query_of_three.images)
    )


@pytest.mark.parametrize("area_gain", [None, 0.5])
def test_a_transductive_fit_adds_the_query_own_confident_cells(area_gain: float | None) -> None:
    """The second fit is the probe fitted, by hand here, on the support's examples and the
    query's cells whose first prediction is confident (probability > 0.7 foreground, < 0.3
    background), the query counting as one more shot (each class's query cells weigh one
    half at one shot); with more shots than the option, in meta-training, or without a
    confident cell it predicts as plain ``imaml``. With ``area_prior`` both predictions
    carry the support's offset (the square covers a quarter of the image: gain·log(1/3))."""
    support, query = support_and_query(1)
    prior = {} if area_gain is None else {"area_prior": True}
    learner = build_learner("imaml", {"transductive": 1, **prior}).eval()
    plain = build_learner("imaml", prior).eval()
    offset = 0.0 if area_gain is None else area_gain * math.log(1 / 3)
    with torch.no_grad():
        for model in (learner, plain):
            model.initial_weights.normal_(generator=torch.Generator().manual_seed(0))
            if area_gain is not None:
                model.area_gain.fill_(area_gain)
        first = plain.cell_predictor(support)(query.images)[0]
        cells = learner._scaled_cells(support.images)
        rows = learner._scaled_cells(query.images)[0].flatten(1).T
        examples, fg_weight, bg_weight = probe_examples(cells, support.masks, support.ignore)
        probability = first.flatten().sigmoid()
        foreground = (probability > 0.7).float()
        background = (probability < 0.3).float()
        assert 0 < foreground.sum() < len(rows) and background.sum() > 0
        weights, bias = fit_probe(
            torch.cat([examples, rows]),
            torch.cat([0.5 * fg_weight, 0.5 * foreground / foreground.sum()]),
            torch.cat([0.5 * bg_weight, 0.5 * background / background.sum()]),
            float(learner.log_decay.exp()),
            centre=learner.initial_weights,
        )
        expected = learner.calibrated(rows @ weights + bias, offset).reshape(first.shape)
        refitted = learner.cell_predictor(support)(query.images)[0]
        torch.testing.assert_close(refitted, expected, atol=1e-4, rtol=0)
        assert (refitted - first).abs().max() > 0.1

        assert_plain_in_training_and_at_three_shots(learner, plain, support, query, first)
        for model in (learner, plain):
            model.shift.fill_(-100.0)  # no cell above 0.7
        assert torch.equal(learner.adapt(support)(query.images), plain.adapt(support)(query.images))


def test_support_views_join_the_fit_each_weighing_as_much_as_the_images_given() -> None:
    """With a mirror and a 0.5 view the fit is the probe fitted, by hand here, on the cells of
    the support as given, mirrored left-right and at half size, each class's weights of each
    view a third; with more shots than ``view_shots`` or in meta-training it predicts as plain
    ``imaml``."""
    support, query = support_and_query(1)
    learner = build_learner("imaml", {"support_views": "mirror, 0.5"}).eval()
    plain = build_learner("imaml").eval()
    with torch.no_grad():
        for model in (learner, plain):
            model.initial_weights.normal_(generator=torch.Generator().manual_seed(0))
        views = [
            (support.images, support.masks, support.ignore),
            (support.images.flip(-1), support.masks.flip(-1), support.ignore.flip(-1)),
            (
                F.interpolate(support.images, size=(48, 48), mode="bilinear"),
                support.masks,
                support.ignore,
            ),
        ]
        examples = [probe_examples(learner._scaled_cells(v[0]), v[1], v[2]) for v in views]
        assert len(examples[2][0]) < len(examples[0][0])  # a coarser grid of cells
        cells, fg_weight, bg_weight = (torch.cat(parts) for parts in zip(*examples, strict=True))
        weights, bias = fit_probe(
            cells,
            fg_weight / 3,
            bg_weight / 3,
            float(learner.log_decay.exp()),
            centre=learner.initial_weights,
        )
        rows = learner._scaled_cells(query.images)[0]
        expected = learner.calibrated(torch.einsum("chw,c->hw", rows, weights) + bias)
        viewed = learner.cell_predictor(support)(query.images)[0]
        # L-BFGS stops at its tolerance: inputs equal to rounding give log-odds within 1e-3
        torch.testing.assert_close(viewed, expected, atol=2e-3, rtol=0)
        first = plain.cell_predictor(support)(query.images)[0]
        assert (viewed - first).abs().max() > 0.1

        assert_plain_in_training_and_at_three_shots(learner, plain, support, query, first)
