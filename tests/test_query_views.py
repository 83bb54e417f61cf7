"""``--flip`` and ``--zoom``: the query's mirror image and an enlarged copy predicted too,
the log-odds averaged; checked with a learner whose output depends on the column, so
that mirroring and enlarging change it."""

from __future__ import annotations

import pytest
import torch
from test_refinement import ChannelLearner, _episode
from tiny_training import tiny_options

from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.protocol import score_plan_reference
from fewseg.episodes.image_keys import image_keys, name_images
from fewseg.episodes.image_views import mirror_images, zoomed_images
from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners import build_learner
from fewseg.learners.base import Predictor
from fewseg.refinement.options import InferenceOptions
from fewseg.refinement.pipeline import refined_adapt

SLOPE = 0.1  # the learner adds SLOPE x the column index to its log-odds


class LeaningLearner(ChannelLearner):
    """The channel learner, leaning to the right: log-odds channel 0 − 1 + SLOPE · column."""

    def adapt(self, support: LabelledImages) -> Predictor:
        def predict(images: torch.Tensor) -> torch.Tensor:
            columns = torch.arange(images.shape[-1], dtype=images.dtype)
            return images[:, :1] - 1.0 + SLOPE * columns

        return predict


def test_flip_averages_the_query_and_its_mirror_image() -> None:
    support, query = _episode()
    query = query.clone()
    query[0, 0, 1, 0] = 3.0  # not mirror-symmetric
    plain = InferenceOptions(edges="none", refine="none", weak_regions=0.0, zoom=1.0)
    flipped = InferenceOptions(edges="none", refine="none", weak_regions=0.0, zoom=1.0, flip=True)
    without = refined_adapt(LeaningLearner(), support, plain)(query)
    columns = torch.arange(8.0)
    assert torch.allclose(without, query[:, :1] - 1.0 + SLOPE * columns)
    # the mirror image's lean, mirrored back, runs the other way: the two average to the
    # middle column's, SLOPE · 3.5, everywhere
    out = refined_adapt(LeaningLearner(), support, flipped)(query)
    assert torch.allclose(out, query[:, :1] - 1.0 + SLOPE * 3.5)


def test_zoom_averages_the_query_and_its_enlarged_copy_resized_back() -> None:
    support, _ = _episode()
    query = torch.ones(1, 3, 8, 8)  # channel 0 at 1: the log-odds are the lean alone
    options = InferenceOptions(edges="none", refine="none", weak_regions=0.0, zoom=2.0)
    out = refined_adapt(LeaningLearner(), support, options)(query)
    # at 16 columns the lean is SLOPE · c; resized back (half-pixel centres) column j reads
    # it at c = 2j + 0.5; the mean with the query's own SLOPE · j is SLOPE · (1.5j + 0.25)
    expected = SLOPE * (1.5 * torch.arange(8.0) + 0.25)
    torch.testing.assert_close(out[0, 0], expected.expand(8, 8))
    both = InferenceOptions(edges="none", refine="none", weak_regions=0.0, zoom=2.0, flip=True)
    # the mirror image's lean, mirrored back, is SLOPE · (7 − j): the mean of the three
    expected = (
        SLOPE * (torch.arange(8.0) + (2 * torch.arange(8.0) + 0.5) + (7 - torch.arange(8.0))) / 3
    )
    out = refined_adapt(LeaningLearner(), support, both)(query)
    torch.testing.assert_close(out[0, 0], expected.expand(8, 8))


def test_a_zoom_below_one_is_a_one_line_error() -> None:
    with pytest.raises(FewSegError) as error:
        InferenceOptions(zoom=0.5)
    assert str(error.value) == "zoom must be in [1, 4], got 0.5"


def test_the_presence_score_is_the_querys_own() -> None:
    support, query = _episode()
    plain = InferenceOptions(edges="none", refine="none")
    own = refined_adapt(LeaningLearner(), support, plain).presence(query)
    for views in ({"flip": True}, {"zoom": 1.5}):
        options = InferenceOptions(edges="none", refine="none", **views)
        assert torch.equal(refined_adapt(LeaningLearner(), support, options).presence(query), own)


def test_mirror_images_are_named_apart_from_their_images() -> None:
    images = name_images(torch.arange(12.0).view(1, 1, 3, 4).expand(2, 3, 3, 4).clone(), ["a", "b"])
    mirrored = mirror_images(images)
    assert torch.equal(mirrored[0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert image_keys(mirrored) == (("mirrored", "a"), ("mirrored", "b"))
    assert image_keys(mirror_images(images.clone())) is None
    zoomed = zoomed_images(images, 1.5)
    assert zoomed.shape[-2:] == (4, 6)  # round(3 · 1.5), 4 · 1.5
    assert image_keys(zoomed) == (("zoomed", 1.5, "a"), ("zoomed", 1.5, "b"))


@pytest.mark.parametrize("views", [{"flip": True}, {"zoom": 1.25}])
def test_the_runner_scores_the_views_as_the_reference_loop(views: dict) -> None:
    source = open_source("synthetic:images=4,size=64")
    learner = build_learner("baseline", tiny_options("baseline"))
    options = InferenceOptions(**views)
    settings = EvaluationSettings("0", 1, 20, 64, progress=False, inference=options)
    fast = evaluate(learner, source, "synthetic", settings, [0])
    reference = evaluate(learner, source, "synthetic", settings, [0], scorer=score_plan_reference)
    unflipped = evaluate(learner, source, "synthetic", EvaluationSettings(
        "0", 1, 20, 64, progress=False, inference=InferenceOptions()), [0])  # fmt: skip
    assert (fast.per_class, fast.fbiou, fast.boundary_iou) == (
        reference.per_class,
        reference.fbiou,
        reference.boundary_iou,
    )
    assert fast.per_class != unflipped.per_class
