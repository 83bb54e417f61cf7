"""The support-fitted linear probe: its training cells and weights by hand, its fit against
Newton's method, how the correlation model feeds it to the decoder (fitted on all the
shots, even when each shot is compared alone), ``--probe mean`` in every family's
predictions, and the experiment that scores it."""

from __future__ import annotations

import pytest
import torch
from imagefiles import box_mask, scene
from test_correlation_model import shots

from fewseg.errors import FewSegError
from fewseg.learners import build_learner
from fewseg.learners.correlation_tasks import CorrelationTasks
from fewseg.metrics import SegmentationScores
from fewseg.models.correlation import CorrelationModel
from fewseg.models.probe import (
    fit_probe,
    fit_support_probe,
    probe_examples,
    probe_features,
    probe_loss,
    read_probe,
)
from fewseg.models.upsample import bilinear_resize


def test_each_level_weighs_the_same_at_the_finest_grid() -> None:
    torch.manual_seed(0)
    fine, coarse = torch.randn(2, 3, 4, 4) * 5, torch.randn(2, 6, 2, 2) * 0.1
    features = probe_features([fine, coarse])
    assert features.shape == (2, 9, 4, 4)
    torch.testing.assert_close(features[:, :3].norm(dim=1), torch.ones(2, 4, 4))
    # the coarse level: unit cells, bilinearly resized (corners keep their cell's value)
    unit = coarse / coarse.norm(dim=1, keepdim=True)
    torch.testing.assert_close(features[:, 3:, 0, 0], unit[:, :, 0, 0])
    torch.testing.assert_close(features[:, 3:, 3, 3], unit[:, :, 1, 1])


def test_the_training_cells_are_the_valid_ones_each_class_weighing_one() -> None:
    features = torch.arange(4.0).view(1, 1, 2, 2)  # one channel, cells 0 1 / 2 3
    masks = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]])
    ignore = torch.zeros(1, 4, 4, dtype=torch.bool)
    ignore[0, 2:, 2:] = True  # cell 3 wholly ignored
    ignore[0, 0, 2] = True  # cell 1: 3 of 4 pixels valid, kept
    cells, fg_weight, bg_weight = probe_examples(features, masks, ignore)
    assert cells.flatten().tolist() == [0.0, 1.0, 2.0]
    # foreground fractions 1, 0, 1/4 (sum 1.25); background 0, 1, 3/4 (sum 1.75)
    torch.testing.assert_close(fg_weight, torch.tensor([1 / 1.25, 0.0, 0.25 / 1.25]))
    torch.testing.assert_close(bg_weight, torch.tensor([0.0, 1 / 1.75, 0.75 / 1.75]))


def newton_reference(
    cells: torch.Tensor,
    fg_weight: torch.Tensor,
    bg_weight: torch.Tensor,
    decay: float,
    centre: torch.Tensor | None = None,
) -> torch.Tensor:
    """The probe's objective minimised by Newton's method in float64: (weights, bias); the
    weights decay towards ``centre`` (None: zero)."""
    x = torch.cat([cells.double(), torch.ones(len(cells), 1, dtype=torch.float64)], dim=1)
    penalty = torch.full((x.shape[1],), 2 * decay, dtype=torch.float64)
    penalty[-1] = 0
    target = torch.zeros(x.shape[1], dtype=torch.float64)
    if centre is not None:
        target[:-1] = centre.double()
    return newton_minimum(x, fg_weight, bg_weight, penalty, target)


def newton_minimum(
    x: torch.Tensor,
    fg_weight: torch.Tensor,
    bg_weight: torch.Tensor,
    penalty: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """θ minimising the two classes' weighted logistic losses of x·θ, halved, plus
    Σ penalty/2·(θ − target)², by 50 Newton steps from zero in float64."""
    fg, bg = 0.5 * fg_weight.double(), 0.5 * bg_weight.double()
    theta = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(x @ theta)
        gradient = x.T @ (bg * p - fg * (1 - p)) + penalty * (theta - target)
        hessian = x.T @ (x * ((fg + bg) * p * (1 - p))[:, None]) + torch.diag(penalty)
        theta = theta - torch.linalg.solve(hessian, gradient)
    return theta


@pytest.mark.parametrize("decay", [1e-3, 1e-1])
def test_the_fit_reaches_the_newton_solution(decay: float) -> None:
    torch.manual_seed(1)
    cells = torch.randn(60, 5)
    fraction = (cells[:, 0] + 0.5 * torch.randn(60) > 0.8).float()
    fraction[:3] = 0.5  # cells on a mask's edge
    fg_weight, bg_weight = fraction / fraction.sum(), (1 - fraction) / (1 - fraction).sum()
    weights, bias = fit_probe(cells, fg_weight, bg_weight, decay)
    expected = newton_reference(cells, fg_weight, bg_weight, decay)
    torch.testing.assert_close(
        torch.cat([weights, bias[None]]).double(), expected, atol=2e-4, rtol=0
    )
    loss = probe_loss(weights, bias, cells, fg_weight, bg_weight, decay)
    assert float(loss) < float(probe_loss(weights * 0.9, bias, cells, fg_weight, bg_weight, decay))


def test_a_rare_foreground_still_gets_positive_log_odds() -> None:
    """One foreground cell among nine: without the class balance the bias would keep
    everything background."""
    support = torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * 8 + [[0.1, 1.0]]).T.reshape(1, 2, 1, 10)
    masks = torch.zeros(1, 1, 10, dtype=torch.long)
    masks[0, 0, 0] = 1
    ignore = torch.zeros(1, 1, 10, dtype=torch.bool)
    query = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).T.reshape(1, 2, 1, 2)
    log_odds = read_probe(query, fit_support_probe(support, masks, ignore))
    assert log_odds.shape == (1, 1, 2)
    assert float(log_odds[0, 0, 0]) > 0 > float(log_odds[0, 0, 1])


def test_a_support_without_cells_gives_a_zero_probe() -> None:
    weights, bias = fit_probe(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0))
    assert weights.tolist() == [0.0, 0.0, 0.0] and float(bias) == 0.0


@pytest.fixture(scope="module")
def model() -> CorrelationModel:
    torch.manual_seed(0)
    return CorrelationModel("mobilenet_v2", pretrained=True, probe=True).eval()


def test_the_probe_joins_the_finest_group_as_one_more_channel(model: CorrelationModel) -> None:
    support = shots(2, 64)
    query = torch.rand(1, 3, 64, 64)
    groups, _ = model.inputs(query, support.images, support.masks, support.ignore)
    # stride 32: 4 blocks x 4 statistics + prior; stride 16: 7 x 4 + the probe
    assert [g.shape[1] for g in groups] == [17, 29]
    probe = model.probe_map(query, model.fit_probe(support.images, support.masks, support.ignore))
    assert probe.shape == (1, 4, 4)
    torch.testing.assert_close(groups[1][:, -1], probe.sigmoid())
    fitted = fit_support_probe(
        probe_features([model.encoder(support.images)[i] for i in model.probe_levels]),
        support.masks,
        support.ignore,
    )
    query_cells = probe_features([model.encoder(query)[i] for i in model.probe_levels])
    expected = read_probe(query_cells, fitted)
    torch.testing.assert_close(probe, expected)


def test_each_shot_compared_alone_sees_the_probe_of_all_shots(model: CorrelationModel) -> None:
    support = shots(3, 64)
    query = torch.rand(1, 3, 64, 64)
    inputs = CorrelationTasks(model, shot_mean=True).inputs(query, support)
    assert inputs.shots == 3 and len(inputs.groups[1]) == 3
    joint = model.probe_map(query, model.fit_probe(support.images, support.masks, support.ignore))
    alone = model.probe_map(
        query, model.fit_probe(support.images[:1], support.masks[:1], support.ignore[:1])
    )
    assert not torch.allclose(joint, alone)
    for row in inputs.groups[1]:
        torch.testing.assert_close(row[None, -1], joint.sigmoid())


def test_without_the_probe_the_decoder_is_as_before() -> None:
    plain = CorrelationModel("mobilenet_v2", pretrained=False)
    assert not plain.probe
    assert sum(p.numel() for p in plain.decoder.parameters()) == 73_521


def test_the_probe_mean_experiment_scores_the_mean_of_the_two_log_odds() -> None:
    from fewseg.data.spec import open_source
    from fewseg.episodes.sampler import episode_plan
    from fewseg.episodes.tensors import load_resized_episode
    from fewseg.experiments.probe_mean import probe_mean_scores

    source = open_source("synthetic:images=4,size=64")
    plan = episode_plan(source, source.fold_split("0").test, 2, 3, 0)
    torch.manual_seed(0)
    learner = build_learner("protonet", {"model": "correlation", "hidden": 8}).eval()
    scores = probe_mean_scores(learner, source, plan, 64)
    expected = {name: SegmentationScores(plan.classes_used) for name in scores}
    for episode in plan.episodes:
        tensors = load_resized_episode(source, episode, 64)
        support, query = tensors.support, tensors.query
        own = learner.adapt(support)(query.images)[0, 0]
        model = learner.tasks.model
        probe = model.probe_map(
            query.images, model.fit_probe(support.images, support.masks, support.ignore)
        )
        probe = torch.nn.functional.interpolate(probe[:, None], size=(64, 64), mode="bilinear")
        for name, log_odds in (
            ("learner", own),
            ("probe", probe[0, 0]),
            ("mean", own + probe[0, 0]),
        ):
            expected[name].update(
                episode.class_index, log_odds > 0, query.masks[0], query.ignore[0]
            )
    for name, s in scores.items():
        assert (s.miou(), s.fbiou()) == (expected[name].miou(), expected[name].fbiou())
    with pytest.raises(FewSegError, match="needs a learner on the correlation model"):
        probe_mean_scores(build_learner("baseline", {}), source, plan, 64)


def test_a_probe_option_outside_the_choices_is_one_line_error() -> None:
    for learner in ("protonet", "maml"):
        with pytest.raises(FewSegError, match="probe must be one of none, input, mean, got 'yes'"):
            build_learner(learner, {"model": "correlation", "probe": "yes"})


def test_probe_mean_averages_the_log_odds_from_two_shots_on() -> None:
    torch.manual_seed(0)
    plain = CorrelationModel("mobilenet_v2", pretrained=True).eval()
    tasks = CorrelationTasks(plain, probe_mean=True)
    alone = CorrelationTasks(plain)
    query = torch.rand(1, 3, 64, 64)
    one = shots(1, 64)
    torch.testing.assert_close(tasks.predictor(one)(query), alone.predictor(one)(query))
    two = shots(2, 64)
    probe = plain.probe_map(query, plain.fit_probe(two.images, two.masks, two.ignore))
    probe = torch.nn.functional.interpolate(probe[:, None], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(
        tasks.predictor(two)(query), 0.5 * (alone.predictor(two)(query) + probe)
    )


@pytest.mark.parametrize("learner", ["protonet", "maml", "finetune"])
def test_every_learner_on_the_correlation_model_predicts_with_the_probe_mean(
    learner: str,
) -> None:
    support, query = shots(2, 64), torch.rand(1, 3, 64, 64)
    predictions = {}
    for probe in ("none", "mean"):
        torch.manual_seed(0)
        options = {"model": "correlation", "hidden": 8, "probe": probe}
        if learner != "protonet":
            options["inner_steps"] = 1
        built = build_learner(learner, options).eval()
        predictions[probe] = built.adapt(support)(query)
    model = built.tasks.model
    probe_map = model.probe_map(
        query, model.fit_probe(support.images, support.masks, support.ignore)
    )
    probe_map = torch.nn.functional.interpolate(probe_map[:, None], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(predictions["mean"], 0.5 * (predictions["none"] + probe_map))


def test_the_probe_learner_is_the_correlation_models_probe_resized(model: CorrelationModel) -> None:
    learner = build_learner("probe", {"enlarge": 1}).eval()
    assert not learner.trainable and learner.encoder.taps == (10, 13, 16, 17)
    support = shots(3, 64)
    query = torch.rand(2, 3, 64, 64)
    fitted = model.fit_probe(support.images, support.masks, support.ignore)
    expected = bilinear_resize(model.probe_map(query, fitted)[:, None], (64, 64))
    assert torch.allclose(learner.adapt(support)(query), expected, atol=1e-5)


def test_the_probe_segments_the_object_it_was_shown_elsewhere_in_a_new_image() -> None:
    """Through the public API: three shots of a red box on a textured green ground, the query
    with the box at a place no shot had it (so position alone cannot explain the mask)."""
    import fewseg

    boxes = [(20, 30, 70, 90), (50, 10, 100, 60), (10, 60, 60, 120)]
    query_box = (60, 70, 110, 130)
    masks = [box_mask(120, 140, b) > 0 for b in boxes]
    model = fewseg.load("probe", size=128)
    predicted = model.adapt([scene(120, 140, b) for b in boxes], masks)(
        [scene(120, 140, query_box)]
    )
    truth = box_mask(120, 140, query_box) > 0
    assert (predicted[0] & truth).sum() / (predicted[0] | truth).sum() > 0.8


def test_the_enlarged_probe_reads_the_backbone_at_the_enlarged_size() -> None:
    """enlarge 1.5: the probe of the images bilinearly enlarged by 1.5 (torch's own
    interpolation as the reference), its finer log-odds resized back to the input."""
    torch.manual_seed(0)
    enlarged = build_learner("probe", {"enlarge": 1.5}).eval()
    plain = build_learner("probe", {"enlarge": 1}).eval()
    support = shots(2, 64)
    query = torch.rand(1, 3, 64, 64)
    cells = enlarged._cells(query)
    assert cells.shape[-2:] == (6, 6)  # 96 / 16, against 4 x 4 as given

    def bigger(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(images, (96, 96), mode="bilinear")

    assert torch.allclose(cells, plain._cells(bigger(query)), atol=1e-5)
    fitted = fit_support_probe(plain._cells(bigger(support.images)), support.masks, support.ignore)
    expected = bilinear_resize(read_probe(plain._cells(bigger(query)), fitted)[:, None], (64, 64))
    assert torch.allclose(enlarged.adapt(support)(query), expected, atol=1e-3)  # L-BFGS tolerance


@pytest.mark.parametrize("name", ["probe", "lrd2"])
@pytest.mark.parametrize("value", [0.5, 5.0])
def test_an_enlargement_out_of_range_is_a_one_line_error(name: str, value: float) -> None:
    with pytest.raises(FewSegError, match=rf"^{name}: enlarge must be in \[1, 4\], got {value}$"):
        build_learner(name, {"enlarge": value})


def test_the_probe_learner_is_training_free() -> None:
    with pytest.raises(FewSegError, match="learner 'probe' is training-free"):
        build_learner("probe").meta_gradients([])


def test_a_feature_store_keeps_the_probes_cells_channels_last_and_answers_them_exactly() -> None:
    """The probe's encoder outputs the cells themselves (probe_cells), so an evaluation's store
    keeps them: one computation per image, a support set of stored cells equal to the cells of
    the backbone's levels, in the channels-last layout whose per-cell rows are contiguous."""
    from fewseg.engine.features import FeatureStore, attached
    from fewseg.episodes.image_keys import name_images

    learner = build_learner("probe", {"enlarge": 1}).eval()
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64)
    output, learner.encoder.output = learner.encoder.output, None
    expected = probe_features(list(learner.encoder(images)))
    learner.encoder.output = output
    store = FeatureStore()
    with attached({learner.encoder: store}):
        learner._cells(name_images(images.clone(), ["a", "b", "c"]))
        support = learner._cells(name_images(images[[2, 0]].clone(), ["c", "a"]))
    assert (store.misses, store.hits) == (3, 2)
    assert torch.equal(support, expected[[2, 0]])
    assert support.is_contiguous(memory_format=torch.channels_last)


def test_reading_the_probe_sums_the_same_whatever_the_querys_memory_layout() -> None:
    torch.manual_seed(0)
    query = torch.randn(1, 40, 7, 9)  # one image: einsum alone sums in another order
    probe = (torch.randn(40), torch.tensor(0.3))
    channels_last = query.contiguous(memory_format=torch.channels_last)
    assert torch.equal(read_probe(channels_last, probe), read_probe(query, probe))
