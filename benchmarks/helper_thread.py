"""The frozen encoder on the main thread beside a helper thread doing small matrix
products (as the evaluation's scoring thread does): the helper with its default torch
threading, and after ``fewseg.threads.set_up_helper_thread``.

    .venv/bin/python benchmarks/helper_thread.py     # 60 images of 400x400, one thread

Each configuration is timed ``--rounds`` times in rotation; it prints the median seconds
and the ratio to the encoder alone.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from fewseg.models.backbones import BACKBONES
from fewseg.threads import set_up_helper_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = BACKBONES.get("mobilenet_v2")(pretrained=True, frozen=True)
    images = [torch.randn(1, 3, args.size, args.size) for _ in range(args.images)]

    def encode_all() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for image in images:
                backbone(image)
        return time.perf_counter() - start

    def beside_helper(one_thread: bool) -> float:
        stop = threading.Event()

        def helper() -> None:
            if one_thread:
                set_up_helper_thread()
            rows, coarse = torch.randn(args.size, 25), torch.randn(2, 25, 25)
            while not stop.is_set():
                rows @ coarse @ rows.T  # an upsampled prediction

        thread = threading.Thread(target=helper)
        thread.start()
        try:
            return encode_all()
        finally:
            stop.set()
            thread.join()

    runs = {
        "alone": encode_all,
        "beside a helper, default threading": lambda: beside_helper(False),
        "beside a helper, set_up_helper_thread": lambda: beside_helper(True),
    }
    encode_all()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(run())
    alone = statistics.median(times["alone"])
    print(f"{args.images} images of {args.size}x{args.size}, mobilenet_v2, main thread 1 thread")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"  {name:40s} {seconds:6.2f} s  ratio to alone = {seconds / alone:.2f}")


if __name__ == "__main__":
    main()
