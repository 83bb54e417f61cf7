"""``--weak-regions``: connected regions of the mask whose mean log-odds is below a fraction
of the strongest region's are dropped; checked on hand-made log-odds maps."""

from __future__ import annotations

import pytest
import torch
from test_refinement import ChannelLearner, _episode

from fewseg.errors import FewSegError
from fewseg.refinement.components import DROPPED_LOG_ODDS, drop_weak_regions, region_scores
from fewseg.refinement.options import PLAIN, InferenceOptions
from fewseg.refinement.pipeline import edge_aware, refined_adapt, rgb


def two_regions(weak: float) -> torch.Tensor:
    """[1,1,6,8] log-odds −1, a strong 2x2 region (4 and 2: mean 3) at the top left and a
    1x3 region of mean ``weak`` at the bottom right."""
    log_odds = torch.full((1, 1, 6, 8), -1.0)
    log_odds[0, 0, :2, :2] = torch.tensor([[4.0, 2.0], [4.0, 2.0]])
    log_odds[0, 0, 5, 5:] = torch.tensor([weak - 0.5, weak, weak + 0.5])
    return log_odds


def test_regions_are_four_connected_and_scored_by_their_mean() -> None:
    log_odds = torch.full((4, 4), -2.0)
    log_odds[0, 0], log_odds[1, 1] = 3.0, 1.0  # touching at a corner only: two regions
    log_odds[3, 1:] = torch.tensor([0.5, 1.0, 1.5])
    regions, means = region_scores(log_odds.numpy())
    assert regions.max() == 3 and len({regions[0, 0], regions[1, 1], regions[3, 2]}) == 3
    assert means.tolist() == pytest.approx([3.0, 1.0, 1.0])


def test_a_region_below_the_fraction_of_the_strongest_is_dropped() -> None:
    log_odds = two_regions(weak=0.8)  # 0.8 < 0.3 · 3
    out = drop_weak_regions(log_odds, 0.3)
    assert torch.equal(out[0, 0, :5], log_odds[0, 0, :5])  # the strong region and the rest
    assert torch.equal(out[0, 0, 5, 5:], torch.full((3,), DROPPED_LOG_ODDS))
    assert torch.equal(out[0, 0, 5, :5], log_odds[0, 0, 5, :5])
    assert torch.equal(drop_weak_regions(two_regions(weak=1.0), 0.3), two_regions(weak=1.0))


def test_fraction_zero_and_a_single_region_keep_the_mask() -> None:
    log_odds = two_regions(weak=0.8)
    assert drop_weak_regions(log_odds, 0.0) is log_odds
    single = log_odds.clone()
    single[0, 0, 5, 5:] = -1.0
    single[0, 0, 0, 0] = 0.01  # however weak, the only region stays
    assert torch.equal(drop_weak_regions(single, 1.0), single)


def test_each_image_of_a_batch_is_judged_alone() -> None:
    strong_elsewhere = torch.full((1, 1, 6, 8), -1.0)
    strong_elsewhere[0, 0, 3, 3] = 9.0
    batch = torch.cat([two_regions(weak=0.8), strong_elsewhere, two_regions(weak=1.0)])
    out = drop_weak_regions(batch, 0.3)
    assert (out[0, 0, 5, 5:] == DROPPED_LOG_ODDS).all()
    assert torch.equal(out[1:], batch[1:])


def test_the_predictor_drops_weak_regions_after_the_edges() -> None:
    support, query = _episode()
    query = query.clone()
    query[0, 0, 7, 7] = 1.2  # a pixel the learner calls foreground weakly (log-odds 0.2)
    options = InferenceOptions(refine="none", zoom=1.0)
    out = refined_adapt(ChannelLearner(), support, options)(query)
    edged = edge_aware(query[:, :1] - 1.0, rgb(query), options)
    assert torch.equal(out, drop_weak_regions(edged, 0.3))
    plain = refined_adapt(ChannelLearner(), support, PLAIN)(query)
    assert plain[0, 0, 7, 7] > 0  # kept without the option
    kept_all = InferenceOptions(edges="none", refine="none", weak_regions=0.0, zoom=1.0)
    assert torch.equal(refined_adapt(ChannelLearner(), support, kept_all)(query), plain)
    dropping = InferenceOptions(edges="none", refine="none", zoom=1.0)
    assert refined_adapt(ChannelLearner(), support, dropping)(query)[0, 0, 7, 7] < 0


def test_a_bad_fraction_is_a_one_line_error() -> None:
    with pytest.raises(FewSegError) as error:
        InferenceOptions(weak_regions=1.5)
    assert str(error.value) == "weak-regions must be in [0, 1], got 1.5"
