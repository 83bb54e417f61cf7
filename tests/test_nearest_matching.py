"""``--refine nearest``: dense nearest-neighbour matching of query cells to the support's
labelled cells, against hand-computed values, and its place in the refinement pipeline."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from test_refinement import ChannelLearner, NoFeatures, _episode
from tiny_training import tiny_options

from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.protocol import score_plan_reference
from fewseg.errors import FewSegError
from fewseg.learners import build_learner
from fewseg.refinement.nearest import (
    NEAREST_SCALE,
    NO_MATCH,
    balanced_neighbours,
    labelled_cells,
    nearest_log_odds,
    nearest_similarity,
)
from fewseg.refinement.options import InferenceOptions
from fewseg.refinement.pipeline import refined_adapt


def _cells(*vectors: tuple[float, ...]) -> torch.Tensor:
    """One-row feature map [1,C,1,N] of the given vectors."""
    return torch.tensor(vectors).T[None, :, None, :]


def test_cells_are_labelled_by_their_majority_and_invalid_cells_by_none() -> None:
    features = _cells((1, 0), (0, 2), (3, 4), (5, 0))
    foreground = torch.tensor([[[1.0, 0.5, 0.2, 0.0]]])
    valid = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])  # the last cell is all ignored
    fg, bg = labelled_cells(features, foreground, valid)
    assert fg.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # half or more foreground; unit vectors
    assert torch.allclose(bg, torch.tensor([[0.6, 0.8]]))


def test_a_thin_object_with_no_majority_cell_keeps_its_cells() -> None:
    features = _cells((1, 0), (0, 1))
    fg, bg = labelled_cells(features, torch.tensor([[[0.1, 0.0]]]), torch.ones(1, 1, 2))
    assert fg.tolist() == [[1.0, 0.0]] and bg.tolist() == [[0.0, 1.0]]


def test_nearest_similarity_averages_the_k_most_similar_cells() -> None:
    cells = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    query = _cells((2, 0), (0, -1))
    assert nearest_similarity(query, cells, 1)[0, 0].tolist() == pytest.approx([1.0, 0.0])
    # (2, 0): cosines 1, 0, 0.6 → the two largest average 0.8; (0, −1): 0, −1, −0.8 → −0.4
    assert nearest_similarity(query, cells, 2)[0, 0].tolist() == pytest.approx([0.8, -0.4])
    # more neighbours than cells: all of them
    assert nearest_similarity(query, cells, 9)[0, 0, 0].item() == pytest.approx(1.6 / 3)
    assert nearest_similarity(query, cells[:0], 1).tolist() == [[[NO_MATCH, NO_MATCH]]]


def test_each_class_averages_the_same_fraction_of_its_cells() -> None:
    assert balanced_neighbours(3, 10) == (1, 3)
    assert balanced_neighbours(10, 3) == (3, 1)
    assert balanced_neighbours(4, 4) == (1, 1)
    assert balanced_neighbours(2, 7) == (1, 4)  # 3.5 rounds to 4
    assert balanced_neighbours(0, 7) == (1, 1)


def test_the_larger_class_does_not_win_by_having_more_cells() -> None:
    # one foreground cell (1, 0), three background cells; the query (0.8, 0.6) is 0.8 like
    # the foreground, 0.6, 0.96 and 1 like the background cells: all three are averaged
    support = _cells((1, 0), (0, 1), (0.6, 0.8), (0.8, 0.6))
    foreground = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    out = nearest_log_odds(_cells((0.8, 0.6)), support, foreground, torch.ones(1, 1, 4))
    balanced = NEAREST_SCALE * (0.8 - (0.6 + 0.96 + 1.0) / 3)
    assert out.item() == pytest.approx(balanced, abs=1e-5)
    assert out.item() > NEAREST_SCALE * (0.8 - 1.0)  # a plain nearest neighbour's


def test_log_odds_use_every_shot_where_a_mean_prototype_would_blur_them() -> None:
    """Shot 0's foreground is (1, 0, 0), shot 1's (0, 1, 0), both backgrounds (0, 0, 1). A
    query cell like shot 1's object has cosine 1/√2 to the mean prototype (1/2, 1/2, 0) but
    matches shot 1's cell exactly."""
    support = torch.zeros(2, 3, 1, 2)
    support[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    support[1, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    support[:, 2, 0, 1] = 1.0
    foreground = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    query = _cells((0, 1, 0), (0, 1, 1))
    out = nearest_log_odds(query, support, foreground, torch.ones(2, 1, 2))  # 2 cells each
    # (0, 1, 1): cosine 1/√2 to the nearest foreground and background cells alike
    assert out[0, 0].tolist() == pytest.approx([NEAREST_SCALE * (1 - 0), 0.0], abs=1e-5)
    empty = nearest_log_odds(query, support, torch.zeros(2, 1, 2), torch.ones(2, 1, 2))
    # no foreground anywhere: every valid cell is background (the objects' cells too), and
    # the foreground's similarity is NO_MATCH
    assert empty[0, 0].tolist() == pytest.approx(
        [NEAREST_SCALE * (NO_MATCH - 1), NEAREST_SCALE * (NO_MATCH - 1 / math.sqrt(2))]
    )


def test_the_refinement_averages_the_learners_log_odds_with_the_matching() -> None:
    support, query = _episode()
    options = InferenceOptions(edges="none", refine="nearest")
    out = refined_adapt(ChannelLearner(), support, options)(query)
    # the channel learner's features are the images: inside the square (2, 0, 0) matches
    # the support's square exactly (log-odds 20), outside (0, 1, 0) matches its background
    # (−20); the learner says 1 and −1
    inside, outside = out[0, 0, 3, 3].item(), out[0, 0, 0, 0].item()
    assert inside == pytest.approx(0.5 * (1.0 + NEAREST_SCALE))
    assert outside == pytest.approx(0.5 * (-1.0 - NEAREST_SCALE))
    assert options.needs_support


def test_nearest_is_a_known_refinement() -> None:
    assert InferenceOptions(refine="nearest,ssp").refinements == ("nearest", "ssp")
    with pytest.raises(FewSegError, match="unknown refinement 'nearset'"):
        InferenceOptions(refine="nearset")


def test_an_evaluation_with_nearest_scores_as_the_reference_loop_and_changes_the_scores() -> None:
    source = open_source("synthetic:images=4,size=64")
    learner = build_learner("baseline", tiny_options("baseline"))

    def scores(refine: str, scorer: Any = None) -> tuple[Any, ...]:
        inference = InferenceOptions(edges="none", refine=refine)
        settings = EvaluationSettings("0", 5, 12, 64, progress=False, inference=inference)
        kwargs = {} if scorer is None else {"scorer": scorer}
        report = evaluate(learner, source, "synthetic", settings, [0], **kwargs)
        return report.per_class, report.fbiou, report.boundary_iou

    refined = scores("nearest")
    assert refined == scores("nearest", score_plan_reference)
    assert refined != scores("none")


def test_the_default_refines_by_nearest_where_the_learner_has_features() -> None:
    support, query = _episode()
    default = InferenceOptions(edges="none", zoom=1.0)
    assert default.automatic and default.refinements == ("nearest",) and default.needs_support
    nearest = InferenceOptions(edges="none", refine="nearest", zoom=1.0)
    assert torch.equal(
        refined_adapt(ChannelLearner(), support, default)(query),
        refined_adapt(ChannelLearner(), support, nearest)(query),
    )
    # without features the default leaves the learner's output as it is; asked for, an error
    assert torch.equal(refined_adapt(NoFeatures(), support, default)(query), query[:, :1] - 1.0)
    with pytest.raises(FewSegError, match="needs image features"):
        refined_adapt(NoFeatures(), support, nearest)(query)
