"""Reuse of a predictor when an evaluation meets the same support set again.

At test time adaptation is a deterministic function of the support set, so an episode
whose class and support images were seen before gets the predictor already built. This
is common at 1-shot: a class with n usable images has only n distinct 1-shot support
sets, while a 1000-episode list (times several seeds) draws many more episodes from it.

Predictors differ in what they hold: a prototype learner's, two vectors; a fine-tuned
head's, its weights; the correlation model's, its support images and masks (13 MB at 5
shots and 400x400). So the memo is bounded by the bytes of the tensors its predictors hold, as well
as by their number.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

from fewseg.learners.base import Predictor

DEFAULT_CAPACITY = 512  # predictors kept (a head's adapted weights are a few hundred KB)
DEFAULT_MAX_BYTES = 1 << 30  # of tensors held by the kept predictors
SEARCH_DEPTH = 6  # references followed from a predictor to the tensors it holds


def held_bytes(predictor: Any, depth: int = SEARCH_DEPTH) -> int:
    """The bytes of the tensor storages a predictor holds: those reached through its
    closure, attributes and containers, each storage once. Modules (the learner, its
    networks) are shared by every predictor and not counted."""
    storages: dict[int, int] = {}
    seen: set[int] = set()
    frontier = [predictor]
    for _ in range(depth):
        reached: list[Any] = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, nn.Module):
                continue
            seen.add(id(obj))
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            else:
                reached.extend(_references(obj))
        frontier = reached
    return sum(storages.values())


def _references(obj: Any) -> list[Any]:
    if isinstance(obj, types.FunctionType):
        cells = obj.__closure__ or ()
        return [c.cell_contents for c in cells if c.cell_contents is not None]
    if isinstance(obj, types.MethodType):
        return [obj.__self__, obj.__func__]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, type | types.ModuleType | str | bytes | int | float | bool):
        return []
    return list(vars(obj).values()) if hasattr(obj, "__dict__") else []


class AdaptationMemo:
    """Predictors by support-set key, least recently used out first beyond ``capacity``
    predictors or ``max_bytes`` of tensors held (:func:`held_bytes`; one thread)."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._predictors: OrderedDict[Hashable, Predictor] = OrderedDict()
        self._bytes: dict[Hashable, int] = {}
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
        if not self.capacity:
            return predictor
        size = held_bytes(predictor)
        if size > self.max_bytes:
            return predictor
        self._predictors[key] = predictor
        self._bytes[key] = size
        while len(self._predictors) > self.capacity or self.held > self.max_bytes:
            evicted, _ = self._predictors.popitem(last=False)
            del self._bytes[evicted]
        return predictor

    @property
    def held(self) -> int:
        """Bytes of tensors the kept predictors hold (each predictor's counted alone)."""
        return sum(self._bytes.values())
