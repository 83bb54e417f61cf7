"""Loading the next episodes on a background thread while the current one is scored.

Decoding and resizing release the GIL, so on a second core they overlap the backbone and
adaptation of the main thread. Items come back in order, and an error raised while
loading one (a corrupt file, say) is raised where that item is consumed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from fewseg.threads import set_up_helper_thread

T = TypeVar("T")


def prefetched(items: Sequence[T], ahead: int = 4) -> Iterator[T]:
    """``items[0], items[1], ...`` with up to ``ahead`` of the next ones loaded in advance."""
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    pool = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="fewseg-prefetch", initializer=set_up_helper_thread
    )
    try:
        pending: deque[Future[T]] = deque()
        for index in range(len(items)):
            pending.append(pool.submit(items.__getitem__, index))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
