"""Encoding an evaluation's images on several threads, one torch thread each.

With two or more torch threads, one stream of images through the encoder, each image
using every thread, leaves the loading and scoring threads no idle core, and MobileNetV2's
small late layers parallelise poorly. Instead each encoder thread takes whole images with
one torch thread, and the main thread only hands them out: every distinct image of the
episode list is encoded once, into the learner's feature cache, where the scoring thread
finds it (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import torch

from fewseg.identity_memo import IdentityMemo
from fewseg.learners.base import Learner

REMEMBERED = 1024
"""Images whose encoding is remembered, done or running: more than an evaluation keeps
running (its scoring backlog bounds that), so a running one is never forgotten."""


class ParallelEncoding:
    """Use as a context manager. :meth:`submit` returns, per image, the future of its
    encoding: the one already running or done for an image met before (the same tensor
    object, unchanged), else a new one."""

    def __init__(self, learner: Learner, workers: int) -> None:
        self._learner = learner
        self._caller_threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix="fewseg-encode",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
        self._submitted: IdentityMemo[Future[None]] = IdentityMemo(self._encode, REMEMBERED)

    def _encode(self, image: torch.Tensor) -> Future[None]:
        return self._pool.submit(self._learner.cache_features, image[None])

    def submit(self, images: Sequence[torch.Tensor]) -> list[Future[None]]:
        """``images``: [3,H,W] tensors on the learner's device."""
        return [self._submitted.get((image,)) for image in images]

    def __enter__(self) -> ParallelEncoding:
        # the caller's own small operations (scoring a query when the backlog is full) on
        # one thread too: idle OpenMP workers of a team spin on a core for a while
        torch.set_num_threads(1)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=error is not None)
        torch.set_num_threads(self._caller_threads)
