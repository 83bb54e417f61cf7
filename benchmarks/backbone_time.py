"""The frozen MobileNetV2 encoder with BatchNorm folded into its convolutions, against the
same encoder run as torchvision builds it, side by side in one process.

    .venv/bin/python benchmarks/backbone_time.py            # 400x400, one image, one thread
    .venv/bin/python benchmarks/backbone_time.py --size 96 --batch 8

Both run the same weights on the same images in alternation (median of ``--repeats``);
it prints milliseconds per call, the largest difference of the features, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewseg.models.backbones import BACKBONES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = BACKBONES.get(args.backbone)(pretrained=True, frozen=True)
    images = torch.randn(args.batch, 3, args.size, args.size)

    def run(folded: bool) -> torch.Tensor:
        backbone.frozen = folded  # not frozen: the blocks as torchvision builds them
        try:
            return backbone(images)
        finally:
            backbone.frozen = True

    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        difference = (run(True) - run(False)).abs().max().item()
        for _ in range(args.repeats):
            for folded in (True, False):
                start = time.perf_counter()
                run(folded)
                times[folded].append(time.perf_counter() - start)
    folded_ms, plain_ms = (1e3 * statistics.median(times[f]) for f in (True, False))
    print(
        f"{args.backbone}, {args.batch} x {args.size}x{args.size}, {torch.get_num_threads()} "
        f"thread(s): BatchNorm folded {folded_ms:.1f} ms, unfolded {plain_ms:.1f} ms; "
        f"largest feature difference {difference:.1e}"
    )
    print(f"ratio unfolded/folded = {plain_ms / folded_ms:.2f}")


if __name__ == "__main__":
    main()
