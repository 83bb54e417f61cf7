"""``--edges superpixels``: each superpixel takes its pixels' mean foreground probability;
checked by hand on tiny images."""

from __future__ import annotations

import pytest
import torch
from tiny_training import tiny_options

from fewseg.data.spec import open_source
from fewseg.engine import region_memo
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.protocol import score_plan_reference
from fewseg.engine.region_memo import RegionMemo
from fewseg.episodes.image_keys import name_images
from fewseg.episodes.sampler import episode_plan
from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD
from fewseg.learners import build_learner
from fewseg.refinement.options import InferenceOptions
from fewseg.refinement.pipeline import edge_aware
from fewseg.refinement.superpixels import felzenszwalb_regions, region_mean, superpixel_vote

EDGE = 40  # the colour edge: red left of column 40, blue from it on
# the learner's blurred probability: 1 at column 0 down to 1/60 at 59 (> 1/2 up to 29)
RAMP = 1 - torch.arange(60.0, dtype=torch.float64) / 60


def test_each_region_takes_its_mean() -> None:
    regions = torch.tensor([[0, 0, 1], [1, 1, 2]])
    values = torch.tensor([[0.2, 0.4, 0.9], [0.6, 0.0, 0.5]], dtype=torch.float64)
    expected = torch.tensor([[0.3, 0.3, 0.5], [0.5, 0.5, 0.5]], dtype=torch.float64)
    assert torch.allclose(region_mean(values, regions), expected)


def two_colour_image(height: int = 40, width: int = 60) -> torch.Tensor:
    image = torch.zeros(3, height, width)
    image[0, :, :EDGE] = 0.9
    image[2, :, EDGE:] = 0.8
    return image


def test_no_region_crosses_the_colour_edge() -> None:
    # the blur before segmenting makes the four columns about the edge thin regions of
    # their own
    regions = felzenszwalb_regions(two_colour_image(), 300.0)
    left, right = regions[:, : EDGE - 2].unique(), regions[:, EDGE + 2 :].unique()
    assert left.numel() == 1 and right.numel() == 1 and left != right
    band = regions[:, EDGE - 2 : EDGE + 2].unique().tolist()
    assert len(band) == 4 and set(band).isdisjoint({*left.tolist(), *right.tolist()})


def test_a_blurred_prediction_snaps_to_the_colour_edge() -> None:
    probability = RAMP.expand(1, 1, 40, 60)
    voted = superpixel_vote(probability, two_colour_image()[None], 300.0)[0, 0]
    # the red region (columns 0..37) takes the ramp's mean there, 1 − 18.5/60; the blue
    # one (42..59) 1 − 50.5/60; the four band columns keep their own values (0.37..0.32)
    assert torch.allclose(voted[:, : EDGE - 2], RAMP[: EDGE - 2].mean().expand(40, EDGE - 2))
    assert torch.allclose(voted[:, EDGE + 2 :], RAMP[EDGE + 2 :].mean().expand(40, 18))
    assert torch.equal(voted > 0.5, (torch.arange(60) < EDGE - 2).expand(40, 60))
    assert torch.equal(probability[0, 0] > 0.5, (torch.arange(60) < 30).expand(40, 60))


def test_edges_superpixels_at_an_images_own_size() -> None:
    image = two_colour_image()[None]
    log_odds = torch.logit(RAMP).float().expand(1, 1, 40, 60)
    big = torch.nn.functional.interpolate(image, (80, 120), mode="nearest")
    options = InferenceOptions(edges="superpixels")
    at_model_size = edge_aware(log_odds, image, options)
    assert at_model_size.shape == (1, 1, 40, 60)
    assert torch.equal(at_model_size[0, 0] > 0, (torch.arange(60) < EDGE - 2).expand(40, 60))
    full = edge_aware(log_odds, image, options, big)
    assert full.shape == (1, 1, 80, 120)
    # resized bilinearly from the model's size: the step between model columns 37 and 38
    # falls between columns 75 and 76
    assert torch.equal(full[0, 0] > 0, (torch.arange(120) < 2 * EDGE - 4).expand(80, 120))


def test_guided_and_superpixels_together_average_the_two_log_odds() -> None:
    image = two_colour_image()[None]
    log_odds = torch.logit(RAMP).float().expand(1, 1, 40, 60)
    big = torch.nn.functional.interpolate(image, (80, 120), mode="nearest")
    both = InferenceOptions(edges="guided+superpixels", edge_radius=40)
    alone = [InferenceOptions(edges=e, edge_radius=40) for e in ("guided", "superpixels")]
    for high in (None, big):
        together = edge_aware(log_odds, image, both, high)
        guided, voted = (edge_aware(log_odds, image, options, high) for options in alone)
        assert torch.allclose(together, (guided + voted) / 2, atol=1e-6)
    # the blue side's superpixel votes well below 1/2 and the guided filter keeps the red
    # side: the mean keeps the red columns and drops the blue ones
    together = edge_aware(log_odds, image, both)[0, 0]
    assert torch.equal(together[:, : EDGE - 2] > 0, torch.ones(40, EDGE - 2, dtype=torch.bool))
    assert not (together[:, EDGE + 2 :] > 0).any()


@pytest.mark.parametrize("edges", ["superpixels", "guided+superpixels"])
def test_the_runner_splits_each_query_once_and_scores_as_the_reference_loop(edges: str) -> None:
    source = open_source("synthetic:images=4,size=64")
    learner = build_learner("baseline", tiny_options("baseline"))
    settings = EvaluationSettings(
        "0", 1, 20, 64, progress=False, inference=InferenceOptions(edges=edges)
    )
    calls: list[int] = []
    split = region_memo.felzenszwalb_regions

    def counted(image: torch.Tensor, scale: float) -> torch.Tensor:
        calls.append(1)
        return split(image, scale)

    region_memo.felzenszwalb_regions = counted  # type: ignore[assignment]
    try:
        fast = evaluate(learner, source, "synthetic", settings, [0])
    finally:
        region_memo.felzenszwalb_regions = split  # type: ignore[assignment]
    reference = evaluate(learner, source, "synthetic", settings, [0], scorer=score_plan_reference)
    plan = episode_plan(source, source.fold_split("0").test, 1, 20, seed=0)
    assert len(calls) == len({e.query for e in plan.episodes}) < 20
    assert (fast.per_class, fast.fbiou, fast.boundary_iou) == (
        reference.per_class,
        reference.fbiou,
        reference.boundary_iou,
    )


def test_the_memo_keeps_named_images_regions_and_splits_unnamed_ones_each_time() -> None:
    images = torch.stack([two_colour_image(), two_colour_image().flip(-1)])
    normalised = (images - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    memo = RegionMemo()
    unnamed = memo(normalised, 300.0)
    assert (memo.hits, memo.misses) == (0, 0)
    name_images(normalised, [("s", "a", 60), ("s", "b", 60)])
    first = memo(normalised, 300.0)
    again = memo(normalised, 300.0)
    assert (memo.hits, memo.misses) == (2, 2)
    assert all(x is y for x, y in zip(first, again, strict=True))
    for a, b, image in zip(first, unnamed, images, strict=True):
        assert torch.equal(a.long(), b) and torch.equal(b, felzenszwalb_regions(image, 300.0))
    memo(normalised, 100.0)  # another scale: other regions
    assert memo.misses == 4
