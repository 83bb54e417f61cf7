"""Values derived from tensors, found again by the tensors' identity.

An evaluation's samples hand out the same tensor objects for every episode that uses an
image (fewseg.episodes.sample_cache), so what is derived from them once (a query's prepared
ground truth, a support mask's pooled weights) can be found by identity, without hashing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    """``get(tensors, *extra)`` → ``compute(*tensors, *extra)``, remembered for the given
    tensor objects (and hashable ``extra``), least recently used out first. An entry keeps
    its tensors referenced, so no other tensor can take their identity meanwhile, and an
    in-place change (a new version) is a miss. ``compute`` is given here or per call.
    Thread-safe; a copy or a pickle starts empty."""

    def __init__(self, compute: Callable[..., T] | None, capacity: int) -> None:
        self.compute = compute
        self.capacity = capacity
        # key → (value, the tensors, kept only to hold their identities)
        self._entries: OrderedDict[Hashable, tuple[T, tuple[torch.Tensor, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        tensors: tuple[torch.Tensor, ...],
        *extra: Hashable,
        compute: Callable[..., T] | None = None,
    ) -> T:
        key = (*((id(t), t._version) for t in tensors), *extra)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0]
        compute = compute or self.compute
        if compute is None:
            raise ValueError("IdentityMemo.get needs a compute function")
        value = compute(*tensors, *extra)
        with self._lock:
            self._entries[key] = (value, tensors)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict[str, object]:
        return {"compute": self.compute, "capacity": self.capacity}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["compute"], state["capacity"])  # type: ignore[misc, arg-type]
