"""Interrupted training: Ctrl-C saves a checkpoint and stops with status 130; SIGKILL at a
random moment never leaves a half-written checkpoint; either way, resuming ends with the
weights of an uninterrupted run, bit for bit.

A non-finite loss is covered in tests/test_train.py (test_non_finite_*).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_training import TINY_TRAINING

from fewseg.engine.checkpoint import read_checkpoint
from fewseg.engine.config import resolve_config
from fewseg.engine.interrupt import StopRequest
from fewseg.engine.train import train

REPO = Path(__file__).resolve().parents[1]
TINY = {"learner": "maml", **TINY_TRAINING, "log_every": 1, "size": 64}
FOREVER = 100_000  # steps: the subprocess runs until it is stopped


def start_training(run_dir: Path, checkpoint_every: int, resume: bool = False) -> subprocess.Popen:
    """``python -m fewseg train`` on TINY, one thread like the in-process runs here (a
    different thread count may round differently)."""
    flags = [
        f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()
    ]  # the same options as resolve_config(TINY) below
    command = [
        sys.executable, "-m", "fewseg", "train", *flags, f"--steps={FOREVER}",
        f"--checkpoint-every={checkpoint_every}", "--out", str(run_dir), "--no-progress",
        *(["--resume"] if resume else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


def checkpoint_step(run_dir: Path) -> int:
    path = run_dir / "checkpoint.pt"
    return read_checkpoint(run_dir)["step"] if path.is_file() else 0


def wait_until(condition: Callable[[], bool], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training made no progress in 180 s")
        time.sleep(0.02)


def resume_in_process(run_dir: Path, steps: int) -> None:
    config, options = resolve_config({**TINY, "steps": steps}, {})
    train(config, options, run_dir, resume=True, progress=False)


def assert_same_weights_as_uninterrupted(run_dir: Path, tmp_path: Path) -> None:
    resumed = read_checkpoint(run_dir)
    config, options = resolve_config({**TINY, "steps": resumed["step"]}, {})
    train(config, options, tmp_path / "straight", progress=False)
    straight = read_checkpoint(tmp_path / "straight")
    assert straight["learner"].keys() == resumed["learner"].keys()
    for name, tensor in straight["learner"].items():
        assert torch.equal(tensor, resumed["learner"][name]), name


def test_stop_request_defers_the_first_sigint_and_not_the_second(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.agreed()
        assert "stopping after this step" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt, match="without saving"):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_saves_a_checkpoint_and_stops_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_training(run_dir, checkpoint_every=FOREVER)  # no periodic checkpoint
    wait_until(lambda: len(logged_steps(run_dir)) >= 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    step = read_checkpoint(run_dir)["step"]
    assert step >= 1
    assert stderr.splitlines()[-1] == (
        f"fewseg: interrupted: checkpoint of step {step} saved to {run_dir / 'checkpoint.pt'}; "
        "continue with --resume"
    )
    assert "Traceback" not in stderr
    assert not (run_dir / ".lock").exists()  # the run directory's lock, released
    assert logged_steps(run_dir) == list(range(1, step + 1))
    resume_in_process(run_dir, step + 2)
    assert read_checkpoint(run_dir)["step"] == step + 2
    assert logged_steps(run_dir) == list(range(1, step + 3))
    assert_same_weights_as_uninterrupted(run_dir, tmp_path)


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)  # which moments: fixed, so that the test itself is repeatable
    run_dir = tmp_path / "run"
    saved = 0
    for kill in range(2):
        process = start_training(run_dir, checkpoint_every=1, resume=kill > 0)
        wait_until(lambda: checkpoint_step(run_dir) > saved, process)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.5))  # about 0-3 more steps
        process.kill()
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
        # its lock file stays, naming it; the lock itself went with the process
        assert f"pid {process.pid} on " in (run_dir / ".lock").read_text()
        state = read_checkpoint(run_dir)  # loads: the kill left no half-written checkpoint
        assert state["step"] >= saved
        saved = state["step"]
    # what a kill in the middle of a checkpoint write leaves behind, and a torn metrics line
    stale = run_dir / ".checkpoint.pt.killed.tmp"
    stale.write_bytes(b"PK\x03\x04 half a checkpoint")
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 99999, "train/lo')
    resume_in_process(run_dir, saved + 2)
    assert not list(run_dir.glob(".checkpoint.pt.*"))  # stale temp files are removed
    assert logged_steps(run_dir) == list(range(1, saved + 3))
    assert read_checkpoint(run_dir)["step"] == saved + 2
    assert_same_weights_as_uninterrupted(run_dir, tmp_path)
