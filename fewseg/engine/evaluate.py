"""Evaluation: a learner over a fixed episode list, scored by the HSNet/PFENet protocol."""

from __future__ import annotations

import statistics
import time
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fewseg import __version__
from fewseg.data.source import FoldSplit, SegmentationSource
from fewseg.engine import distributed
from fewseg.engine.adaptation_memo import AdaptationMemo
from fewseg.engine.encoding import ParallelEncoding
from fewseg.engine.scoring import QueuedQuery, ScoringQueue
from fewseg.episodes.prefetch import prefetched
from fewseg.episodes.sampler import EpisodePlan, episode_plan
from fewseg.episodes.tensors import EpisodeDataset, EpisodeTensors, SupportSet
from fewseg.learners.base import Learner, Predictor
from fewseg.metrics import SegmentationScores

SCORING_BACKLOG = 64  # queries waiting to be scored (bounds the memory they hold)
LOADING_AHEAD = 32  # episodes loaded ahead of adaptation


@dataclass(frozen=True)
class EvaluationSettings:
    fold: str
    shots: int
    episodes: int
    size: int
    workers: int = 0
    device: str = "cpu"
    progress: bool = True
    min_class_images: int = 0  # e.g. 6: the same classes for 1- and 5-shot evaluation


@dataclass(frozen=True)
class SeedResult:
    seed: int
    miou: float  # percent
    fbiou: float  # percent
    per_class: dict[str, float]  # class name → IoU in percent
    seconds: float


def _first(batch: list[EpisodeTensors]) -> EpisodeTensors:
    return batch[0]


def score_plan(
    learner: Learner,
    source: SegmentationSource,
    plan: EpisodePlan,
    settings: EvaluationSettings,
    description: str = "evaluate",
    memo: AdaptationMemo | None = None,
) -> SegmentationScores:
    """Adapt to each episode's support set, predict its query, accumulate per-class I/U.

    ``memo`` (one per learner state, source and image size) lends the predictor of a
    support set met before instead of adapting again.

    In a torchrun run each rank scores every world_size-th episode and the sums are
    all-reduced: every rank returns the single-process scores exactly.
    """
    memo = memo if memo is not None else AdaptationMemo(capacity=0)
    dataset = EpisodeDataset(source, tuple(distributed.shard(plan.episodes)), settings.size)
    loader: Iterable[EpisodeTensors] = (
        DataLoader(dataset, batch_size=1, collate_fn=_first, num_workers=settings.workers)
        if settings.workers > 0
        else prefetched(dataset, ahead=LOADING_AHEAD)
    )
    device = torch.device(distributed.local_device(settings.device))
    learner.eval()
    quiet = not settings.progress or not distributed.is_main()
    bar = tqdm(loader, desc=description, unit="ep", total=len(dataset), disable=quiet, leave=False)
    # Scoring runs on a second thread, behind the main thread. Where the learner allows it,
    # so do adaptation and prediction: the main thread then only puts the features of the
    # episode's images in the learner's cache (the backbone is the bulk of an evaluation),
    # where the scoring thread finds them; with several torch threads, encoder threads do
    # that, and the main thread hands out the images.
    encoders = torch.get_num_threads() if _encodes_ahead(learner, device) else 1
    with (
        ScoringQueue(plan.classes_used, SCORING_BACKLOG) as queue,
        ParallelEncoding(learner, encoders) if encoders > 1 else nullcontext() as encoding,
    ):
        for planned, episode in zip(dataset.episodes, bar, strict=True):
            support = episode.support
            query = episode.query_image[None].to(device)
            key = (planned.class_index, planned.support)
            ready: list[Future[None]] = []
            if learner.concurrent_prediction:
                support = support.to(device)
                if encoding is not None:
                    # the loader's own tensors, met again by identity (on the CPU)
                    ready = encoding.submit([*support.encoder_images(), episode.query_image])
                else:
                    learner.cache_features(support.encoder_images())
                    learner.cache_features(query)
                predict = _adapted_when_called(memo, key, learner, support)
            else:
                predict = memo.predictor(
                    key,
                    lambda: learner.adapt(support.to(device)),  # noqa: B023 (called at once)
                )
                predict = _predicted(predict(query))
            queue.put(
                QueuedQuery(
                    episode.class_index,
                    predict,
                    query,
                    episode.query_mask,
                    episode.query_ignore,
                    ready,
                )
            )
        scores = queue.finish()
    return distributed.all_reduce_scores(scores)


def _encodes_ahead(learner: Learner, device: torch.device) -> bool:
    """Whether encoder threads can put the episodes' features in the learner's caches."""
    return (
        device.type == "cpu"
        and learner.concurrent_prediction
        and any(cache.backbone.frozen for cache in learner.feature_caches())
    )


def _adapted_when_called(
    memo: AdaptationMemo, key: Hashable, learner: Learner, support: SupportSet
) -> Predictor:
    """A predictor that adapts to ``support`` (or finds it adapted) on the thread that
    predicts."""
    return lambda query: memo.predictor(key, lambda: learner.adapt(support))(query)


def _predicted(logits: torch.Tensor) -> Predictor:
    return lambda _: logits


def evaluate_seed(
    learner: Learner,
    source: SegmentationSource,
    split: FoldSplit,
    settings: EvaluationSettings,
    seed: int,
    memo: AdaptationMemo | None = None,
) -> tuple[SeedResult, EpisodePlan]:
    plan = episode_plan(
        source, split.test, settings.shots, settings.episodes, seed, settings.min_class_images
    )
    start = time.perf_counter()
    scores = score_plan(learner, source, plan, settings, f"seed {seed}", memo)
    seconds = time.perf_counter() - start
    per_class = {source.class_name(c): 100 * iou for c, iou in scores.class_iou().items()}
    result = SeedResult(seed, 100 * scores.miou(), 100 * scores.fbiou(), per_class, seconds)
    return result, plan


def summarize(results: Sequence[SeedResult]) -> dict[str, Any]:
    """Mean over seeds (and population std when there are several)."""
    summary: dict[str, Any] = {
        "miou": statistics.fmean(r.miou for r in results),
        "fbiou": statistics.fmean(r.fbiou for r in results),
    }
    if len(results) > 1:
        summary["miou_std"] = statistics.pstdev(r.miou for r in results)
        summary["fbiou_std"] = statistics.pstdev(r.fbiou for r in results)
    names = sorted({name for r in results for name in r.per_class})
    summary["per_class"] = {
        n: statistics.fmean(r.per_class[n] for r in results if n in r.per_class) for n in names
    }
    summary["seconds"] = sum(r.seconds for r in results)
    return summary


def evaluate(
    learner: Learner,
    source: SegmentationSource,
    settings: EvaluationSettings,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """Evaluate over one fixed episode list per seed; returns the report's result fields.

    ``classes_without_episodes`` names usable test classes that no episode drew (possible
    with few episodes): mIoU averages only the classes that were scored.
    """
    split = source.fold_split(settings.fold)
    runs: list[SeedResult] = []
    plan: EpisodePlan | None = None
    memo = AdaptationMemo()  # the seeds' lists share support sets, mostly at 1-shot
    for seed in seeds:
        result, plan = evaluate_seed(learner, source, split, settings, seed, memo)
        runs.append(result)
    assert plan is not None
    return {
        **summarize(runs),
        "runs": [r.__dict__ for r in runs],
        "fold_convention": split.convention,
        "classes_used": [source.class_name(c) for c in plan.classes_used],
        "classes_left_out": {source.class_name(c): n for c, n in plan.classes_left_out.items()},
        "classes_without_episodes": sorted(
            source.class_name(c)
            for c in plan.classes_used
            if all(source.class_name(c) not in r.per_class for r in runs)
        ),
        "meta_train_classes": [source.class_name(c) for c in split.train],
    }


def evaluation_report(
    learner: Learner,
    source: SegmentationSource,
    dataset: str,
    settings: EvaluationSettings,
    seeds: Sequence[int],
    trained: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate and assemble the full ``report.json`` content (settings + results)."""
    device = distributed.local_device(settings.device)
    results = evaluate(learner.to(device), source, settings, seeds)
    return {
        "fewseg_version": __version__,
        "settings": {
            "dataset": dataset,
            "source": source.settings(),
            "fold": settings.fold,
            "shots": settings.shots,
            "episodes": settings.episodes,
            "seeds": list(seeds),
            "image_size": settings.size,
            "scored_at": f"evaluation resolution {settings.size}x{settings.size}",
            "learner": learner.settings(),
            "device": settings.device,
            **({"trained": trained} if trained else {}),
        },
        **results,
    }
