"""Seconds per meta-training step of every learner (median over timed steps).

    .venv/bin/python benchmarks/meta_step_time.py --dataset synthetic --backbone mobilenet_v2_s8
    .venv/bin/python benchmarks/meta_step_time.py --dataset coco:../shared/data/coco-mini --size 400

One step = drawing and loading the meta-batch, meta_gradients, and the optimizer step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewseg.data.spec import open_source
from fewseg.engine.config import TrainConfig
from fewseg.engine.train import training_batch
from fewseg.learners import LEARNERS, build_learner
from fewseg.options import field_names

LEARNER_NAMES = ("maml", "fomaml", "reptile", "protonet", "finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up)")
    parser.add_argument("--learners", default=",".join(LEARNER_NAMES))
    args = parser.parse_args()

    source = open_source(args.dataset)
    size = args.size or source.default_size
    classes = source.fold_split("0").train
    config = TrainConfig(meta_batch=args.meta_batch, shots=args.shots)
    print(
        f"{args.dataset}, {args.backbone}, {size}x{size}, meta-batch {args.meta_batch}, "
        f"{args.shots}-shot, inner steps {args.inner_steps}, torch threads "
        f"{torch.get_num_threads()}"
    )
    for name in args.learners.split(","):
        torch.manual_seed(0)
        options = {"backbone": args.backbone}
        if "inner_steps" in field_names(LEARNERS.get(name).Options):
            options["inner_steps"] = args.inner_steps
        learner = build_learner(name, options)
        optimizer = learner.make_optimizer()
        learner.train()
        times = []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            episodes = training_batch(source, classes, config, size, step)
            optimizer.zero_grad(set_to_none=True)
            learner.meta_gradients(episodes)
            optimizer.step()
            times.append(time.perf_counter() - start)
        print(f"{name:9s} {statistics.median(times[1:]):7.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
