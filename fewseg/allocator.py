"""Keeping freed memory in the process for reuse (glibc's malloc).

PyTorch allocates CPU tensors with the C library's malloc. By default glibc serves a block
above its mmap threshold (128 KiB at start, then the size of the largest such block freed)
from fresh pages, and gives back free memory at the top of a heap beyond twice that. A
network's activations are such blocks: when the evaluation's loading and scoring threads
allocate and free image-sized tensors beside it, the encoder on the main thread kept
touching fresh pages. One 1000-episode evaluation of coco-mini took 242k-880k page faults
on its main thread, 0.5-1.7 s of kernel time, and the encoder ran slower between them
(docs/performance.md); with the settings below, 54-55k. The cost is memory the process keeps
after freeing it: at most ``TRIM_THRESHOLD_BYTES`` at the top of each heap.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 << 20


def retain_freed_memory() -> bool:
    """Serve blocks up to 32 MiB from malloc's heaps and keep up to 256 MiB of freed memory
    at their top for the next blocks. Process-wide; the command line calls it at start.
    Returns False where the C library is not glibc (nothing is changed there)."""
    if not _is_glibc():
        return False
    libc = ctypes.CDLL(None)
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return False
