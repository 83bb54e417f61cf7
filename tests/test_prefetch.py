"""Prefetched items come in order; an error in loading one surfaces where it is consumed."""

from __future__ import annotations

import threading

import pytest

from fewseg.episodes.prefetch import prefetched


class Items:
    def __init__(self, n: int, failing: int | None = None) -> None:
        self.n, self.failing = n, failing
        self.threads: set[str] = set()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        self.threads.add(threading.current_thread().name)
        if index == self.failing:
            raise ValueError(f"item {index} is corrupt")
        return index * index


def test_items_come_in_order_from_a_background_thread() -> None:
    items = Items(10)
    assert list(prefetched(items, ahead=3)) == [i * i for i in range(10)]
    assert all(name.startswith("fewseg-prefetch") for name in items.threads)
    assert list(prefetched(Items(0))) == []


def test_an_error_is_raised_at_its_item() -> None:
    seen = []
    with pytest.raises(ValueError, match="item 4 is corrupt"):
        for value in prefetched(Items(10, failing=4), ahead=2):
            seen.append(value)
    assert seen == [0, 1, 4, 9]


def test_ahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ahead"):
        list(prefetched(Items(3), ahead=0))
