"""`fewseg evaluate` against its floor: one backbone pass per distinct image of the list.

    .venv/bin/python benchmarks/evaluate_floor.py                # coco-mini, 1000 1-shot
    .venv/bin/python benchmarks/evaluate_floor.py --learners baseline,protonet,maml
    .venv/bin/python benchmarks/evaluate_floor.py --threads 1 --repeats 5   # medians

The floor is measured in the same process and thread setting: every distinct image of the
episode list, preprocessed beforehand, passed once through the frozen backbone (batch of
one, as the engine's encoder threads pass them). The evaluation is timed from cold: a freshly
opened source (nothing decoded yet) and a fresh learner (no features kept), so it pays
for decoding, resizing, the backbone, adaptation and scoring. The process keeps freed
memory for reuse, as the command line does (fewseg/allocator.py). The floor is taken before
and after each evaluation and averaged, which absorbs slow drifts of a shared machine; with
``--repeats N`` the learners' evaluations take turns N times and the last lines give each
learner's median ratio, which a single run on a shared machine does not settle (one
evaluation's ratio moved by ±0.2 between runs minutes apart).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import torch

from fewseg.allocator import retain_freed_memory
from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.episodes.sample_cache import resized_samples
from fewseg.episodes.sampler import episode_plan
from fewseg.learners import build_learner
from fewseg.models.backbones import BACKBONES


def floor_seconds(images: list[torch.Tensor], backbone: torch.nn.Module) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for image in images:
            backbone(image[None])
    return time.perf_counter() - start


def main_thread_encoder_seconds(learner: torch.nn.Module) -> Callable[[], float]:
    """Hooks the learner's encoder: the returned function gives the CPU time the main thread
    has spent in it since."""
    spent = {"total": 0.0, "start": 0.0}
    main = threading.main_thread()

    def before(*_: object) -> None:
        if threading.current_thread() is main:
            spent["start"] = time.thread_time()

    def after(*_: object) -> None:
        if threading.current_thread() is main:
            spent["total"] += time.thread_time() - spent["start"]

    learner.encoder.register_forward_pre_hook(before)
    learner.encoder.register_forward_hook(after)
    return lambda: spent["total"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="coco:../shared/data/coco-mini")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--learners", default="baseline,protonet")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="leave glibc's malloc settings at their defaults (the command line changes them: "
        "fewseg/allocator.py)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print where the main thread's time went and the helper threads' CPU time",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="evaluations per learner, taking turns"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    if not args.malloc_defaults:
        retain_freed_memory()  # as `fewseg` does at start

    source = open_source(args.dataset)
    plan = episode_plan(source, source.fold_split(args.fold).test, args.shots, args.episodes, 0)
    distinct = sorted({(i, e.class_index) for e in plan.episodes for i in (e.query, *e.support)})
    samples = resized_samples(source)
    by_image = {i: samples.load(i, c, args.size)[0] for i, c in distinct}
    images = list(by_image.values())
    backbone = BACKBONES.get(args.backbone)(pretrained=True, frozen=True).eval()
    floor_seconds(images[:2], backbone)  # warm-up
    print(
        f"{args.dataset} fold {args.fold}, {args.episodes} {args.shots}-shot episodes, "
        f"{len(images)} distinct images at {args.size}x{args.size}, {args.backbone}, "
        f"torch threads {torch.get_num_threads()}"
    )
    settings = EvaluationSettings(
        fold=args.fold, shots=args.shots, episodes=args.episodes, size=args.size, progress=False
    )
    ratios: dict[str, list[float]] = {}
    for label in args.learners.split(",") * args.repeats:
        before = floor_seconds(images, backbone)
        torch.manual_seed(0)
        learner = build_learner(label, {"backbone": args.backbone})
        fresh_source = open_source(args.dataset)
        encoder_seconds = main_thread_encoder_seconds(learner)
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        main_cpu, process_cpu = time.thread_time(), time.process_time()
        start = time.perf_counter()
        result = evaluate(learner, fresh_source, args.dataset, settings, [0])
        seconds = time.perf_counter() - start
        main_cpu, process_cpu = time.thread_time() - main_cpu, time.process_time() - process_cpu
        ended = resource.getrusage(resource.RUSAGE_THREAD)
        after = floor_seconds(images, backbone)
        floor = statistics.fmean([before, after])
        ratios.setdefault(label, []).append(seconds / floor)
        print(
            f"{label:30s} evaluate {seconds:6.1f} s  floor {floor:6.1f} s "
            f"({before:.1f} / {after:.1f})  ratio evaluate/floor = {seconds / floor:.2f}  "
            f"(mIoU {result.miou:.2f})",
            flush=True,
        )
        if args.breakdown:
            print(
                f"{'':30s} main thread: CPU {main_cpu:.2f} s (encoder {encoder_seconds():.2f} s, "
                f"other {main_cpu - encoder_seconds():.2f} s; kernel "
                f"{ended.ru_stime - usage.ru_stime:.2f} s, "
                f"{ended.ru_minflt - usage.ru_minflt} page faults), "
                f"not running {seconds - main_cpu:.2f} s; helper threads: CPU "
                f"{process_cpu - main_cpu:.2f} s",
                flush=True,
            )
    if args.repeats > 1:
        for label, values in ratios.items():
            listed = ", ".join(f"{r:.2f}" for r in values)
            print(
                f"{label:30s} median ratio evaluate/floor = {statistics.median(values):.2f} "
                f"over {len(values)} runs ({listed})"
            )


if __name__ == "__main__":
    main()
