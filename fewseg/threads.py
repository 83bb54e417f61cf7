"""Helper threads (loading, scoring) beside a main thread that runs the network."""

from __future__ import annotations

import os
import sys
import threading

import torch

HELPER_NICENESS = 10  # added to a helper thread's nice value (Linux: per thread)


def set_up_helper_thread() -> None:
    """Call at the start of a helper thread: its torch operations run on it alone, and it
    yields the CPU to the main thread.

    A new Python thread's OpenMP and MKL start from their own default, one worker per
    core, whatever the main thread set, so a helper's matrix products spawned workers on
    the main thread's core: beside a thread doing small matrix products, MobileNetV2's
    forward pass took 1.5x as long (docs/performance.md). The call is per thread; the
    main thread keeps its setting.

    An evaluation runs three threads (main, loading, scoring) on as few as two cores; at
    equal priority the scheduler takes the main thread off its core for a share of the
    time whenever both helpers are busy, and the network waits. A lower priority keeps the
    main thread running; a helper it waits for still runs, on the core left idle.
    """
    torch.set_num_threads(1)
    lower_thread_priority(HELPER_NICENESS)


def lower_thread_priority(niceness: int) -> bool:
    """Add ``niceness`` to the calling thread's nice value (Linux, where it is a per-thread
    attribute); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
    except OSError:
        return False
    return True
