"""Helper threads run their torch operations on one thread each, at a lower priority."""

import os
import sys
import threading

import pytest
import torch

import fewseg.engine.scoring as scoring
import fewseg.episodes.prefetch as prefetch
from fewseg.engine.scoring import ScoredQuery, ScoringQueue
from fewseg.threads import HELPER_NICENESS, set_up_helper_thread


def test_set_up_helper_thread_leaves_the_callers_settings_alone() -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the tests run single-threaded (conftest)
    seen: list[int] = []
    niceness: list[int] = []

    def helper() -> None:
        set_up_helper_thread()
        seen.append(torch.get_num_threads())
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    try:
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        thread = threading.Thread(target=helper)
        thread.start()
        thread.join()
        assert seen == [1] and torch.get_num_threads() == 2
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
        if sys.platform.startswith("linux"):
            assert niceness == [min(19, own + HELPER_NICENESS)]
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def helper_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that called set_up_helper_thread."""
    names: list[str] = []

    def record() -> None:
        names.append(threading.current_thread().name)

    monkeypatch.setattr(prefetch, "set_up_helper_thread", record)
    monkeypatch.setattr(scoring, "set_up_helper_thread", record)
    return names


def test_the_loading_thread_is_set_up_as_a_helper(helper_threads: list[str]) -> None:
    assert list(prefetch.prefetched([1, 2, 3], ahead=2)) == [1, 2, 3]
    assert len(helper_threads) == 1 and helper_threads[0].startswith("fewseg-prefetch")


def test_the_scoring_thread_is_set_up_as_a_helper(helper_threads: list[str]) -> None:
    query = ScoredQuery(
        0, torch.zeros(1, 2, 2, 2), torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool), 0
    )
    with ScoringQueue([0], backlog=2) as queue:
        queue.put(query)
        queue.finish()
    assert helper_threads == ["fewseg-score"]
