"""The scoring queue: the same counts as scoring in order, whichever thread scores."""

from dataclasses import replace

import pytest
import torch

from fewseg.engine.scoring import OutcomeMemo, ScoredQuery, ScoringQueue, foreground_prediction
from fewseg.errors import FewSegError
from fewseg.metrics import SegmentationScores

CLASSES = (3, 7)


def random_queries(n: int, seed: int = 0) -> list[ScoredQuery]:
    g = torch.Generator().manual_seed(seed)
    return [
        ScoredQuery(
            CLASSES[i % 2],
            torch.randn(1, 2, 6, 5, generator=g),
            (torch.rand(6, 5, generator=g) > 0.5).float(),
            torch.rand(6, 5, generator=g) > 0.8,
            truth_key=i,
        )
        for i in range(n)
    ]


def in_order(queries: list[ScoredQuery]) -> SegmentationScores:
    scores = SegmentationScores(CLASSES)
    for q in queries:
        scores.update(q.class_index, foreground_prediction(q.logits)[0], q.mask, q.ignore)
    return scores


def assert_same_scores(a: SegmentationScores, b: SegmentationScores) -> None:
    assert torch.equal(a.intersection, b.intersection)
    assert torch.equal(a.union, b.union)
    assert torch.equal(a.episodes, b.episodes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_foreground_prediction_ties_go_to_background(dtype: torch.dtype) -> None:
    logits = torch.tensor([[[[1.0, 2.0, 0.5]]], [[[1.0, 1.0, 0.75]]]], dtype=dtype)
    two_class = logits.transpose(0, 1)  # [1,2,1,3] (background, foreground)
    assert foreground_prediction(two_class).tolist() == [[[False, False, True]]]
    foreground = two_class[:, 1:] - two_class[:, :1]  # [1,1,1,3]: 0, -1, 0.25
    assert foreground_prediction(foreground).tolist() == [[[False, False, True]]]


def test_foreground_prediction_names_a_wrong_shape() -> None:
    with pytest.raises(FewSegError, match=r"shape \(1, 3, 2, 2\)"):
        foreground_prediction(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("backlog", [1, 3, 100])
def test_queued_scores_equal_scores_in_order(backlog: int) -> None:
    queries = random_queries(40)
    with ScoringQueue(CLASSES, backlog) as queue:
        for query in queries:
            queue.put(query)
        scores = queue.finish()
    assert_same_scores(scores, in_order(queries))
    assert scores.episodes.tolist() == [20.0, 20.0]


def test_a_full_backlog_makes_the_caller_wait_for_the_worker() -> None:
    queries = random_queries(30)
    put: list[int] = []
    with ScoringQueue(CLASSES, backlog=1) as queue:
        for i, query in enumerate(queries):
            queue.put(query)
            put.append(i)
            assert queue._queries.qsize() <= 1
        scores = queue.finish()
    assert put == list(range(30))
    assert_same_scores(scores, in_order(queries))


def test_an_error_while_scoring_is_raised_to_the_caller() -> None:
    query = random_queries(1)[0]
    broken = ScoredQuery(query.class_index, torch.zeros(1, 3, 6, 5), query.mask, query.ignore, 0)
    with pytest.raises(FewSegError, match="shape"), ScoringQueue(CLASSES, 1) as queue:
        queue.put(broken)
        for _ in range(5):
            queue.put(query)
        queue.finish()
    assert not queue._thread.is_alive()


def test_leaving_early_stops_the_worker() -> None:
    with pytest.raises(KeyError), ScoringQueue(CLASSES, backlog=4) as queue:
        for query in random_queries(3):
            queue.put(query)
        raise KeyError("a corrupt file, say")
    assert not queue._thread.is_alive()


def test_scores_add_by_hand() -> None:
    a, b = SegmentationScores(CLASSES), SegmentationScores(CLASSES)
    a.update(3, torch.tensor([True, False]), torch.tensor([True, True]), torch.tensor([0, 0]) > 0)
    b.update(3, torch.tensor([True, True]), torch.tensor([False, True]), torch.tensor([0, 0]) > 0)
    a.add(b)
    assert a.intersection[1, 0].item() == 2.0 and a.union[1, 0].item() == 4.0
    assert a.episodes.tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="different classes"):
        a.add(SegmentationScores((3,)))


def test_a_query_met_again_is_scored_with_its_prepared_ground_truth() -> None:
    queries = random_queries(4)
    again = [
        ScoredQuery(q.class_index, q.logits.flip(-1), q.mask, q.ignore, q.truth_key)
        for q in queries
    ]
    with ScoringQueue(CLASSES, backlog=3) as queue:
        for query in queries + again:
            queue.put(query)
        scores = queue.finish()
        assert len(queue._truths) == 4
    assert_same_scores(scores, in_order(queries + again))


def test_an_outcome_memo_keeps_the_counts_of_keyed_queries_and_forgets_the_oldest() -> None:
    queries = random_queries(3)
    memo = OutcomeMemo(capacity=2)
    with ScoringQueue(CLASSES, backlog=2, outcomes=memo) as queue:
        for i, q in enumerate(queries):
            queue.put(replace(q, outcome_key=("episode", i)))
        assert_same_scores(queue.finish(), in_order(queries))
    assert len(memo) == 2 and memo.get(("episode", 0)) is None
    known = memo.get(("episode", 2))
    assert known is not None and memo.hits == 1
    by_hand = SegmentationScores(CLASSES)
    by_hand.update(
        queries[2].class_index,
        foreground_prediction(queries[2].logits)[0],
        queries[2].mask,
        queries[2].ignore,
    )
    # a query put with the counts it gave before is scored without logits
    with ScoringQueue(CLASSES, backlog=2) as queue:
        queue.put(replace(queries[2], logits=None, known=known))
        assert_same_scores(queue.finish(), by_hand)
