"""Ctrl-C during training: finish the current step, save a checkpoint, then stop.

Stopping only between steps means the saved state is always that of a completed step
(a KeyboardInterrupt inside ``optimizer.step()`` could leave half-updated weights). A
second Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import torch


class TrainingInterrupted(KeyboardInterrupt):
    """Raised at a step boundary after SIGINT; the message says where the checkpoint is."""


class StopRequest:
    """Turns SIGINT into a flag that the training loop checks after each step.

    Signal handlers can only be set in the main thread; elsewhere this does nothing and
    Ctrl-C keeps its usual effect.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGINT, previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt("stopped at once, without saving a checkpoint")
        self.requested = True
        print(
            "fewseg: stopping after this step to save a checkpoint (Ctrl-C again: stop now)",
            file=sys.stderr,
        )

    def agreed(self) -> bool:
        """Whether any process was asked to stop: under torchrun every rank must stop after
        the same step, whichever of them the signal reached first."""
        from fewseg.engine import distributed

        if not distributed.active():
            return self.requested
        flag = torch.tensor([float(self.requested)])
        return bool(distributed.all_reduce_sum(flag, "the stop request").item() > 0)
