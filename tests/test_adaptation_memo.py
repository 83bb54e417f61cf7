"""Predictors reused for support sets met again, with scores exactly those of adapting."""

import pytest
import torch
from tiny_training import tiny_options

from fewseg.data.spec import open_source
from fewseg.engine.adaptation_memo import AdaptationMemo, held_bytes
from fewseg.engine.runner import score_plan
from fewseg.engine.settings import EvaluationSettings
from fewseg.episodes.sampler import episode_plan
from fewseg.learners import build_learner


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
    overrides = {"inner_steps": 2} if learner_name == "maml" else {}
    learner = build_learner(learner_name, tiny_options(learner_name, **overrides))
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


def holding(megabytes: int):
    tensor = torch.zeros(megabytes << 18)  # float32: 4 bytes each

    def predict(query):
        return query + tensor.sum()

    return predict


def test_the_memo_is_bounded_by_the_bytes_its_predictors_hold():
    assert held_bytes(holding(1)) == 1 << 20
    memo = AdaptationMemo(capacity=10, max_bytes=5 << 20)
    for key in "abc":
        memo.predictor(key, lambda: holding(2))
    assert len(memo) == 2 and memo.held == 4 << 20  # a went: 6 MB over 5
    memo.predictor("big", lambda: holding(6))  # larger than the budget: not kept
    assert len(memo) == 2 and memo.held == 4 << 20


def test_held_bytes_counts_a_storage_once_and_no_module():
    module = torch.nn.Linear(1000, 1000)  # 4 MB of parameters: the learner's, not counted
    data = torch.zeros(1 << 18)  # 1 MB
    views = (data[:10], data[10:], {"again": data})

    def predict(query):
        return module(query) + views[0].sum()

    assert held_bytes(predict) == 1 << 20
