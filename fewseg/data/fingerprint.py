"""A cheap identity for a large input file: size, modification time and a sampled hash.

Hashing all of a COCO-train annotation file (450 MB) would cost seconds on every command
(more with a cold page cache), which is what a cached index is there to avoid. The
fingerprint instead hashes the size and ``SAMPLE_BLOCKS`` blocks of ``BLOCK_SIZE`` bytes at
evenly spaced offsets, first and last block included (4 MiB, a few milliseconds); files
up to that size are hashed whole. Together with the size and the nanosecond mtime this
catches every ordinary change: a rewrite changes the mtime, an edit that keeps the mtime
(``cp -p``, ``rsync -a``, an archive extracted again) almost always changes the size or a
sampled block. What it can miss is an edit of the same length, outside the sampled
blocks, whose mtime was restored by hand: delete the cache folder after doing that.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fewseg.errors import FewSegError

SAMPLE_BLOCKS = 64
BLOCK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Fingerprint:
    size: int
    mtime_ns: int
    sampled_hash: str


def sampled_hash(path: Path, size: int) -> str:
    """blake2b of the size and of evenly spaced blocks (the whole file when it is small)."""
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as handle:
        if size <= SAMPLE_BLOCKS * BLOCK_SIZE:
            digest.update(handle.read())
        else:
            for k in range(SAMPLE_BLOCKS):
                handle.seek((size - BLOCK_SIZE) * k // (SAMPLE_BLOCKS - 1))
                digest.update(handle.read(BLOCK_SIZE))
    return digest.hexdigest()


def fingerprint(path: str | Path) -> Fingerprint:
    path = Path(path)
    try:
        stat = os.stat(path)
        return Fingerprint(stat.st_size, stat.st_mtime_ns, sampled_hash(path, stat.st_size))
    except OSError as exc:
        raise FewSegError(f"{path}: cannot read ({exc.strerror or exc})") from None
