import threading

import pytest
import torch

from fewseg.data.source import SegmentationSource
from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, score_plan
from fewseg.episodes.sampler import episode_plan
from fewseg.learners.base import LEARNERS, Learner
from fewseg.learners.config import LearnerConfig


@pytest.mark.parametrize("learner_name", ["protonet", "baseline"])
def test_predicting_on_the_scoring_thread_scores_as_predicting_in_order(
    learner_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    source = open_source("synthetic:images=4,size=64")
    backbone = "convnet" if learner_name == "protonet" else "mobilenet_v2"
    learner = LEARNERS.get(learner_name)(
        LearnerConfig(backbone=backbone, hidden=8, pretrained=False)
    )
    assert learner.concurrent_prediction
    plan = episode_plan(source, source.fold_split("0").test, 2, 30, seed=1)
    settings = EvaluationSettings("0", 2, 30, 64, progress=False)
    concurrent = score_plan(learner, source, plan, settings)
    monkeypatch.setattr(type(learner), "concurrent_prediction", False)
    in_order = score_plan(learner, source, plan, settings)
    assert torch.equal(concurrent.intersection, in_order.intersection)
    assert torch.equal(concurrent.union, in_order.union)
    assert concurrent.union.sum() > 0


def synthetic_baseline() -> tuple[SegmentationSource, Learner]:
    torch.manual_seed(0)
    source = open_source("synthetic:images=4,size=64")
    return source, LEARNERS.get("baseline")(LearnerConfig(pretrained=False))


def test_the_main_thread_runs_the_backbone_and_the_scoring_thread_adapts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, learner = synthetic_baseline()
    encoding_threads: set[str] = set()
    adapting_threads: set[str] = set()
    learner.backbone.register_forward_hook(
        lambda *_: encoding_threads.add(threading.current_thread().name)
    )
    adapt = learner.adapt

    def recorded_adapt(support):
        adapting_threads.add(threading.current_thread().name)
        return adapt(support)

    monkeypatch.setattr(learner, "adapt", recorded_adapt)
    plan = episode_plan(source, source.fold_split("0").test, 1, 20, seed=1)
    score_plan(learner, source, plan, EvaluationSettings("0", 1, 20, 64, progress=False))
    assert encoding_threads == {threading.main_thread().name}
    assert adapting_threads and threading.main_thread().name not in adapting_threads


def test_with_several_torch_threads_encoder_threads_encode_each_image_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, learner = synthetic_baseline()
    encoded: list[tuple[str, int]] = []
    learner.backbone.register_forward_hook(
        lambda _, inputs, __: encoded.append((threading.current_thread().name, len(inputs[0])))
    )
    plan = episode_plan(source, source.fold_split("0").test, 2, 30, seed=1)
    settings = EvaluationSettings("0", 2, 30, 64, progress=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = score_plan(learner, source, plan, settings)
        assert torch.get_num_threads() == 2  # the caller's setting, back
    finally:
        torch.set_num_threads(saved)
    distinct = {(e.class_index, i) for e in plan.episodes for i in (e.query, *e.support)}
    images = {i for _, i in distinct}
    assert {name.split("_")[0] for name, _ in encoded} == {"fewseg-encode"}
    assert sum(n for _, n in encoded) == len(images)  # once per image, whatever its class
    monkeypatch.setattr(type(learner), "concurrent_prediction", False)
    in_order = score_plan(learner, source, plan, settings)
    assert torch.equal(parallel.intersection, in_order.intersection)
    assert torch.equal(parallel.union, in_order.union)
