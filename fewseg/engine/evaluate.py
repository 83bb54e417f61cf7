"""Evaluation: a learner over one fixed episode list per seed, scored by the HSNet/PFENet
protocol (fewseg.engine.protocol), into an :class:`EvaluationReport`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from fewseg import __version__
from fewseg.data.source import SegmentationSource
from fewseg.engine import distributed
from fewseg.engine.adaptation_memo import DEFAULT_CAPACITY, AdaptationMemo
from fewseg.engine.precision import check_precision
from fewseg.engine.report import EvaluationReport, ReportSettings, SeedResult
from fewseg.engine.runner import score_plan
from fewseg.engine.scoring import OutcomeMemo
from fewseg.engine.settings import EvaluationSettings
from fewseg.episodes.sampler import EpisodePlan, episode_plan
from fewseg.learners.base import Learner
from fewseg.metrics import SegmentationScores

PlanScorer = Callable[
    [Learner, SegmentationSource, EpisodePlan, EvaluationSettings], SegmentationScores
]
"""``score_plan`` of the fast runner, or the reference loop ``score_plan_reference``."""

__all__ = ["EvaluationSettings", "evaluate", "evaluate_seed"]


def evaluate_seed(
    learner: Learner,
    source: SegmentationSource,
    plan: EpisodePlan,
    settings: EvaluationSettings,
    seed: int,
    scorer: PlanScorer,
) -> SeedResult:
    start = time.perf_counter()
    scores = scorer(learner, source, plan, settings)
    seconds = time.perf_counter() - start
    per_class = {source.class_name(c): 100 * iou for c, iou in scores.class_iou().items()}
    boundary = {source.class_name(c): 100 * b for c, b in scores.class_boundary_iou().items()}
    return SeedResult(
        seed,
        100 * scores.miou(),
        100 * scores.fbiou(),
        per_class,
        seconds,
        100 * scores.boundary_iou(),
        boundary,
    )


def _boundary(run: SeedResult) -> float:
    assert run.boundary_iou is not None  # every run of this fewseg scores it
    return run.boundary_iou


SUPPORT_HOLDING_CAPACITY = 32


def with_missing_as_zero(run: SeedResult, fold_classes: Sequence[str]) -> SeedResult:
    """``--missing-classes zero`` (HSNet's meter): every test class of the fold in
    ``per_class``, IoU 0 for one without a scored episode (none drew it, or it has too
    few images), and mIoU the mean over them all."""
    per_class = {name: run.per_class.get(name, 0.0) for name in fold_classes}
    return replace(run, miou=statistics.fmean(per_class.values()), per_class=per_class)


def scored_at(settings: EvaluationSettings) -> str:
    """What ``report.json`` says of the resolution predictions were scored at."""
    if settings.score_at == "original":
        return "original: logits resized to each query label's own size"
    return f"evaluation resolution {settings.size}x{settings.size}"


def _fast_scorer(settings: EvaluationSettings) -> PlanScorer:
    """The runner, sharing one adaptation memo and one outcome memo across the seeds' lists
    (they share support sets and whole episodes, mostly at 1-shot). Predictors that keep
    their support set (refinements, a presence threshold) are kept fewer: each holds the
    support images and their features."""
    holds_support = settings.inference is not None and settings.inference.needs_support
    memo = AdaptationMemo(SUPPORT_HOLDING_CAPACITY if holds_support else DEFAULT_CAPACITY)
    outcomes = OutcomeMemo()

    def scorer(
        learner: Learner, source: SegmentationSource, plan: EpisodePlan, s: EvaluationSettings
    ) -> SegmentationScores:
        return score_plan(learner, source, plan, s, f"seed {plan.seed}", memo, outcomes)

    return scorer


def evaluate(
    learner: Learner,
    source: SegmentationSource,
    dataset: str,
    settings: EvaluationSettings,
    seeds: Sequence[int],
    trained: dict[str, Any] | None = None,
    scorer: PlanScorer | None = None,
) -> EvaluationReport:
    """Evaluate ``learner`` on one fixed episode list per seed of ``source`` (named
    ``dataset``, its spec) and report. ``scorer``: the fast runner unless given."""
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    device = distributed.local_device(settings.device)
    check_precision(settings.precision, device)
    learner = learner.to(torch.device(device))
    scorer = scorer or _fast_scorer(settings)
    split = source.fold_split(settings.fold)
    runs: list[SeedResult] = []
    for seed in seeds:
        plan = episode_plan(
            source, split.test, settings.shots, settings.episodes, seed, settings.min_class_images
        )
        runs.append(evaluate_seed(learner, source, plan, settings, seed, scorer))
    without_episodes = sorted(
        source.class_name(c)
        for c in plan.classes_used
        if all(source.class_name(c) not in r.per_class for r in runs)
    )
    if settings.missing_classes == "zero":
        fold_classes = [source.class_name(c) for c in split.test]
        runs = [with_missing_as_zero(r, fold_classes) for r in runs]
    several = len(runs) > 1
    names = sorted({name for r in runs for name in r.per_class})
    return EvaluationReport(
        fewseg_version=__version__,
        settings=ReportSettings(
            dataset=dataset,
            source=source.settings(),
            fold=settings.fold,
            shots=settings.shots,
            episodes=settings.episodes,
            seeds=list(seeds),
            image_size=settings.size,
            scored_at=scored_at(settings),
            missing_classes=settings.missing_classes,
            precision=settings.precision,
            learner=learner.settings(),
            device=settings.device,
            trained=trained,
            inference=settings.inference.to_dict() if settings.inference else None,
            min_class_images=settings.min_class_images,
        ),
        miou=statistics.fmean(r.miou for r in runs),
        fbiou=statistics.fmean(r.fbiou for r in runs),
        miou_std=statistics.pstdev(r.miou for r in runs) if several else None,
        fbiou_std=statistics.pstdev(r.fbiou for r in runs) if several else None,
        boundary_iou=statistics.fmean(_boundary(r) for r in runs),
        boundary_iou_std=statistics.pstdev(_boundary(r) for r in runs) if several else None,
        per_class={
            n: statistics.fmean(r.per_class[n] for r in runs if n in r.per_class) for n in names
        },
        per_class_boundary={
            n: statistics.fmean(r.per_class_boundary[n] for r in runs if n in r.per_class_boundary)
            for n in sorted({n for r in runs for n in r.per_class_boundary})
        },
        seconds=sum(r.seconds for r in runs),
        runs=runs,
        fold_convention=split.convention,
        classes_used=[source.class_name(c) for c in plan.classes_used],
        classes_left_out={source.class_name(c): n for c, n in plan.classes_left_out.items()},
        classes_without_episodes=without_episodes,
        meta_train_classes=[source.class_name(c) for c in split.train],
    )
