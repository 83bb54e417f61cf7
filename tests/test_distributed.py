"""Multi-process training and evaluation: 2 gloo ranks on CPU, against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewseg.cli import main
from fewseg.engine.checkpoint import read_checkpoint
from fewseg.engine.config import resolve_config
from fewseg.engine.train import tasks_of_rank, train
from fewseg.errors import FewSegError

sys.path.insert(0, str(Path(__file__).parent))
from dist_worker import TINY, TINY_OVERRIDES
from tiny_training import tiny_values

WORKER = Path(__file__).with_name("dist_worker.py")
DATASET = TINY["dataset"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(*args: str) -> list[subprocess.Popen[str]]:
    """Two ranks of tests/dist_worker.py, with the environment torchrun would give them."""
    port = str(free_port())
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*TORCHRUN, "-m", "fewseg", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def single_process(learner: str, out: Path, **overrides: object) -> dict[str, torch.Tensor]:
    values = tiny_values(learner, **{**TINY_OVERRIDES, **overrides})
    config, options = resolve_config(values, {})
    train(config, options, out, progress=False)
    return read_checkpoint(out)["learner"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_ranks_of_two_tasks_equal_one_process_of_four(tmp_path: Path) -> None:
    learners = ("maml", "reptile", "protonet")
    ranks = start_ranks("train", str(tmp_path / "ddp"), ",".join(learners), "60")
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-3000:]
    for learner in learners:
        ddp = read_checkpoint(tmp_path / "ddp" / learner)["learner"]
        four = single_process(learner, tmp_path / "one" / learner)
        assert max_difference(ddp, four) < 1e-6, learner


def test_sharded_evaluation_equals_single_process_exactly(tmp_path: Path) -> None:
    single_process("maml", tmp_path / "run")
    args = [
        "evaluate", "--checkpoint", str(tmp_path / "run"), "--dataset", DATASET,
        "--episodes", "7", "--seeds", "0,1", "--no-progress",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    done = torchrun(*args, "--out", str(tmp_path / "two"))
    assert done.stdout.count("report: ") == 1  # only rank 0 prints
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    for key in ("miou", "fbiou", "miou_std", "per_class"):
        assert two[key] == one[key], key
    for a, b in zip(one["runs"], two["runs"], strict=True):
        assert (a["miou"], a["fbiou"], a["per_class"]) == (b["miou"], b["fbiou"], b["per_class"])


def test_train_on_two_ranks_resume_on_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Reptile's outer SGD keeps rounding differences at rounding level over several steps
    (Adam would blow a near-zero gradient's rounding noise up to a learning-rate-sized step)."""
    run = tmp_path / "run"
    flags = [
        "train", "--learner", "reptile", "--dataset", DATASET, "--backbone", "convnet",
        "--hidden", "8", "--inner-steps", "1", "--meta-batch", "4", "--val-every", "1",
        "--val-episodes", "3", "--log-every", "1", "--checkpoint-every", "1", "--no-progress",
    ]  # fmt: skip
    done = torchrun(*flags, "--steps", "1", "--out", str(run))
    assert done.stdout.count("checkpoint: ") == 1  # only rank 0 prints
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.yaml", "metrics.jsonl", "tensorboard",
    ]  # fmt: skip
    assert len(list((run / "tensorboard").iterdir())) == 1  # one writer: rank 0's
    assert main([*flags, "--steps", "3", "--out", str(run), "--resume"]) == 0
    assert main([*flags, "--steps", "3", "--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "val/miou" in r] == [1, 2, 3]
    resumed, straight = read_checkpoint(run), read_checkpoint(tmp_path / "straight")
    assert resumed["step"] == straight["step"] == 3
    assert max_difference(resumed["learner"], straight["learner"]) < 1e-6


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_lost_rank_is_a_clear_error_not_a_hang(mode: str) -> None:
    timeout = 3
    began = time.monotonic()
    rank0, rank1 = start_ranks(mode, str(timeout))
    try:
        _, err = rank0.communicate(timeout=timeout + 60)
    finally:
        rank1.kill()
        rank1.communicate()
    assert rank0.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("fewseg: error: rank 0: lost contact with other ranks after ")
    assert ("timed out" if mode == "hang" else "connection lost") in last
    assert f"timeout {timeout} s" in last
    assert time.monotonic() - began < timeout + 30


def test_a_meta_batch_must_split_evenly() -> None:
    assert list(tasks_of_rank(8, 1, 4)) == [2, 3]
    with pytest.raises(FewSegError, match="meta_batch 6 does not split evenly across 4"):
        tasks_of_rank(6, 0, 4)


def test_the_ranks_shares_make_up_the_single_process_meta_batch() -> None:
    from fewseg.data.spec import open_source
    from fewseg.engine.train import training_batch

    source = open_source(DATASET)
    config, _ = resolve_config(TINY, {})
    classes = source.fold_split("0").train
    whole = training_batch(source, classes, config, 64, step=5)
    shares = [training_batch(source, classes, config, 64, 5, rank, 2) for rank in range(2)]
    assert len(whole) == 4 and [len(s) for s in shares] == [2, 2]
    for a, b in zip(whole, shares[0] + shares[1], strict=True):
        assert a.class_index == b.class_index
        assert torch.equal(a.query.images, b.query.images)  # augmentation included
        assert torch.equal(a.support.images, b.support.images)
