"""Helper threads (loading, scoring) beside a main thread that runs the network."""

from __future__ import annotations

import torch


def use_one_torch_thread() -> None:
    """Call at the start of a helper thread: its torch operations then run on it alone.

    A new Python thread's OpenMP and MKL start from their own default, one worker per
    core, whatever the main thread set, so a helper's matrix products spawned workers on
    the main thread's core: beside a thread doing small matrix products, MobileNetV2's
    forward pass took 1.5x as long (docs/performance.md). The call is per thread; the
    main thread keeps its setting.
    """
    torch.set_num_threads(1)
