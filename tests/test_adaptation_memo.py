import threading

import pytest
import torch

from fewseg.data.spec import open_source
from fewseg.engine.adaptation_memo import AdaptationMemo
from fewseg.engine.evaluate import EvaluationSettings, score_plan
from fewseg.episodes.sampler import episode_plan
from fewseg.learners.base import LEARNERS
from fewseg.learners.config import LearnerConfig


def test_a_key_seen_before_returns_the_same_predictor_without_adapting():
    memo = AdaptationMemo(capacity=2)
    calls: list[str] = []

    def adapter(name: str):
        def adapt():
            calls.append(name)
            return lambda q: q + len(name)

        return adapt

    first = memo.predictor("a", adapter("a"))
    assert memo.predictor("a", adapter("a")) is first
    memo.predictor("b", adapter("b"))
    memo.predictor("a", adapter("a"))  # a is now the most recently used
    memo.predictor("c", adapter("c"))  # evicts b
    assert len(memo) == 2
    memo.predictor("b", adapter("b"))
    assert calls == ["a", "b", "c", "b"]
    assert (memo.hits, memo.misses) == (2, 4)


def test_capacity_zero_keeps_nothing():
    memo = AdaptationMemo(capacity=0)
    calls = []
    for _ in range(3):
        memo.predictor("a", lambda: calls.append(1) or (lambda q: q))
    assert len(calls) == 3 and len(memo) == 0
    with pytest.raises(ValueError, match="capacity"):
        AdaptationMemo(capacity=-1)


@pytest.mark.parametrize("learner_name", ["maml", "protonet"])
def test_memoised_evaluation_scores_exactly_as_adapting_every_episode(learner_name):
    torch.manual_seed(0)
    source = open_source("synthetic:images=4,size=64")
    config = LearnerConfig(backbone="convnet", hidden=8, inner_steps=2)
    learner = LEARNERS.get(learner_name)(config)
    split = source.fold_split("0")
    plan = episode_plan(source, split.test, 1, 40, seed=0)
    distinct = {(e.class_index, e.support) for e in plan.episodes}
    assert len(distinct) < len(plan.episodes)  # the list repeats support sets
    settings = EvaluationSettings("0", 1, 40, 64, progress=False)
    memo = AdaptationMemo()
    memoised = score_plan(learner, source, plan, settings, memo=memo)
    plain = score_plan(learner, source, plan, settings)
    assert (memo.misses, memo.hits) == (len(distinct), len(plan.episodes) - len(distinct))
    assert torch.equal(memoised.intersection, plain.intersection)
    assert torch.equal(memoised.union, plain.union)


def test_threads_share_the_memo_and_every_call_is_counted_once():
    memo = AdaptationMemo(capacity=4)
    keys = [f"k{i % 6}" for i in range(300)]

    def use(offset: int) -> None:
        for key in keys[offset:] + keys[:offset]:
            assert memo.predictor(key, lambda k=key: lambda q, k=k: k)(None) == key

    threads = [threading.Thread(target=use, args=(i * 7,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert memo.hits + memo.misses == 4 * len(keys)
    assert len(memo) == 4


def test_a_key_being_adapted_is_waited_for_not_adapted_again():
    memo = AdaptationMemo()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_adapt():
        calls.append("adapt")
        started.set()
        assert release.wait(timeout=10)
        return lambda q: ("adapted", q)

    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(memo.predictor("k", slow_adapt)))
    first.start()
    assert started.wait(timeout=10)
    second = threading.Thread(target=lambda: results.append(memo.predictor("k", slow_adapt)))
    second.start()
    release.set()
    first.join()
    second.join()
    assert calls == ["adapt"]
    assert len(results) == 2 and results[0] is results[1]
    assert (memo.misses, memo.hits) == (1, 1)


def test_a_failed_adaptation_reaches_its_waiters_and_is_not_kept():
    memo = AdaptationMemo()
    started, release = threading.Event(), threading.Event()

    def failing_adapt():
        started.set()
        assert release.wait(timeout=10)
        raise RuntimeError("bad support set")

    errors: list[BaseException] = []

    def ask():
        try:
            memo.predictor("k", failing_adapt)
        except RuntimeError as error:
            errors.append(error)

    first = threading.Thread(target=ask)
    first.start()
    assert started.wait(timeout=10)
    second = threading.Thread(target=ask)
    second.start()
    release.set()
    first.join()
    second.join()
    assert [str(e) for e in errors] == ["bad support set"] * 2
    assert memo.predictor("k", lambda: lambda q: q)(3) == 3  # adapted afresh
    assert len(memo) == 1
