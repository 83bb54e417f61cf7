"""Scoring predictions on a thread of its own, behind the thread that runs the learner,
and remembering what each query scored (:class:`OutcomeMemo`)."""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch
import torch.nn.functional as F

from fewseg.episodes.transforms import unpadded
from fewseg.metrics import GroundTruth, QueryCounts, SegmentationScores
from fewseg.models.segmenter import foreground_logit
from fewseg.threads import set_up_helper_thread

GROUND_TRUTHS_KEPT = 256
OUTCOMES_KEPT = 1 << 16  # a query's counts are a few dozen bytes


def foreground_prediction(
    logits: torch.Tensor, size: tuple[int, int] | None = None, resize: str = "squash"
) -> torch.Tensor:
    """A predictor's logits (:data:`fewseg.learners.base.Predictor`) → [B,H,W] bool: a
    positive foreground log-odds; ties go to background. ``size`` (H, W): the log-odds are
    first resized bilinearly to it when they are not at it already (``--score-at
    original``: each query scored at its label's own size, as ``fewseg segment`` resizes),
    the padding cut off first when the images were padded (``resize="pad"``).

    Compared by NumPy on the CPU: torch's comparison took ten times as long here
    (130 against 12 µs at 400x400)."""
    log_odds = foreground_logit(logits.detach())
    if size is not None and tuple(log_odds.shape[-2:]) != tuple(size):
        if resize == "pad":
            log_odds = unpadded(log_odds, *size)
        log_odds = F.interpolate(log_odds[:, None].float(), tuple(size), mode="bilinear")[:, 0]
    log_odds = log_odds.cpu()
    if log_odds.dtype not in (torch.float32, torch.float64):  # NumPy has no bfloat16
        log_odds = log_odds.float()
    return torch.from_numpy(np.greater(log_odds.numpy(), 0))


@dataclass(frozen=True)
class ScoredQuery:
    """One episode's prediction and its query's ground truth (prepared once per
    ``truth_key``: an evaluation queries each image with each of its classes many times).
    ``outcome_key`` names the episode for an :class:`OutcomeMemo`; ``known``: the counts
    it gave before, when met again (no logits then)."""

    class_index: int
    logits: torch.Tensor | None  # [1,1,H,W] or [1,2,H,W]
    mask: torch.Tensor  # [H,W]
    ignore: torch.Tensor  # [H,W] bool
    truth_key: Hashable
    resize: str = "squash"  # how the query reached the model's size (squash or pad)
    outcome_key: Hashable | None = None
    known: QueryCounts | None = None


class OutcomeMemo:
    """The counts each scored episode gave, by its key (class, support images, query image),
    least recently used out first beyond ``capacity``. At test time a prediction is a
    deterministic function of the support set and the query, so an episode met again (at
    1-shot the seeds' lists share about half their episodes) needs neither the learner nor
    the scoring: its counts are added again. Written by the scoring thread, read by the
    runner's."""

    def __init__(self, capacity: int = OUTCOMES_KEPT) -> None:
        self.capacity = capacity
        self._counts: OrderedDict[Hashable, QueryCounts] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._counts

    def get(self, key: Hashable) -> QueryCounts | None:
        with self._lock:
            found = self._counts.get(key)
            if found is not None:
                self._counts.move_to_end(key)
                self.hits += 1
            return found

    def put(self, key: Hashable, counts: QueryCounts) -> None:
        with self._lock:
            self._counts[key] = counts
            self._counts.move_to_end(key)
            while len(self._counts) > self.capacity:
                self._counts.popitem(last=False)


class ScoringQueue:
    """Use as a context manager: :meth:`put` queues a query for the scoring thread (waiting
    while ``backlog`` are queued, which bounds the memory they hold); :meth:`finish`
    returns the scores of every query put; ``outcomes`` receives each keyed query's
    counts. An error raised while scoring is raised by the next :meth:`put` or by :meth:`finish`."""

    def __init__(
        self, classes: Sequence[int], backlog: int, outcomes: OutcomeMemo | None = None
    ) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {backlog}")
        self._scores = SegmentationScores(classes)
        self._outcomes = outcomes
        self._queries: queue.Queue[ScoredQuery | None] = queue.Queue(backlog)
        self._truths: OrderedDict[Hashable, GroundTruth] = OrderedDict()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="fewseg-score", daemon=True)
        self._thread.start()

    def put(self, query: ScoredQuery) -> None:
        self._raise_error()
        self._queries.put(query)

    def finish(self) -> SegmentationScores:
        self._queries.put(None)
        self._thread.join()
        self._raise_error()
        return self._scores

    def __enter__(self) -> ScoringQueue:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():  # left early (an error): stop the worker
            self._error = self._error or RuntimeError("scoring stopped")
            self._queries.put(None)
            self._thread.join()

    def _truth(self, query: ScoredQuery) -> GroundTruth:
        truth = self._truths.get(query.truth_key)
        if truth is None:
            truth = self._truths[query.truth_key] = GroundTruth.of(query.mask, query.ignore)
            if len(self._truths) > GROUND_TRUTHS_KEPT:
                self._truths.popitem(last=False)
        else:
            self._truths.move_to_end(query.truth_key)
        return truth

    def _work(self) -> None:
        set_up_helper_thread()
        while (query := self._queries.get()) is not None:
            if self._error is not None:
                continue  # drain after an error, so that a waiting put returns
            try:
                self._scores.add_query(query.class_index, self._counts(query))
            except BaseException as exc:  # handed to the thread that puts or finishes
                self._error = exc

    def _counts(self, query: ScoredQuery) -> QueryCounts:
        if query.known is not None:
            return query.known
        assert query.logits is not None
        prediction = foreground_prediction(query.logits, query.mask.shape[-2:], query.resize)
        counts = QueryCounts.of(prediction[0], self._truth(query))
        if self._outcomes is not None and query.outcome_key is not None:
            self._outcomes.put(query.outcome_key, counts)
        return counts

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
