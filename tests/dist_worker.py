"""One rank of a multi-process test, started by tests/test_distributed.py the way torchrun
starts a rank (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

    python tests/dist_worker.py train OUT LEARNER[,LEARNER...] TIMEOUT
    python tests/dist_worker.py die|hang TIMEOUT

Errors are reported as the CLI reports them: ``fewseg: error: ...`` and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from tiny_training import TINY_TRAINING, tiny_values

from fewseg.engine import distributed
from fewseg.errors import FewSegError

TINY_OVERRIDES = {"meta_batch": 4, "steps": 1, "log_every": 1, "checkpoint_every": 1}
TINY = {**TINY_TRAINING, **TINY_OVERRIDES}


def train_learners(out: str, learners: str) -> None:
    from fewseg.engine.config import resolve_config
    from fewseg.engine.train import train

    for learner in learners.split(","):
        config, options = resolve_config(tiny_values(learner, **TINY_OVERRIDES), {})
        train(config, options, os.path.join(out, learner), progress=False)


def lose_a_rank(mode: str) -> None:
    if distributed.rank() == 1:
        if mode == "die":
            os._exit(1)
        time.sleep(60)  # hangs; the test kills it
    parameter = torch.nn.Parameter(torch.zeros(3))
    parameter.grad = torch.ones(3)
    distributed.average_meta_gradients([parameter], {"loss": 1.0})


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    mode = argv[0]
    with distributed.session("gloo", float(argv[-1])):
        if mode == "train":
            train_learners(argv[1], argv[2])
        else:
            lose_a_rank(mode)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except FewSegError as error:
        print(f"fewseg: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
