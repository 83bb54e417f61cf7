"""IdentityMemo: values found again by the identity and version of their tensors."""

import copy
import pickle
import threading

import pytest
import torch

from fewseg.identity_memo import IdentityMemo


def counted_sum() -> tuple[IdentityMemo[float], list[int]]:
    calls: list[int] = []

    def total(a: torch.Tensor, b: torch.Tensor, scale: int = 1) -> float:
        calls.append(scale)
        return float((a + b).sum()) * scale

    return IdentityMemo(total, capacity=2), calls


def test_the_same_tensors_are_computed_once() -> None:
    memo, calls = counted_sum()
    a, b = torch.ones(2, 2), torch.full((2, 2), 2.0)
    assert memo.get((a, b)) == 12.0
    assert memo.get((a, b)) == 12.0
    assert calls == [1]
    assert memo.get((a, b), 10) == 120.0  # another extra key: another entry
    assert calls == [1, 10]


def test_equal_tensors_and_changed_tensors_are_misses() -> None:
    memo, calls = counted_sum()
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    memo.get((a, b))
    memo.get((a.clone(), b))  # equal values, another tensor
    assert len(calls) == 2
    a.add_(1.0)  # in place: a new version
    assert memo.get((a, b)) == 12.0
    assert len(calls) == 3


def test_the_least_recently_used_entry_goes_first() -> None:
    memo, calls = counted_sum()
    x, y, z = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    memo.get((x, x))
    memo.get((y, y))
    memo.get((x, x))  # x used last
    memo.get((z, z))  # y goes
    assert len(memo) == 2 and len(calls) == 3
    memo.get((x, x))
    assert len(calls) == 3
    memo.get((y, y))
    assert len(calls) == 4


def test_entries_keep_their_tensors_alive() -> None:
    memo, calls = counted_sum()
    for _ in range(3):  # a freed tensor's id could otherwise be reused by the next one
        memo.get((torch.ones(1), torch.ones(1)))
    assert len(calls) == 3


def test_copies_and_pickles_start_empty() -> None:
    memo = IdentityMemo(torch.Tensor.sum, capacity=4)
    memo.get((torch.ones(3),))
    for other in (copy.deepcopy(memo), pickle.loads(pickle.dumps(memo))):
        assert len(other) == 0 and other.capacity == 4
        assert other.get((torch.ones(3),)).item() == 3.0


def test_threads_get_consistent_values() -> None:
    memo, _ = counted_sum()
    a, b = torch.ones(4), torch.ones(4)
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(memo.get((a, b)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [8.0] * 8


def test_compute_given_per_call() -> None:
    memo: IdentityMemo[float] = IdentityMemo(None, capacity=4)
    a = torch.ones(3)
    assert memo.get((a,), 2.0, compute=lambda t, scale: float(t.sum()) * scale) == 6.0
    assert memo.get((a,), 2.0, compute=lambda t, scale: -1.0) == 6.0  # found, not computed
    with pytest.raises(ValueError, match="needs a compute function"):
        memo.get((torch.ones(1),))
