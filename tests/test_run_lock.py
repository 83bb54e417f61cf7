"""One ``fewseg train`` per run directory: a second run refuses naming the holder; the lock
goes with its process however it ends; ``--out`` naming a file is a one-line error."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_training import tiny_values

from fewseg.cli import main
from fewseg.engine.config import resolve_config
from fewseg.engine.run_lock import LOCK_NAME, RunDirectoryBusy, RunLock
from fewseg.engine.train import train

REPO = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys; from pathlib import Path; from fewseg.engine.run_lock import RunLock; "
    "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); "
    "sys.stdin.read(); lock.release()"
)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A process holding ``run_dir``'s lock until its stdin closes (then it releases it)
    or it is killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def train_flags(run_dir: Path) -> list[str]:
    values = tiny_values("maml", steps=1, size=64)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    return ["train", *flags, "--out", str(run_dir), "--no-progress"]


def tiny_train(run_dir: Path) -> None:
    config, options = resolve_config(tiny_values("maml", steps=1, size=64), {})
    train(config, options, run_dir, progress=False)


def test_a_second_run_into_a_held_directory_refuses_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        assert main(train_flags(run_dir)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"{run_dir}: another fewseg train is running into it" in err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        holder.communicate("")  # the holder ends: its lock is released, its file removed
    assert not (run_dir / LOCK_NAME).exists()
    tiny_train(run_dir)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / LOCK_NAME).exists()


def test_the_lock_of_a_killed_process_is_stale(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert str(holder.pid) in (run_dir / LOCK_NAME).read_text()  # the file stays behind
    tiny_train(run_dir)
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / LOCK_NAME).exists()


def test_a_stale_lock_file_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text("pid 999999999 on elsewhere, since long ago\n")
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        assert (run_dir / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(RunDirectoryBusy, match=f"pid {os.getpid()} on "):
            RunLock(run_dir).acquire()  # another open file description: refused, even here
    finally:
        lock.release()
    lock.release()  # again: nothing to do
    assert list(run_dir.iterdir()) == []


def test_the_lock_is_released_when_the_run_fails(tmp_path: Path) -> None:
    run_dir = tmp_path / "new"
    config, options = resolve_config(tiny_values("maml", steps=1, size=64), {})
    with pytest.raises(Exception, match="checkpoint"):
        train(config, options, run_dir, resume=True, progress=False)  # nothing to resume
    assert not run_dir.exists()  # the directory it created, empty, is removed again


def test_out_naming_a_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    assert main(train_flags(path)) == 2
    err = capsys.readouterr().err
    assert (
        err == f"fewseg: error: {path}: exists and is not a directory (--out names a directory)\n"
    )
    assert path.read_text() == "mine\n"
    assert main(train_flags(path / "run")) == 2  # under a file: cannot be created
    assert "cannot create the run directory" in capsys.readouterr().err
    evaluate = ["evaluate", "--dataset", "synthetic", "--episodes", "2", "--no-progress"]
    assert main([*evaluate, "--out", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"fewseg: error: {path}: exists and is not a directory (--out names a directory)\n"
    )


def test_a_filesystem_without_locks_runs_unguarded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    assert capsys.readouterr().err == (
        f"fewseg: warning: {tmp_path / 'run' / LOCK_NAME}: cannot lock (No locks available); "
        "nothing keeps a second run out of this directory\n"
    )
    lock.release()  # nothing held: nothing to do
