"""Milliseconds per evaluation episode of a gradient learner, for head widths and loss grids
side by side in one run.

    .venv/bin/python benchmarks/adaptation_time.py                  # maml, 1- and 5-shot, 400 px
    .venv/bin/python benchmarks/adaptation_time.py --learner finetune --variants 64:0,32:100

One episode = adapting to a support set (``inner_steps`` SGD steps on the support loss)
and predicting one query, with the backbone's features already cached: what a 1000-episode
evaluation repeats once every image has been seen. Variants ``HIDDEN:LOSS_SIZE`` (0: the
loss at the image size) are timed in rotation, a few episodes each, so that a shared
machine's drifts fall on all of them; the median per variant is printed with its ratio to
the first variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewseg.engine.features import FeatureStore
from fewseg.episodes.image_keys import name_images
from fewseg.episodes.tensors import LabelledImages
from fewseg.learners import build_learner


def parse_variants(text: str) -> list[tuple[int, int]]:
    return [(int(h), int(s)) for h, s in (v.split(":") for v in text.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner", default="maml")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--variants", default="64:0,64:100,32:0,32:100", metavar="H:L,...")
    parser.add_argument("--rounds", type=int, default=5, help="rotations over the variants")
    parser.add_argument("--episodes", type=int, default=4, help="timed episodes per turn")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    for shots in (int(k) for k in args.shots.split(",")):
        images = torch.randn(shots, 3, args.size, args.size, generator=generator)
        masks = (torch.rand(shots, args.size, args.size, generator=generator) > 0.7).long()
        name_images(images, [f"support {k}" for k in range(shots)])
        support = LabelledImages(images, masks, torch.zeros_like(masks, dtype=torch.bool))
        query = name_images(torch.randn(1, 3, args.size, args.size, generator=generator), ["q"])
        learners = {}
        for hidden, loss_size in parse_variants(args.variants):
            torch.manual_seed(0)
            options = {
                "backbone": args.backbone,
                "hidden": hidden,
                "loss_size": loss_size,
                "inner_steps": args.inner_steps,
                "inner_lr": 0.5,
            }
            learner = build_learner(args.learner, options).eval()
            # the features kept, as in an evaluation that has met every image
            learner.encoder.attach(FeatureStore())
            learner.adapt(support)(query)  # computes the features, warms up
            learners[(hidden, loss_size)] = learner
        times: dict[tuple[int, int], list[float]] = {v: [] for v in learners}
        for _ in range(args.rounds):
            for variant, learner in learners.items():
                for _ in range(args.episodes):
                    start = time.perf_counter()
                    learner.adapt(support)(query)
                    times[variant].append(time.perf_counter() - start)
        first = statistics.median(next(iter(times.values())))
        for (hidden, loss_size), seconds in times.items():
            median = statistics.median(seconds)
            grid = f"{loss_size}x{loss_size}" if loss_size else "image"
            print(
                f"{args.learner} {shots}-shot hidden {hidden:3d} loss grid {grid:>7}: "
                f"{1000 * median:6.1f} ms/episode  (x{first / median:.2f} vs first)"
            )


if __name__ == "__main__":
    main()
