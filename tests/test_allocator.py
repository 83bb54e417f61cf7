"""Freed memory kept for reuse: blocks freed and allocated again touch no fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fewseg import allocator, cli

# In a fresh process (malloc's settings at their defaults), with malloc and free called
# directly: three 30 MB blocks allocated, written and freed, over and over. Prints the page
# faults per round and the pages the blocks span. With glibc's defaults every round takes
# fresh pages: the first blocks are mapped and unmapped, the later ones come from the heap,
# whose freed top (90 MB) is over the trim threshold (twice the largest block freed).
ROUNDS = """
import ctypes, resource, sys
from fewseg.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 30 << 20
def round_of_blocks():
    blocks = [libc.malloc(SIZE) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, SIZE)
    for block in blocks:
        libc.free(block)
round_of_blocks()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_of_blocks()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10, 3 * SIZE // 4096)
"""

glibc_only = pytest.mark.skipif(not allocator._is_glibc(), reason="glibc's malloc only")


def faults_per_round(mode: str) -> tuple[float, int]:
    output = subprocess.run(
        [sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(output[0]), int(output[1])


@glibc_only
def test_freed_blocks_are_reused_without_fresh_pages() -> None:
    faults, pages = faults_per_round("retain")
    assert faults < 0.1 * pages


@glibc_only
def test_the_default_allocator_takes_fresh_pages_in_the_same_rounds() -> None:
    """The case above is one the setting changes (else it would prove nothing)."""
    faults, pages = faults_per_round("default")
    assert faults > 0.5 * pages


def test_the_command_line_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True) or True)
    assert cli.main(["list"]) == 0
    assert calls == [True]
