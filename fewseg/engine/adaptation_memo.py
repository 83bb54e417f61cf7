"""Reuse of a predictor when an evaluation meets the same support set again.

At test time adaptation is a deterministic function of the support set, so an episode
whose class and support images were seen before gets the predictor already built. This
is common at 1-shot: a class with n usable images has only n distinct 1-shot support
sets, while a 1000-episode list (times several seeds) draws many more episodes from it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from fewseg.learners.base import Predictor

DEFAULT_CAPACITY = 512  # predictors kept (a head's adapted weights are a few hundred KB)


class AdaptationMemo:
    """Predictors by support-set key, least recently used out first (one thread)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._predictors: OrderedDict[Hashable, Predictor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._predictors)

    def predictor(self, key: Hashable, adapt: Callable[[], Predictor]) -> Predictor:
        found = self._predictors.get(key)
        if found is not None:
            self.hits += 1
            self._predictors.move_to_end(key)
            return found
        self.misses += 1
        predictor = adapt()
        if self.capacity:
            self._predictors[key] = predictor
            if len(self._predictors) > self.capacity:
                self._predictors.popitem(last=False)
        return predictor
