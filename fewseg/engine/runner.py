"""The evaluation runner: the protocol of fewseg.engine.protocol, fast.

Four kinds of thread share the work and the scores are those of the reference loop
exactly (tests/test_evaluate.py): a loading thread decodes and resizes the next episodes
(or DataLoader processes); encoder threads put the features of their images in a feature
store attached to the learner's encoder (fewseg.engine.features) ahead of the learner;
the calling thread runs the learner, adapting to each support set (once per distinct
support set: :class:`AdaptationMemo`) and predicting the query (once per distinct
episode: :class:`OutcomeMemo`); a scoring thread counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fewseg.data.source import SegmentationSource
from fewseg.engine import distributed
from fewseg.engine.adaptation_memo import AdaptationMemo
from fewseg.engine.features import FeatureStore, attached, evaluation_stores
from fewseg.engine.inference import evaluation_predictor
from fewseg.engine.precision import autocast
from fewseg.engine.region_memo import RegionMemo
from fewseg.engine.scoring import OutcomeMemo, ScoredQuery, ScoringQueue
from fewseg.engine.settings import EvaluationSettings
from fewseg.episodes.prefetch import prefetched
from fewseg.episodes.sampler import Episode, EpisodePlan
from fewseg.episodes.tensors import EpisodeDataset, EpisodeTensors
from fewseg.learners.base import Learner
from fewseg.metrics import SegmentationScores
from fewseg.models.encoder import Encoder

SCORING_BACKLOG = 64  # predictions waiting to be scored (bounds the memory they hold)
LOADING_AHEAD = 32  # episodes loaded ahead of the learner
ENCODING_AHEAD = 16  # episodes whose images are being encoded ahead of the learner


def _first(batch: list[EpisodeTensors]) -> EpisodeTensors:
    return batch[0]


def score_plan(
    learner: Learner,
    source: SegmentationSource,
    plan: EpisodePlan,
    settings: EvaluationSettings,
    description: str = "evaluate",
    memo: AdaptationMemo | None = None,
    outcomes: OutcomeMemo | None = None,
) -> SegmentationScores:
    """:func:`fewseg.engine.protocol.score_plan_reference`, fast. ``memo`` (one per
    learner state, source and image size) lends the predictor of a support set met before
    instead of adapting again; ``outcomes`` (the same) the counts of an episode met before
    (same class, support and query images) instead of predicting and scoring again."""
    memo = memo if memo is not None else AdaptationMemo(capacity=0)

    def scored_before(planned: Episode) -> bool:
        return outcomes is not None and outcome_key(planned) in outcomes

    dataset = EpisodeDataset(
        source,
        tuple(distributed.shard(plan.episodes)),
        settings.size,
        settings.original_truth,
        settings.resize,
    )
    loader: Iterable[EpisodeTensors] = (
        DataLoader(dataset, batch_size=1, collate_fn=_first, num_workers=settings.workers)
        if settings.workers > 0
        else prefetched(dataset, ahead=LOADING_AHEAD)
    )
    device = torch.device(distributed.local_device(settings.device))
    regions = _region_memo(settings)
    learner.eval()
    quiet = not settings.progress or not distributed.is_main()
    stores = evaluation_stores(learner)
    encoder = learner.encoder
    # encoder threads ahead on the CPU; not under autocast, whose state is per thread
    on_threads = device.type == "cpu" and settings.precision == "fp32"
    ahead = {encoder: stores[encoder]} if encoder is not None and on_threads else {}
    with ExitStack() as stack:
        stack.enter_context(attached(stores))
        for store in ahead.values():
            stack.enter_context(store)
            store.start_encoders(torch.get_num_threads())
            # the learner's own operations on one thread too, beside the encoder threads:
            # an idle OpenMP team spins on a core for a while
            stack.enter_context(torch_threads(1))
        queue = stack.enter_context(ScoringQueue(plan.classes_used, SCORING_BACKLOG, outcomes))
        episodes = zip(dataset.episodes, loader, strict=True)
        bar = tqdm(total=len(dataset), desc=description, unit="ep", disable=quiet, leave=False)
        with bar:
            for planned, episode in _encoded_ahead(episodes, ahead, device, scored_before):
                mask, ignore = episode.scored_truth()
                truth_key = (planned.query, planned.class_index)
                episode_key = outcome_key(planned)
                known = outcomes.get(episode_key) if outcomes is not None else None
                if known is not None:
                    queue.put(
                        ScoredQuery(planned.class_index, None, mask, ignore, truth_key, known=known)
                    )
                    bar.update()
                    continue
                with autocast(settings.precision, device):
                    predict = memo.predictor(
                        (planned.class_index, planned.support),
                        lambda: evaluation_predictor(learner, episode.support, settings, regions),  # noqa: B023
                    )
                    with torch.no_grad():
                        logits = predict(episode.query.images)
                queue.put(
                    ScoredQuery(
                        planned.class_index,
                        logits,
                        mask,
                        ignore,
                        truth_key,
                        settings.resize,
                        episode_key,
                    )
                )
                bar.update()
        scores = queue.finish()
    return distributed.all_reduce_scores(scores)


def outcome_key(planned: Episode) -> tuple[int, tuple[str, ...], str]:
    """An episode's key in an :class:`OutcomeMemo`: class, support images, query image."""
    return planned.class_index, planned.support, planned.query


def _region_memo(settings: EvaluationSettings) -> RegionMemo | None:
    """The query images' superpixels kept across episodes, when the options vote on them."""
    if settings.inference is None or not settings.inference.uses_superpixels:
        return None
    return RegionMemo()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """The calling thread's torch CPU threads set to ``count`` for the body."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _encoded_ahead(
    episodes: Iterator[tuple[Episode, EpisodeTensors]],
    stores: dict[Encoder, FeatureStore],
    device: torch.device,
    scored_before: Callable[[Episode], bool],
) -> Iterator[tuple[Episode, EpisodeTensors]]:
    """The episodes on ``device``, each handed out once the encodings of the next
    ``ENCODING_AHEAD`` episodes' images have been asked for (none for an episode
    ``scored_before``: its counts are known, its images will not be read)."""
    waiting: deque[tuple[Episode, EpisodeTensors]] = deque()
    for planned, episode in episodes:
        episode = episode.to(device)
        encoding = {} if scored_before(planned) else stores
        for encoder, store in encoding.items():
            store.encode_ahead(encoder, episode.support.images)
            store.encode_ahead(encoder, episode.query.images)
        waiting.append((planned, episode))
        if len(waiting) > ENCODING_AHEAD:
            yield waiting.popleft()
    yield from waiting
