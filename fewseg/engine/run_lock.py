"""One ``fewseg train`` at a time per run directory.

The run holds an exclusive ``fcntl.flock`` on ``DIR/.lock`` while it runs. The operating
system releases such a lock when its process ends, however it ends, so a crash leaves no
lock behind: a lock file left by a process that is gone (a ``kill -9``, a power cut) is
simply locked again. The file names its holder (pid, host, start time) for the error a
second run gets. Released at the end of the run, also on an error or Ctrl-C; the file is
then removed (a run that finds the file it locked removed meanwhile locks the new one).

A flock is only as good as the filesystem's: local disks and recent NFS honour it. On a
filesystem that refuses locks altogether the run goes on unguarded, with a warning.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fewseg.engine import distributed
from fewseg.errors import FewSegError

LOCK_NAME = ".lock"


class RunDirectoryBusy(FewSegError):
    """Another process holds the run directory's lock."""


def check_run_dir(run_dir: Path) -> None:
    """A one-line error when ``run_dir`` (a command's ``--out``) exists but is not a
    directory."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FewSegError(f"{run_dir}: exists and is not a directory (--out names a directory)")


def holder_text(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not yet written its name"


class RunLock:
    """The exclusive lock of one run directory; :meth:`acquire` creates the directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> None:
        check_run_dir(self.run_dir)
        try:
            self._created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FewSegError(
                f"{self.run_dir}: cannot create the run directory ({exc.strerror or exc})"
            ) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise FewSegError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._remove_created_dir()
                raise RunDirectoryBusy(
                    f"{self.run_dir}: another fewseg train is running into it "
                    f"({holder_text(self.path)}); wait for it to end or use another --out"
                ) from None
            except OSError as exc:  # no locks on this filesystem (ENOLCK, EOPNOTSUPP)
                os.close(fd)
                print(
                    f"fewseg: warning: {self.path}: cannot lock ({exc.strerror or exc}); "
                    "nothing keeps a second run out of this directory",
                    file=sys.stderr,
                )
                return
            # the holder before us may have removed the file between our open and our lock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file and unlocks; the directory too if this run created it and
        left nothing in it (a run that failed before writing anything). Safe to repeat."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self._created_dir:
            with suppress(OSError):
                self.run_dir.rmdir()  # only when empty
            self._created_dir = False


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """The run directory locked by rank 0 (the rank that writes it) for the body; an error
    taking it reaches every rank."""
    lock = RunLock(run_dir)
    distributed.from_main(lock.acquire)
    try:
        yield
    finally:
        lock.release()
