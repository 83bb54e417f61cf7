"""Inference-time refinement: the guided filter, the presence score, SSP and RePRI, the
options, and the predictor that applies them to any learner, against hand-made values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner, LearnerOptions, Predictor
from fewseg.metrics import auroc
from fewseg.refinement.guided import box_mean, guided_filter, guided_upsample
from fewseg.refinement.options import PLAIN, InferenceOptions
from fewseg.refinement.pipeline import EMPTY_LOG_ODDS, edge_radius, refined_adapt
from fewseg.refinement.presence import presence_scores, region_prototypes
from fewseg.refinement.prototypes import mean_prototypes, shot_prototypes
from fewseg.refinement.selfsupport import self_support_prototypes, ssp_log_odds
from fewseg.refinement.transductive import repri_log_odds

# ---- the guided filter ------------------------------------------------------------------


def test_box_mean_is_the_clipped_window_mean() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    out = box_mean(x, 1)
    # corner (0, 0): the window is rows 0-1, columns 0-1: (0 + 1 + 4 + 5) / 4
    assert out[0, 0, 0, 0].item() == pytest.approx(2.5)
    # centre (1, 1): rows 0-2, columns 0-2: mean of 0,1,2,4,5,6,8,9,10
    assert out[0, 0, 1, 1].item() == pytest.approx(5.0)
    # (1, 3): rows 0-2, columns 2-3: 2,3,6,7,10,11
    assert out[0, 0, 1, 3].item() == pytest.approx(6.5)


def test_guided_filter_with_a_flat_guide_is_a_double_box_mean() -> None:
    # var(I) = cov(I, p) = 0 → a = 0, b = mean p, output = mean of mean p
    source = torch.rand(1, 1, 6, 7, generator=torch.Generator().manual_seed(0))
    guide = torch.full((1, 3, 6, 7), 0.5)
    out = guided_filter(guide, source, 2, 1e-2)
    assert torch.allclose(out, box_mean(box_mean(source, 2), 2), atol=1e-12)


def test_guided_filter_by_itself_keeps_the_source() -> None:
    # guide = source and a tiny eps: a ≈ 1, b ≈ 0 wherever the window is not flat
    g = torch.Generator().manual_seed(1)
    source = torch.rand(1, 1, 8, 8, generator=g)
    out = guided_filter(source, source, 1, 1e-8)
    assert torch.allclose(out, source.double(), atol=1e-4)


def test_the_filtered_probability_steps_at_the_image_edge() -> None:
    # an image edge between columns 9 and 10; a blurred prediction ramping over 4..15
    width = 20
    guide = torch.zeros(1, 3, 12, width)
    guide[..., 10:] = 1.0
    ramp = ((torch.arange(width) - 3.5) / 12).clamp(0, 1)
    source = ramp.expand(1, 1, 12, width).clone()
    out = guided_filter(guide, source, 4, 1e-4)[0, 0, 6]
    assert (out[:10] < 0.5).all() and (out[10:] > 0.5).all()
    assert out[10] - out[9] > 0.3  # the source rises 1/12 a column; the step is at the edge


def test_guided_upsample_equals_the_filter_at_one_size() -> None:
    g = torch.Generator().manual_seed(2)
    guide, source = torch.rand(1, 3, 9, 9, generator=g), torch.rand(1, 1, 9, 9, generator=g)
    assert torch.allclose(
        guided_upsample(guide, source, guide, 2, 1e-2), guided_filter(guide, source, 2, 1e-2)
    )


def test_the_edge_radius_scales_with_the_image() -> None:
    options = InferenceOptions(edge_radius=8)
    assert edge_radius(options, 400, 300) == 8
    assert edge_radius(options, 100, 50) == 2
    assert edge_radius(options, 10, 10) == 1


# ---- presence ---------------------------------------------------------------------------


def test_region_prototype_is_the_probability_weighted_mean() -> None:
    features = torch.zeros(1, 2, 1, 3)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    features[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    probability = torch.tensor([[[0.75, 0.25, 0.0]]])
    assert torch.allclose(region_prototypes(features, probability), torch.tensor([[0.75, 0.25]]))


def test_presence_scores_by_hand() -> None:
    features = torch.zeros(3, 2, 1, 2)
    features[:, 0, 0, 0] = 1.0  # pixel 0 is (1, 0)
    features[:, 1, 0, 1] = 1.0  # pixel 1 is (0, 1)
    probability = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]], [[0.0, 0.0]]])
    scores = presence_scores(features, probability, torch.tensor([1.0, 0.0]))
    # the region is (1, 0): cos 1; (1/2, 1/2): cos 1/√2; nothing predicted: 0
    assert scores.tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 0.0])


def test_auroc_by_hand() -> None:
    # pairs: 3>1, 3>2, 2>1, 2=2 (a half): 3.5 of 4
    assert auroc([3.0, 2.0], [1.0, 2.0]) == 0.875
    assert auroc([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError):
        auroc([], [1.0])


# ---- prototypes, SSP, RePRI -------------------------------------------------------------


def test_shot_prototypes_and_their_mean_skip_a_shot_without_the_class() -> None:
    features = torch.zeros(2, 2, 2, 2)
    features[0, 0] = 4.0  # shot 0: channel 0 is 4 everywhere
    features[1, 1] = 2.0  # shot 1: channel 1 is 2 everywhere
    masks = torch.zeros(2, 2, 2)
    masks[0, 0, 0] = 1.0  # shot 0 has foreground; shot 1 has none
    ignore = torch.zeros(2, 2, 2, dtype=torch.bool)
    per_shot, present = shot_prototypes(features, masks, ignore)
    assert present.tolist() == [[True, True], [True, False]]
    background, foreground = mean_prototypes(per_shot, present)
    assert foreground.tolist() == [4.0, 0.0]  # shot 0's alone
    assert background.tolist() == [2.0, 1.0]  # (4, 0) and (0, 2) averaged


def test_self_support_prototypes_average_the_confident_pixels() -> None:
    features = torch.tensor([[[1.0, 3.0, 0.0, 0.0]], [[0.0, 0.0, 2.0, 4.0]]])  # [2,1,4]
    probability = torch.tensor([[0.9, 0.8, 0.1, 0.5]])
    fg, bg, _, adaptive_bg = self_support_prototypes(features, probability)
    assert fg.tolist() == [2.0, 0.0]  # pixels 0 and 1 (p > 0.7)
    assert bg.tolist() == [0.0, 2.0]  # pixel 2 alone (background p 0.9 > 0.6)
    # one background pixel: every pixel's adaptive prototype is that pixel's feature
    assert torch.allclose(adaptive_bg, torch.tensor([0.0, 2.0])[:, None, None].expand(2, 1, 4))


def test_ssp_separates_two_feature_clusters() -> None:
    # foreground pixels point along channel 0, background along channel 1 (plus noise);
    # the first prediction is right only on half the foreground
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(6, 6, dtype=torch.bool)
    truth[1:5, 1:4] = True
    features = torch.stack([truth.float(), (~truth).float()]) + 0.1 * torch.rand(
        2, 6, 6, generator=g
    )
    first = torch.where(truth, 0.5, 0.1)
    first[1:3, 1:4] = 0.9
    out = ssp_log_odds(features, first, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.equal(out > 0, truth)


def test_repri_recovers_the_foreground_size() -> None:
    # the support's prototype is off the query's foreground direction; the transductive
    # steps move the classifier onto the query's own split
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[2:6, 2:7] = True
    query = torch.stack([truth.float(), (~truth).float(), torch.full((8, 8), 0.3)])
    query = query + 0.05 * torch.rand(3, 8, 8, generator=g)
    support = query[None].clone()
    foreground = truth.float()[None]
    valid = torch.ones(1, 8, 8)
    first = torch.where(truth, 0.6, 0.3)
    out = repri_log_odds(query, support, foreground, valid, first, torch.tensor([1.0, 0.4, 1.0]))
    assert torch.equal(out > 0, truth)


# ---- the options and the predictor ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"edges": "sharp"},
            "edges must be one of guided, superpixels, guided+superpixels, none, got 'sharp'",
        ),
        ({"superpixel_scale": 0.0}, "superpixel scale must be > 0, got 0.0"),
        ({"edge_radius": 0}, "edge radius must be >= 1, got 0"),
        ({"edge_eps": 0.0}, "edge eps must be > 0, got 0.0"),
        (
            {"refine": "ssp,crf"},
            "unknown refinement 'crf' (known: nearest, ssp, repri, none, auto)",
        ),
        ({"refine": "auto,ssp"}, "refinement 'auto' stands alone, not in a list: got 'auto,ssp'"),
        ({"refine": "ssp, none"}, "refinement 'none' stands alone, not in a list: got 'ssp, none'"),
        ({"combine_shots": "sum"}, "combine-shots must be one of mean, max, got 'sum'"),
        ({"min_presence": 1.5}, "min-presence must be in [0, 1], got 1.5"),
    ],
)
def test_bad_options_are_one_line_errors(values: dict, message: str) -> None:
    with pytest.raises(FewSegError) as error:
        InferenceOptions(**values)
    assert str(error.value) == message


def test_refinements_parse_in_order() -> None:
    assert InferenceOptions(refine="none").refinements == ()
    assert InferenceOptions(refine=" repri, ssp ").refinements == ("repri", "ssp")


class ChannelLearner(Learner):
    """Features are the images themselves; the log-odds are channel 0 − 1."""

    name = "channel"
    trainable = False

    def __init__(self) -> None:
        super().__init__(LearnerOptions())
        self.encoder = nn.Identity()

    def adapt(self, support: LabelledImages) -> Predictor:
        return lambda images: images[:, :1] - 1.0


def _episode() -> tuple[LabelledImages, torch.Tensor]:
    images = torch.zeros(3, 3, 8, 8)
    images[:, 0, 2:6, 2:6] = 2.0  # a bright square on channel 0
    images[:, 1] = 1.0 - images[:, 0] / 2
    masks = (images[:, 0] > 1).float()
    support = LabelledImages(images[:2], masks[:2], torch.zeros(2, 8, 8, dtype=torch.bool))
    return support, images[2:]


def test_plain_options_return_the_learners_log_odds() -> None:
    support, query = _episode()
    predictor = refined_adapt(ChannelLearner(), support, PLAIN)
    assert torch.equal(predictor(query), query[:, :1] - 1.0)


def test_presence_is_high_for_the_class_and_low_without_it() -> None:
    support, query = _episode()
    absent = torch.zeros_like(query)
    absent[:, 2] = 1.0  # only channel 2: nothing like the support's square
    absent[:, 0, 0, 0] = 1.5  # one pixel the learner leans to call foreground
    predictor = refined_adapt(ChannelLearner(), support, PLAIN)
    present_score, absent_score = predictor.presence(torch.cat([query, absent])).tolist()
    # the support's foreground prototype is (2, 0, 0). Present: 16 square pixels (2, 0, 0)
    # at p = σ(1), 48 others (0, 1, 0) at p = σ(−1); the region's cosine to it is
    # 32σ(1) / |(32σ(1), 48σ(−1))| in units of the channels' weighted sums
    fg, bg = 32 * torch.sigmoid(torch.tensor(1.0)), 48 * torch.sigmoid(torch.tensor(-1.0))
    assert present_score == pytest.approx((fg / torch.hypot(fg, bg)).item(), rel=1e-5)
    # absent: channel 2 is 1 everywhere; channel 0 is 1.5 at one pixel of p = σ(0.5)
    p0, p = torch.sigmoid(torch.tensor(0.5)), torch.sigmoid(torch.tensor(-1.0))
    r = 1.5 * p0 / (p0 + 63 * p)
    assert absent_score == pytest.approx((r / torch.hypot(r, torch.tensor(1.0))).item(), rel=1e-5)
    assert absent_score < 0.1 < 0.8 < present_score


def test_below_min_presence_the_mask_is_empty() -> None:
    support, query = _episode()
    absent = torch.zeros_like(query)
    absent[:, 2] = 1.0
    absent[:, 0, 0, 0] = 1.5
    options = InferenceOptions(edges="none", refine="none", zoom=1.0, min_presence=0.5)
    out = refined_adapt(ChannelLearner(), support, options)(torch.cat([query, absent]))
    assert torch.equal(out[0], query[0, :1] - 1.0)  # present: untouched
    assert torch.allclose(out[1], torch.full_like(out[1], EMPTY_LOG_ODDS))


class NoFeatures(ChannelLearner):
    """The channel learner without an encoder: nothing to refine with."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = None


def test_a_learner_without_features_cannot_be_refined() -> None:
    support, query = _episode()
    predictor = refined_adapt(NoFeatures(), support, InferenceOptions(refine="ssp"))
    with pytest.raises(FewSegError, match="refinement needs image features: learner 'channel'"):
        predictor(query)


def test_the_options_reach_every_evaluation_flag() -> None:
    from fewseg.cli import build_parser

    args = build_parser(["evaluate"]).parse_args(
        ["evaluate", "--dataset", "d", "--out", "o", "--refine", "repri", "--edges", "none"]
    )
    from fewseg.cli import _inference_options

    options = _inference_options(args)
    assert options == InferenceOptions(edges="none", refine="repri")
    assert np.isclose(options.edge_eps, InferenceOptions().edge_eps)


def test_an_evaluation_predictor_keeps_its_support_set_only_when_its_options_need_it() -> None:
    """An evaluation memoises hundreds of predictors: the support images of each must not
    stay with it unless a refinement or a presence threshold uses them."""
    support, query = _episode()
    plain = refined_adapt(ChannelLearner(), support, PLAIN, keep_support=False)
    assert plain.support is None and torch.equal(plain(query), query[:, :1] - 1.0)
    with pytest.raises(RuntimeError, match="without its support set"):
        plain.presence(query)
    for options in (InferenceOptions(refine="ssp"), InferenceOptions(min_presence=0.5)):
        assert options.needs_support
        kept = refined_adapt(ChannelLearner(), support, options, keep_support=False)
        assert kept.support is support
    assert refined_adapt(ChannelLearner(), support, PLAIN).support is support  # the API's
