"""The ``fewseg`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewseg import __version__
from fewseg.allocator import retain_freed_memory
from fewseg.errors import FewSegError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-mask-pixels",
        type=int,
        default=0,
        metavar="N",
        help="drop (class, image) pairs whose mask has fewer pixels (PFENet: 2048)",
    )


def cmd_list(_: argparse.Namespace) -> int:
    import fewseg.data  # noqa: F401
    from fewseg.data.spec import SOURCES
    from fewseg.learners import LEARNERS
    from fewseg.models import BACKBONES

    for title, registry in (
        ("learners", LEARNERS),
        ("backbones", BACKBONES),
        ("dataset kinds", SOURCES),
    ):
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<14} {entry.description}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from fewseg.data.spec import open_source
    from fewseg.engine.report import format_table

    source = open_source(args.spec, args.min_mask_pixels)
    roles: dict[int, str] = {}
    if args.fold is not None:
        split = source.fold_split(args.fold)
        roles = {c: "train" for c in split.train} | {c: "test" for c in split.test}
    rows = []
    for c in source.classes():
        n = len(source.images_of(c.index))
        row: list[Any] = [c.index, c.name, n]
        row += ["yes" if n >= k + 1 else "-" for k in args.shots]
        if roles:
            row.append(roles.get(c.index, "-"))
        rows.append(row)
    headers = ["index", "class", "images", *(f"{k}-shot" for k in args.shots)]
    if roles:
        headers.append(f"fold {args.fold}")
    print(format_table(headers, rows))
    usable = {k: sum(r[2] >= k + 1 for r in rows) for k in args.shots}
    print(
        f"\n{len(rows)} classes; "
        + ", ".join(f"{n} can serve {k}-shot episodes" for k, n in usable.items())
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fewseg.engine import distributed

    with distributed.session(args.backend, args.dist_timeout, args.device):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from fewseg.data.spec import open_source
    from fewseg.engine import distributed
    from fewseg.engine.checkpoint import read_checkpoint, restore_learner
    from fewseg.engine.evaluate import EvaluationSettings, evaluation_report
    from fewseg.engine.report import evaluation_summary, write_report
    from fewseg.learners import LEARNERS
    from fewseg.learners.config import LearnerConfig

    source = open_source(args.dataset, args.min_mask_pixels)
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    torch.manual_seed(seeds[0])
    trained: dict[str, Any] = {}
    if args.checkpoint is not None:
        state = distributed.from_main(lambda: read_checkpoint(args.checkpoint))
        learner = restore_learner(state, args.checkpoint, distributed.local_device(args.device))
        trained = {
            "checkpoint": str(args.checkpoint),
            "step": state["step"],
            "train_config": state["train_config"],
        }
        size = args.size or state["extra"].get("size") or source.default_size
    else:
        learner = LEARNERS.get(args.learner or "baseline")(LearnerConfig(weights_path=args.weights))
        if learner.trainable:
            raise FewSegError(f"learner {learner.name!r} must be trained: pass --checkpoint DIR")
        size = args.size or source.default_size
    settings = EvaluationSettings(
        fold=args.fold,
        shots=args.shots,
        episodes=args.episodes,
        size=size,
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
    )
    report = evaluation_report(learner, source, args.dataset, settings, seeds, trained or None)
    if distributed.is_main():
        print(evaluation_summary(report))
        print(f"report: {write_report(args.out, report)}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import torch

    from fewseg.data.user_images import query_paths, read_support_pair, support_pairs_in
    from fewseg.engine.checkpoint import read_checkpoint, restore_learner
    from fewseg.engine.segment import DEFAULT_SIZE, SegmentSettings, prepare_inputs, segment
    from fewseg.learners import LEARNERS
    from fewseg.learners.config import LearnerConfig

    state = read_checkpoint(args.checkpoint) if args.checkpoint is not None else None
    name = args.learner or "baseline"
    if state is None and getattr(LEARNERS.get(name), "trainable", True):
        raise FewSegError(f"learner {name!r} must be trained: pass --checkpoint DIR")
    if args.support_dir is not None:
        paths = support_pairs_in(args.support_dir)
    elif len(args.support) % 2:
        raise FewSegError(f"--support takes IMAGE MASK pairs, got {len(args.support)} paths")
    else:
        paths = list(zip(args.support[::2], args.support[1::2], strict=True))
    pairs = [read_support_pair(image, mask) for image, mask in paths]
    size = args.size or (state and state["extra"].get("size")) or DEFAULT_SIZE
    inputs = prepare_inputs(pairs, query_paths(args.query), size)
    torch.manual_seed(args.seed)
    if state is not None:
        learner = restore_learner(state, args.checkpoint, args.device)
        trained = {"checkpoint": str(args.checkpoint), "step": state["step"]}
    else:
        learner = LEARNERS.get(name)(LearnerConfig(weights_path=args.weights))
        trained = None
    settings = SegmentSettings(args.batch_size, args.device, not args.no_progress)
    summary = segment(learner, inputs, args.out, settings, trained)
    print(
        f"segmented {len(summary['queries'])} image(s) with {learner.name} from "
        f"{len(pairs)} support example(s) at {size}x{size}: {args.out}"
    )
    return 0


OPTION_TYPES = {"size": int, "max_shots": int, "weights_path": str}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig / LearnerConfig field; absent flags stay None."""
    from dataclasses import fields

    from fewseg.engine.config import TrainConfig
    from fewseg.learners.config import LearnerConfig

    for group_name, config in (("training", TrainConfig), ("learner", LearnerConfig)):
        group = parser.add_argument_group(f"{group_name} options (also settable in --config)")
        defaults = config()
        for field in fields(config):
            flag = "--" + field.name.replace("_", "-")
            default = getattr(defaults, field.name)
            kind = OPTION_TYPES.get(field.name, type(default))
            if kind is bool:
                group.add_argument(
                    flag,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=f"default {default}",
                )
            else:
                group.add_argument(flag, type=kind, default=None, help=f"default {default}")


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from fewseg.engine import distributed
    from fewseg.engine.config import LEARNER_FIELDS, TRAIN_FIELDS, read_yaml, resolve_config
    from fewseg.engine.train import train

    file_values = read_yaml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in TRAIN_FIELDS | LEARNER_FIELDS}
    config, learner_config = resolve_config(file_values, flags, str(args.config or "flags"))
    with distributed.session(config.backend, config.dist_timeout, config.device):
        summary = train(
            config, learner_config, args.out, resume=args.resume, progress=not args.no_progress
        )
        if not distributed.is_main():
            return 0
    last = summary.get("train", {})
    print(
        f"trained {config.learner} to step {summary['steps']} in {summary['seconds']:.1f} s; "
        + ", ".join(f"{k} {v:.4f}" for k, v in last.items())
    )
    if summary["validation"]:
        print(
            "validation mIoU: "
            + json.dumps({k: round(v, 2) for k, v in summary["validation"].items()})
        )
    print(f"checkpoint: {args.out / 'checkpoint.pt'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fewseg.experiments.demo import read_plan, run_demo

    run_demo(read_plan(args.config), args.out, progress=not args.no_progress)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    from fewseg.experiments.benchmark import read_bench_plan, run_benchmark
    from fewseg.experiments.results_page import write_results

    plan = read_bench_plan(args.config, quick=args.quick)
    outcome = run_benchmark(plan, args.out, progress=not args.no_progress, jobs=args.jobs)
    command = "fewseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    page = write_results(plan, outcome, args.docs, command)
    print(page.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewseg", description="Few-shot semantic segmentation by meta-learning."
    )
    parser.add_argument("--version", action="version", version=f"fewseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list learners, backbones and dataset kinds")
    listing.set_defaults(run=cmd_list)

    datasets = commands.add_parser(
        "datasets",
        help="list a dataset's classes with image counts",
        description="SPEC is kind:ROOT[,key=value...], e.g. coco:PATH, "
        "masks:PATH,images=test,masks=testannot,classes=classes.txt,ignore=11, synthetic",
    )
    datasets.add_argument("spec", metavar="SPEC")
    datasets.add_argument(
        "--shots",
        type=_int_list,
        default=[1, 5],
        metavar="K[,K...]",
        help="mark the classes that can serve K-shot episodes (default 1,5)",
    )
    datasets.add_argument("--fold", help="also show each class's role in this fold")
    _add_data_options(datasets)
    datasets.set_defaults(run=cmd_datasets)

    tr = commands.add_parser(
        "train",
        help="meta-train a learner on a fold's meta-train classes",
        description="Options come from defaults, then --config FILE.yaml, then flags.",
    )
    tr.add_argument("--config", type=Path, metavar="FILE.yaml")
    tr.add_argument("--out", required=True, type=Path, metavar="DIR")
    tr.add_argument("--resume", action="store_true", help="continue DIR's checkpoint to --steps")
    tr.add_argument("--no-progress", action="store_true")
    _add_config_flags(tr)
    tr.set_defaults(run=cmd_train)

    demo = commands.add_parser(
        "demo", help="meta-train every learner, evaluate all on unseen classes, write a report"
    )
    demo.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), metavar="FILE.yaml")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser(
        "bench", help="every learner on every fold of a real dataset; writes results.md/json"
    )
    bench.add_argument(
        "--config", type=Path, default=Path("configs/bench.yaml"), metavar="FILE.yaml"
    )
    bench.add_argument("--quick", action="store_true", help="the plan's `quick` overrides")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), metavar="DIR")
    bench.add_argument(
        "--docs",
        type=Path,
        default=Path("docs"),
        metavar="DIR",
        help="where results.md, results.json and figures go (default docs/)",
    )
    bench.add_argument(
        "--jobs",
        type=_positive,
        default=os.cpu_count() or 1,
        metavar="N",
        help="train and evaluate N (fold, learner) tasks at once, in separate processes "
        "sharing the machine's threads (default: the number of CPUs)",
    )
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(run=cmd_bench)

    ev = commands.add_parser("evaluate", help="evaluate a learner on a fixed episode list")
    source_of_learner = ev.add_mutually_exclusive_group()
    source_of_learner.add_argument("--learner", help="a training-free learner (default baseline)")
    source_of_learner.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="a trained learner: a `fewseg train` run directory",
    )
    ev.add_argument("--dataset", required=True, metavar="SPEC")
    ev.add_argument("--fold", default="0", help="0..3, or 'all' for every class (default 0)")
    ev.add_argument("--shots", type=_positive, default=1, metavar="K")
    ev.add_argument("--episodes", type=_positive, default=1000, metavar="N")
    seeds = ev.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="episode-list seed (default 0)")
    seeds.add_argument(
        "--seeds",
        type=_int_list,
        metavar="S[,S...]",
        help="evaluate one episode list per seed; report mean ± std",
    )
    ev.add_argument(
        "--size",
        type=_positive,
        metavar="PX",
        help="square evaluation size (default: the dataset's, 400 for real data)",
    )
    ev.add_argument("--weights", metavar="FILE", help="local backbone weights file (.pth)")
    ev.add_argument("--workers", type=int, default=0, help="data-loading processes")
    ev.add_argument("--device", default="cpu")
    ev.add_argument(
        "--backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="torchrun runs: process-group backend (auto: nccl on CUDA, else gloo)",
    )
    ev.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="torchrun runs: seconds a rank waits for the others before failing (default 600)",
    )
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--out", required=True, type=Path, metavar="DIR")
    _add_data_options(ev)
    ev.set_defaults(run=cmd_evaluate)

    seg = commands.add_parser(
        "segment",
        help="segment your own images from a few labelled examples",
        description="Masks: values 0/1 or 0/255 (foreground = 1 or 255), or 0/1 with "
        "255 = ignore. Writes OUT/masks/STEM.png, OUT/overlays/STEM.jpg, OUT/summary.json.",
    )
    learner_of_seg = seg.add_mutually_exclusive_group()
    learner_of_seg.add_argument("--learner", help="a training-free learner (default baseline)")
    learner_of_seg.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="a `fewseg train` run directory"
    )
    support = seg.add_mutually_exclusive_group(required=True)
    support.add_argument(
        "--support", nargs="+", action="extend", metavar="IMG MASK", help="support pairs"
    )
    support.add_argument(
        "--support-dir",
        type=Path,
        metavar="DIR",
        help="images/ + masks/ subfolders, or <stem>.jpg beside <stem>.png masks",
    )
    seg.add_argument(
        "--query",
        nargs="+",
        action="extend",
        required=True,
        metavar="PATH",
        help="query images or folders of them",
    )
    seg.add_argument("--out", required=True, type=Path, metavar="DIR")
    seg.add_argument(
        "--size",
        type=_positive,
        metavar="PX",
        help="square inference size (default: the checkpoint's training size, else 400)",
    )
    seg.add_argument("--batch-size", type=_positive, default=8, metavar="N")
    seg.add_argument("--weights", metavar="FILE", help="local backbone weights file (.pth)")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--device", default="cpu")
    seg.add_argument("--no-progress", action="store_true")
    seg.set_defaults(run=cmd_segment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    try:
        return args.run(args)
    except FewSegError as error:
        print(f"fewseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"fewseg: interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        return 130
