"""Reuse of a predictor when an evaluation meets the same support set again.

At test time adaptation is a deterministic function of the support set, so an episode
whose class and support images were seen before gets the predictor already built. This
is common at 1-shot: a class with n usable images has only n distinct 1-shot support
sets, while a 1000-episode list (times several seeds) draws many more episodes from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from fewseg.learners.base import Predictor

DEFAULT_CAPACITY = 512  # predictors kept (a head's adapted weights are a few hundred KB)


class AdaptationMemo:
    """Predictors by support-set key, least recently used out first.

    Safe to use from several threads (an evaluation adapts on its scoring thread, and the
    main thread scores beside it at the end): a thread that asks for a key being adapted
    on another thread waits for that predictor, so each key is adapted once and counted
    as one miss.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._predictors: OrderedDict[Hashable, Predictor] = OrderedDict()
        self._adapting: dict[Hashable, Future[Predictor]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._predictors)

    def predictor(self, key: Hashable, adapt: Callable[[], Predictor]) -> Predictor:
        with self._lock:
            found = self._predictors.get(key)
            if found is not None:
                self.hits += 1
                self._predictors.move_to_end(key)
                return found
            adapting = self._adapting.get(key)
            if adapting is not None:
                self.hits += 1
            else:
                self.misses += 1
                self._adapting[key] = Future()
        if adapting is not None:
            return adapting.result()
        try:
            predictor = adapt()
        except BaseException as error:
            with self._lock:
                self._adapting.pop(key).set_exception(error)
            raise
        with self._lock:
            if self.capacity:
                self._predictors[key] = predictor
                self._predictors.move_to_end(key)
                if len(self._predictors) > self.capacity:
                    self._predictors.popitem(last=False)
            self._adapting.pop(key).set_result(predictor)
        return predictor
