"""The scoring queue: the same counts as scoring in order, whichever thread scores."""

import threading

import pytest
import torch

from fewseg.engine.scoring import (
    GroundTruths,
    QueuedQuery,
    ScoringQueue,
    foreground_prediction,
    score_query,
)
from fewseg.errors import FewSegError
from fewseg.metrics import SegmentationScores

CLASSES = (3, 7)


def random_queries(n: int, seed: int = 0) -> list[QueuedQuery]:
    g = torch.Generator().manual_seed(seed)
    queries = []
    for i in range(n):
        logits = torch.randn(1, 2, 6, 5, generator=g)
        queries.append(
            QueuedQuery(
                CLASSES[i % 2],
                lambda _, logits=logits: logits,
                torch.zeros(1, 3, 6, 5),
                (torch.rand(6, 5, generator=g) > 0.5).float(),
                torch.rand(6, 5, generator=g) > 0.8,
            )
        )
    return queries


def in_order(queries: list[QueuedQuery]) -> SegmentationScores:
    scores = SegmentationScores(CLASSES)
    for query in queries:
        score_query(scores, query, GroundTruths())
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


def test_the_caller_scores_what_waits_when_it_finishes() -> None:
    release, started = threading.Event(), threading.Event()
    scored_by: list[str] = []
    queries = random_queries(6)

    def record(query: QueuedQuery, block: bool) -> QueuedQuery:
        def predict(image: torch.Tensor) -> torch.Tensor:
            if block:
                started.set()
                release.wait(timeout=10)
            scored_by.append(threading.current_thread().name)
            return query.predict(image)

        return QueuedQuery(query.class_index, predict, query.image, query.mask, query.ignore)

    with ScoringQueue(CLASSES, backlog=10) as queue:
        queue.put(record(queries[0], block=True))  # holds the worker
        assert started.wait(timeout=10)
        for query in queries[1:]:
            queue.put(record(query, block=False))
        finisher = threading.Timer(0.5, release.set)
        finisher.start()
        scores = queue.finish()  # scores the five waiting ones on this thread
        finisher.cancel()
        release.set()
    assert_same_scores(scores, in_order(queries))
    assert scored_by.count("fewseg-score") == 1
    assert scored_by.count(threading.current_thread().name) == 5


def test_a_caller_that_finds_the_backlog_full_scores_the_newest_waiting_query() -> None:
    release, started = threading.Event(), threading.Event()
    scored: list[tuple[int, str]] = []
    queries = random_queries(7)

    def record(index: int) -> QueuedQuery:
        query = queries[index]

        def predict(image: torch.Tensor) -> torch.Tensor:
            if index == 0:
                started.set()
                release.wait(timeout=10)
            scored.append((index, threading.current_thread().name))
            return query.predict(image)

        return QueuedQuery(query.class_index, predict, query.image, query.mask, query.ignore)

    caller = threading.current_thread().name
    with ScoringQueue(CLASSES, backlog=2) as queue:
        queue.put(record(0))  # holds the worker
        assert started.wait(timeout=10)
        for index in range(1, 7):
            queue.put(record(index))
        assert scored == [(i, caller) for i in (2, 3, 4, 5)]  # no wait for the worker
        release.set()
        scores = queue.finish()
    assert_same_scores(scores, in_order(queries))
    assert sorted(i for i, _ in scored) == list(range(7))


def test_an_error_while_scoring_is_raised_to_the_caller() -> None:
    def broken(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("prediction failed")

    query = random_queries(1)[0]
    failing = QueuedQuery(query.class_index, broken, query.image, query.mask, query.ignore)
    with pytest.raises(RuntimeError, match="prediction failed"), ScoringQueue(CLASSES, 1) as queue:
        queue.put(failing)
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


def test_a_query_image_met_again_reuses_its_prepared_ground_truth() -> None:
    truths = GroundTruths(capacity=2)
    mask, ignore = torch.ones(3, 3), torch.zeros(3, 3, dtype=torch.bool)
    first = truths.get((mask, ignore))
    assert truths.get((mask, ignore)) is first and first.n_target == 9
    mask[0, 0] = 0  # changed in place: a new version, prepared again
    changed = truths.get((mask, ignore))
    assert changed is not first and changed.n_target == 8
