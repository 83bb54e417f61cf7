"""Helper threads run their torch operations on one thread each."""

import threading

import pytest
import torch

import fewseg.engine.scoring as scoring
import fewseg.episodes.prefetch as prefetch
from fewseg.engine.scoring import QueuedQuery, ScoringQueue
from fewseg.threads import use_one_torch_thread


def test_use_one_torch_thread_leaves_the_callers_setting_alone() -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the tests run single-threaded (conftest)
    seen: list[int] = []

    def helper() -> None:
        use_one_torch_thread()
        seen.append(torch.get_num_threads())

    try:
        thread = threading.Thread(target=helper)
        thread.start()
        thread.join()
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def helper_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that called use_one_torch_thread."""
    names: list[str] = []

    def record() -> None:
        names.append(threading.current_thread().name)

    monkeypatch.setattr(prefetch, "use_one_torch_thread", record)
    monkeypatch.setattr(scoring, "use_one_torch_thread", record)
    return names


def test_the_loading_thread_uses_one_torch_thread(helper_threads: list[str]) -> None:
    assert list(prefetch.prefetched([1, 2, 3], ahead=2)) == [1, 2, 3]
    assert len(helper_threads) == 1 and helper_threads[0].startswith("fewseg-prefetch")


def test_the_scoring_thread_uses_one_torch_thread(helper_threads: list[str]) -> None:
    query = QueuedQuery(
        0,
        lambda _: torch.zeros(1, 2, 2, 2),
        torch.zeros(1, 3, 2, 2),
        torch.zeros(2, 2),
        torch.zeros(2, 2, dtype=torch.bool),
    )
    with ScoringQueue([0], backlog=2) as queue:
        queue.put(query)
        queue.finish()
    assert helper_threads == ["fewseg-score"]
