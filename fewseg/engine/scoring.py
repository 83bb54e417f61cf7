"""Scoring predictions on a second thread, behind the thread that adapts and encodes.

The evaluation's main thread queues each episode's predictor and query; a background
thread predicts and scores them in order. When the episodes run out, the main thread
scores what is still queued alongside it, from the other end of the queue, so that
neither core idles at the end. Each thread counts into its own scores: the counts are
integers, so their sum does not depend on which thread scored which episode.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import torch

from fewseg.identity_memo import IdentityMemo
from fewseg.learners.base import Predictor
from fewseg.metrics import GroundTruth, SegmentationScores
from fewseg.models.segmenter import foreground_logit
from fewseg.threads import set_up_helper_thread


def foreground_prediction(logits: torch.Tensor) -> torch.Tensor:
    """A predictor's logits (:data:`fewseg.learners.base.Predictor`) → [B,H,W] bool: a
    positive foreground log-odds; ties go to background.

    Compared by NumPy on the CPU: torch's comparison took ten times as long here
    (130 against 12 µs at 400x400)."""
    log_odds = foreground_logit(logits.detach()).cpu()
    if log_odds.dtype not in (torch.float32, torch.float64):  # NumPy has no bfloat16
        log_odds = log_odds.float()
    return torch.from_numpy(np.greater(log_odds.numpy(), 0))


@dataclass(frozen=True)
class QueuedQuery:
    class_index: int
    predict: Predictor
    image: torch.Tensor  # [1,3,H,W], on the learner's device
    mask: torch.Tensor  # [H,W]
    ignore: torch.Tensor  # [H,W] bool
    ready: Sequence[Future[None]] = ()  # to wait for first (the encoding of its images)


class GroundTruths(IdentityMemo[GroundTruth]):
    """The prepared ground truth of the query images met, found by the identity of their
    (mask, ignore) tensors: ``get((mask, ignore))``."""

    def __init__(self, capacity: int = 256) -> None:
        super().__init__(GroundTruth.of, capacity)


def score_query(scores: SegmentationScores, query: QueuedQuery, truths: GroundTruths) -> None:
    for future in query.ready:
        future.result()
    prediction = foreground_prediction(query.predict(query.image))[0]
    scores.update_with(query.class_index, prediction, truths.get((query.mask, query.ignore)))


class ScoringQueue:
    """At most ``backlog`` queries wait (which bounds the memory they hold): a caller that
    puts one more scores the newest waiting one itself rather than wait for the worker.
    Use as a context manager; :meth:`finish` returns the scores of every query put."""

    def __init__(self, classes: Sequence[int], backlog: int) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {backlog}")
        self._classes = tuple(classes)
        self._backlog = backlog
        self._queries: deque[QueuedQuery] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._worker_scores = SegmentationScores(self._classes)
        self._caller_scores = SegmentationScores(self._classes)  # the thread that puts
        self._truths = GroundTruths()
        self._thread = threading.Thread(target=self._work, name="fewseg-score", daemon=True)
        self._thread.start()

    def put(self, query: QueuedQuery) -> None:
        with self._changed:
            self._raise_worker_error()
            waiting = self._queries.pop() if len(self._queries) >= self._backlog else None
            self._queries.append(query)
            self._changed.notify_all()
        if waiting is not None:
            score_query(self._caller_scores, waiting, self._truths)

    def finish(self) -> SegmentationScores:
        """Scores the queries still waiting together with the worker, then returns the
        scores of all of them (an error raised while scoring is raised here)."""
        self._close()
        while (query := self._take(newest=True)) is not None:
            score_query(self._caller_scores, query, self._truths)
        self._thread.join()
        self._raise_worker_error()
        scores = SegmentationScores(self._classes)
        scores.add(self._caller_scores)
        scores.add(self._worker_scores)
        return scores

    def __enter__(self) -> ScoringQueue:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():  # left early (an error): drop what waits
            with self._changed:
                self._queries.clear()
            self._close()
            self._thread.join()

    def _close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _take(self, newest: bool) -> QueuedQuery | None:
        with self._changed:
            while not self._queries and not self._closed:
                self._changed.wait()
            if not self._queries or self._error is not None:
                return None
            query = self._queries.pop() if newest else self._queries.popleft()
            self._changed.notify_all()
            return query

    def _work(self) -> None:
        set_up_helper_thread()
        try:
            while (query := self._take(newest=False)) is not None:
                score_query(self._worker_scores, query, self._truths)
        except BaseException as exc:  # handed to the thread that puts or finishes
            with self._changed:
                self._error = exc
                self._queries.clear()
                self._changed.notify_all()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise self._error
