"""The fast evaluation runner gives the reference protocol loop's scores exactly, for every
learner; its threads and its feature store do what they are for."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from tiny_training import tiny_options

from fewseg.data.source import SegmentationSource
from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.protocol import score_plan_reference
from fewseg.engine.report import EvaluationReport, read_report, write_report
from fewseg.engine.runner import score_plan
from fewseg.engine.scoring import OutcomeMemo
from fewseg.episodes.sampler import episode_plan
from fewseg.learners import LEARNERS, Learner, build_learner
from fewseg.models.backbones import Backbone

LEARNER_NAMES = [entry.name for entry in LEARNERS]
SOURCE = "synthetic:images=4,size=64"


def tiny_learner(name: str, backbone: str = "convnet") -> Learner:
    torch.manual_seed(0)
    return build_learner(name, tiny_options(name, backbone=backbone))


def without_times(report: EvaluationReport) -> dict:
    data = report.to_json()
    data.pop("seconds")
    for run in data["runs"]:
        run.pop("seconds")
    return data


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_the_runner_reports_what_the_reference_loop_reports(name: str, threads: int) -> None:
    source = open_source(SOURCE)
    learner = tiny_learner(name, "mobilenet_v2_s8")
    settings = EvaluationSettings("0", 2, 24, 64, progress=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = evaluate(learner, source, SOURCE, settings, [0, 1])
        assert torch.get_num_threads() == threads  # the caller's setting, back
    finally:
        torch.set_num_threads(saved)
    reference = evaluate(learner, source, SOURCE, settings, [0, 1], scorer=score_plan_reference)
    assert without_times(fast) == without_times(reference)
    assert 0 < fast.miou < 100


def test_encoder_threads_encode_each_image_once_and_the_learner_runs_on_the_caller() -> None:
    source = open_source(SOURCE)
    learner = tiny_learner("baseline", "mobilenet_v2_s8")
    assert isinstance(learner.encoder, Backbone)
    encoded: list[tuple[str, int]] = []
    learner.encoder.register_forward_hook(
        lambda _, inputs, __: encoded.append((threading.current_thread().name, len(inputs[0])))
    )
    adapting: set[str] = set()
    adapt = learner.adapt

    def recorded(support):
        adapting.add(threading.current_thread().name)
        return adapt(support)

    learner.adapt = recorded  # type: ignore[method-assign]
    plan = episode_plan(source, source.fold_split("0").test, 2, 30, seed=1)
    score_plan(learner, source, plan, EvaluationSettings("0", 2, 30, 64, progress=False))
    images = {i for e in plan.episodes for i in (e.query, *e.support)}
    assert {name.split("_")[0] for name, _ in encoded} == {"fewseg-encode"}
    assert [n for _, n in encoded] == [1] * len(images)  # once per image, whatever its class
    assert adapting == {threading.current_thread().name}


def test_the_encoder_of_a_protonet_is_its_embedding_network_kept_per_image() -> None:
    """In an evaluation the neck's output is kept with the backbone's: both run once per image."""
    source = open_source(SOURCE)
    learner = tiny_learner("protonet")
    calls: list[int] = []
    learner.encoder.neck.register_forward_hook(lambda _, inputs, __: calls.append(len(inputs[0])))
    plan = episode_plan(source, source.fold_split("0").test, 1, 30, seed=1)
    score_plan(learner, source, plan, EvaluationSettings("0", 1, 30, 64, progress=False))
    images = {i for e in plan.episodes for i in (e.query, *e.support)}
    assert sum(calls) == len(images)


def test_an_episode_met_again_is_neither_predicted_nor_scored_again() -> None:
    """Three seeds' 1-shot lists share whole episodes (class, support, query): the learner
    predicts each distinct one once, and the scores are the reference loop's."""
    source = open_source(SOURCE)
    learner = tiny_learner("baseline", "mobilenet_v2_s8")
    settings = EvaluationSettings("0", 1, 30, 64, progress=False)
    predicted: list[int] = []
    adapt = learner.adapt

    def counted(support):
        predict = adapt(support)

        def predict_counted(images):
            predicted.append(len(images))
            return predict(images)

        return predict_counted

    learner.adapt = counted  # type: ignore[method-assign]
    seeds = [0, 1, 2]
    fast = evaluate(learner, source, SOURCE, settings, seeds)
    test = source.fold_split("0").test
    plans = [episode_plan(source, test, 1, 30, seed) for seed in seeds]
    episodes = [(e.class_index, e.support, e.query) for p in plans for e in p.episodes]
    assert len(set(episodes)) < len(episodes)  # the lists do share episodes
    assert sum(predicted) == len(set(episodes))
    reference = evaluate(learner, source, SOURCE, settings, seeds, scorer=score_plan_reference)
    assert without_times(fast) == without_times(reference)


def test_a_list_scored_before_is_neither_encoded_nor_predicted_again() -> None:
    """protonet's neck is trained, so its features are kept for one list only: a second
    pass would encode every image again, were its episodes' counts not known."""
    source = open_source(SOURCE)
    learner = tiny_learner("protonet")
    plan = episode_plan(source, source.fold_split("0").test, 1, 30, seed=1)
    settings = EvaluationSettings("0", 1, 30, 64, progress=False)
    outcomes = OutcomeMemo()
    first = score_plan(learner, source, plan, settings, outcomes=outcomes)
    encoded: list[int] = []
    learner.encoder.neck.register_forward_hook(lambda _, inputs, __: encoded.append(1))
    adapted: list[int] = []
    adapt = learner.adapt

    def recorded(support):
        adapted.append(1)
        return adapt(support)

    learner.adapt = recorded  # type: ignore[method-assign]
    again = score_plan(learner, source, plan, settings, outcomes=outcomes)
    assert encoded == [] and adapted == []
    assert torch.equal(again.intersection, first.intersection)
    assert torch.equal(again.union, first.union)
    assert torch.equal(again.boundary_union, first.boundary_union)
    assert torch.equal(again.episodes, first.episodes) and again.episodes.sum() == 30


def test_the_report_round_trips_through_its_json(tmp_path: Path) -> None:
    source: SegmentationSource = open_source(SOURCE)
    learner = tiny_learner("baseline")
    settings = EvaluationSettings("0", 1, 8, 64, progress=False)
    report = evaluate(learner, source, SOURCE, settings, [0, 3], trained={"step": 5})
    path = write_report(tmp_path, report)
    data = json.loads(path.read_text())
    assert list(data)[:6] == [
        "fewseg_version",
        "settings",
        "miou",
        "fbiou",
        "miou_std",
        "fbiou_std",
    ]
    assert data["settings"]["trained"] == {"step": 5}
    assert read_report(path) == report
    single = evaluate(learner, source, SOURCE, settings, [0])
    assert "miou_std" not in single.to_json() and "trained" not in single.to_json()["settings"]
    assert single.miou == report.runs[0].miou
