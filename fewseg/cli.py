"""The ``fewseg`` command line: it parses, calls the library and prints.

Importing it imports no torch: ``fewseg --help`` and ``fewseg COMMAND --help`` answer at
once. A learner's own training options come from its registration (fewseg.learners), so
``fewseg train --learner NAME --help`` lists them.
"""

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

DATASET_SPEC_HELP = (
    "SPEC is kind:ROOT[,key=value...], e.g. coco:PATH, "
    "masks:PATH,images=test,masks=testannot,classes=classes.txt,ignore=11, synthetic"
)


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


def _add_min_mask_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-mask-pixels",
        type=int,
        default=0,
        metavar="N",
        help="drop (class, image) pairs whose mask has fewer pixels (PFENet: 2048)",
    )


def _add_index_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index-cache",
        metavar="DIR",
        help="folder of dataset indexes, built once per annotation file "
        "(default: ~/.cache/fewseg/index)",
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {value}")
    return value


def _threshold(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= 254:
        raise argparse.ArgumentTypeError(f"expected 0..254, got {value}")
    return value


def _add_mask_threshold(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mask-threshold",
        type=_threshold,
        default=127,
        metavar="T",
        help="a grey mask (soft edges, JPEG) that is not 0/1 or 0/255: foreground is > T, "
        "on 0..255 (16-bit masks are scaled to it; default 127)",
    )


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---- commands -----------------------------------------------------------------------------


def cmd_list(_: argparse.Namespace) -> int:
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

    source = open_source(args.spec, args.min_mask_pixels, args.index_cache)
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


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32 (default), or mixed precision by torch.autocast: bf16 (CUDA; runs on cpu "
        "too) or fp16 (CUDA only)",
    )


def _load(args: argparse.Namespace, device: str | None) -> Any:
    """The learner of ``--checkpoint`` (read on the main process of a torchrun run, whose
    disk has it) or ``--learner`` (default baseline)."""
    from fewseg.engine import distributed
    from fewseg.engine.checkpoint import read_checkpoint
    from fewseg.engine.loading import load_learner

    precision = getattr(args, "precision", "fp32")  # a command without --precision: fp32
    if args.checkpoint is not None:
        if args.weights:
            raise FewSegError(
                "--weights goes with --learner: a trained learner's backbone weights are in "
                "its checkpoint"
            )
        state = distributed.from_main(lambda: read_checkpoint(args.checkpoint))
        options = _learner_options(args) or None
        return load_learner(args.checkpoint, device, options, state=state, precision=precision)
    from fewseg.learners import LEARNERS

    name = args.learner or "baseline"
    LEARNERS.get(name)  # an unknown name is an error naming the known ones
    return load_learner(name, device, _learner_options(args) or None, precision=precision)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fewseg.engine import distributed
    from fewseg.engine.device import resolve_device
    from fewseg.engine.precision import check_precision
    from fewseg.engine.run_lock import check_run_dir

    check_run_dir(args.out)
    check_precision(args.precision, resolve_device(args.device))
    with distributed.session(args.backend, args.dist_timeout, args.device):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from fewseg.data.spec import open_source
    from fewseg.engine import distributed
    from fewseg.engine.evaluate import EvaluationSettings, evaluate
    from fewseg.engine.report import evaluation_summary, write_report

    source = open_source(args.dataset, args.min_mask_pixels, args.index_cache)
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    torch.manual_seed(seeds[0])
    loaded = _load(args, distributed.local_device(args.device))
    settings = EvaluationSettings(
        fold=args.fold or source.default_fold,
        shots=args.shots,
        episodes=args.episodes,
        size=loaded.image_size(args.size, source.default_size),
        workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        score_at=args.score_at,
        missing_classes=args.missing_classes,
        min_class_images=args.min_class_images,
        precision=args.precision,
        inference=_inference_options(args),
    )
    report = evaluate(loaded.learner, source, args.dataset, settings, seeds, loaded.trained or None)
    if distributed.is_main():
        print(evaluation_summary(report))
        print(f"report: {write_report(args.out, report)}")
    return 0


def _support_paths(args: argparse.Namespace) -> list[tuple[Any, Any]]:
    from fewseg.data.user_images import support_pairs_in

    if args.support_dir is not None:
        return support_pairs_in(args.support_dir)
    if len(args.support) % 2:
        raise FewSegError(f"--support takes IMAGE MASK pairs, got {len(args.support)} paths")
    return list(zip(args.support[::2], args.support[1::2], strict=True))


def cmd_segment(args: argparse.Namespace) -> int:
    import torch

    from fewseg.api import Model
    from fewseg.apps.segment import SegmentSettings, check_out, prepare_inputs, segment
    from fewseg.data.user_images import collect_queries, read_support_pair

    settings = SegmentSettings(
        batch_size=args.batch_size,
        progress=not args.no_progress,
        format=args.format,
        probabilities=args.probabilities,
        overwrite=args.overwrite,
        class_name=args.class_name,
    )
    check_out(args.out, args.overwrite)
    paths = _support_paths(args)
    model = Model(_load(args, args.device), args.size, _inference_options(args))
    pairs = [read_support_pair(image, mask, args.mask_threshold) for image, mask in paths]
    queries = collect_queries(args.query)
    inputs = prepare_inputs(
        pairs, queries, model.size, progress=settings.progress, resize=model.inference.resize
    )
    torch.manual_seed(args.seed)
    summary = segment(model, inputs, args.out, settings)
    print(
        f"segmented {len(summary['queries'])} image(s) with {model.learner.name} from "
        f"{len(pairs)} support example(s) at {model.size}x{model.size}: {args.out}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fewseg.apps.page import check_port, require_gradio

    require_gradio()
    check_port(args.host, args.port)  # both before the model loads
    from fewseg.api import Model
    from fewseg.apps.labelling import Labeller
    from fewseg.apps.page import serve

    model = Model(_load(args, args.device), args.size, _inference_options(args))
    serve(Labeller(model, args.mask_threshold), args.host, args.port)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from fewseg.engine import distributed
    from fewseg.engine.config import read_yaml, resolve_config
    from fewseg.engine.device import resolve_device
    from fewseg.engine.train import train

    file_values = read_yaml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in args.option_names}
    config, options = resolve_config(file_values, flags, str(args.config or "flags"))
    resolve_device(config.device)
    with distributed.session(config.backend, config.dist_timeout, config.device):
        summary = train(
            config, options, args.out, resume=args.resume, progress=not args.no_progress
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

    from fewseg.experiments.benchmark import read_bench_plan, recorded_seconds, run_benchmark
    from fewseg.experiments.results_page import write_results

    plan = read_bench_plan(args.config, quick=args.quick)
    # the page this run replaces says how long each task took: the longest start first
    recorded = recorded_seconds(Path(args.docs) / "results.json")
    outcome = run_benchmark(
        plan, args.out, progress=not args.no_progress, jobs=args.jobs, recorded=recorded
    )
    command = "fewseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    page = write_results(plan, outcome, args.docs, command)
    print(page.read_text())
    return 0


# ---- the parser ---------------------------------------------------------------------------


def _learner_of_train(argv: Sequence[str]) -> tuple[str | None, bool]:
    """The learner a ``train`` command line names (``--learner``, else its ``--config``
    file's, else the default) and whether it asks only for help without naming one."""
    from fewseg.engine.config import TrainConfig, read_yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--learner")
    pre.add_argument("--config", type=Path)
    pre.add_argument("-h", "--help", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.learner is not None:
        return known.learner, False
    if known.config is not None and known.config.is_file():
        try:
            named = read_yaml(known.config).get("learner")
        except FewSegError:
            named = None  # the real parse reports the file
        if named is not None:
            return str(named), False
    return (None, True) if known.help else (TrainConfig.learner, False)


def _add_train(commands: Any, argv: Sequence[str]) -> None:
    from fewseg.engine.config import TrainConfig
    from fewseg.options import add_flags, field_names

    learner, help_only = _learner_of_train(argv) if argv[:1] == ["train"] else (None, True)
    train = commands.add_parser(
        "train",
        help="meta-train a learner on a fold's meta-train classes",
        description="Options come from defaults, then --config FILE.yaml, then flags.",
        epilog=(
            "Each learner has options of its own: `fewseg train --learner NAME --help` lists "
            "them (learners: `fewseg list`)."
            if learner is None
            else None
        ),
    )
    train.add_argument("--config", type=Path, metavar="FILE.yaml", help="options as a YAML mapping")
    train.add_argument("--out", required=True, type=Path, metavar="DIR", help="run directory")
    train.add_argument("--resume", action="store_true", help="continue DIR's checkpoint to --steps")
    _add_progress(train)
    names = set(field_names(TrainConfig))
    add_flags(train.add_argument_group("training options"), TrainConfig)
    if learner is not None and not help_only:
        from fewseg.learners import LEARNERS

        options = LEARNERS.get(learner).Options
        add_flags(train.add_argument_group(f"options of learner {learner}"), options)
        names |= field_names(options)
    train.set_defaults(run=cmd_train, option_names=names)


def _add_plan(parser: argparse.ArgumentParser, name: str) -> None:
    """``--config`` (default configs/NAME.yaml), ``--out`` (runs/NAME), ``--no-progress``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(f"configs/{name}.yaml"),
        metavar="FILE.yaml",
        help=f"the {name}'s plan (default configs/{name}.yaml)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(f"runs/{name}"), metavar="DIR", help=f"default runs/{name}"
    )
    _add_progress(parser)


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of InferenceOptions (fewseg.refinement.options)."""
    from fewseg.options import add_flags
    from fewseg.refinement.options import InferenceOptions

    group = parser.add_argument_group(
        "inference options", "applied to any learner's predictions (docs/evaluation.md)"
    )
    add_flags(group, InferenceOptions)


def _inference_options(args: argparse.Namespace) -> Any:
    """The InferenceOptions of the command line: the defaults, then the flags given."""
    from fewseg.options import field_names, options_from
    from fewseg.refinement.options import InferenceOptions

    values = {
        name: getattr(args, name)
        for name in field_names(InferenceOptions)
        if getattr(args, name, None) is not None
    }
    return options_from(InferenceOptions, values, "command line")


def _add_learner_choice(parser: argparse.ArgumentParser) -> None:
    learner = parser.add_mutually_exclusive_group()
    learner.add_argument(
        "--learner", metavar="NAME", help="a training-free learner: baseline (the default) or probe"
    )
    learner.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="a trained learner: a `fewseg train` run"
    )
    parser.add_argument(
        "--weights", metavar="FILE", help="--learner: a local backbone weights file (.pth)"
    )
    parser.add_argument(
        "--learner-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one of the learner's options, e.g. enlarge=1 for probe; with --checkpoint only a "
        "prediction-only one, e.g. centre_decay=0.1 for imaml (repeatable)",
    )


def _learner_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--learner-option KEY=VALUE`` pairs (values read as YAML scalars) and ``--weights``."""
    import yaml

    options: dict[str, Any] = {}
    for text in args.learner_option:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise FewSegError(f"--learner-option {text!r}: expected KEY=VALUE")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    if args.weights:
        options["weights_path"] = args.weights
    return options


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; ``argv`` tells which learner's options ``train`` takes."""
    parser = argparse.ArgumentParser(
        prog="fewseg", description="Few-shot semantic segmentation by meta-learning."
    )
    parser.add_argument("--version", action="version", version=f"fewseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list learners, backbones and dataset kinds")
    listing.set_defaults(run=cmd_list)

    datasets = commands.add_parser(
        "datasets", help="list a dataset's classes with image counts", description=DATASET_SPEC_HELP
    )
    datasets.add_argument("spec", metavar="SPEC", help="the dataset")
    datasets.add_argument(
        "--shots",
        type=_int_list,
        default=[1, 5],
        metavar="K[,K...]",
        help="mark the classes that can serve K-shot episodes (default 1,5)",
    )
    datasets.add_argument("--fold", help="also show each class's role in this fold")
    _add_min_mask_pixels(datasets)
    _add_index_cache(datasets)
    datasets.set_defaults(run=cmd_datasets)

    _add_train(commands, list(argv))

    demo = commands.add_parser(
        "demo", help="meta-train every learner, evaluate all on unseen classes, write a report"
    )
    _add_plan(demo, "demo")
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser(
        "bench", help="every learner on every fold of a real dataset; writes results.md/json"
    )
    _add_plan(bench, "bench")
    bench.add_argument("--quick", action="store_true", help="the plan's `quick` overrides")
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
    bench.set_defaults(run=cmd_bench)

    ev = commands.add_parser(
        "evaluate",
        help="evaluate a learner on a fixed episode list",
        description=DATASET_SPEC_HELP,
    )
    _add_learner_choice(ev)
    ev.add_argument("--dataset", required=True, metavar="SPEC", help="the dataset")
    ev.add_argument(
        "--fold",
        help="0..3, or 'all' for every class (default: the dataset's: 0; fss1000: test or all)",
    )
    ev.add_argument("--shots", type=_positive, default=1, metavar="K", help="default 1")
    ev.add_argument(
        "--episodes", type=_positive, default=1000, metavar="N", help="per seed (default 1000)"
    )
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
        help="square evaluation size (default: the checkpoint's training size, else the "
        "dataset's: 400 for real data)",
    )
    ev.add_argument(
        "--score-at",
        choices=("resized", "original"),
        default="resized",
        help="score against labels squashed to --size (default), or resize the logits to "
        "each query label's own size and score there (HSNet's use_original_imgsize)",
    )
    ev.add_argument(
        "--missing-classes",
        choices=("skip", "zero"),
        default="skip",
        help="test classes without episodes: left out of mIoU (default), or IoU 0 "
        "(HSNet's meter: mIoU over every test class of the fold)",
    )
    ev.add_argument(
        "--min-class-images",
        type=int,
        default=0,
        metavar="N",
        help="leave out test classes with fewer than N usable images, whatever the shots "
        "(the benchmark's 6: the same classes at 1 and 5 shots); default 0: K+1 for K shots",
    )
    ev.add_argument(
        "--workers", type=int, default=0, help="data-loading processes (default 0: a thread)"
    )
    ev.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_precision(ev)
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
    _add_progress(ev)
    ev.add_argument("--out", required=True, type=Path, metavar="DIR", help="report directory")
    _add_min_mask_pixels(ev)
    _add_index_cache(ev)
    _add_inference_flags(ev)
    ev.set_defaults(run=cmd_evaluate)

    seg = commands.add_parser(
        "segment",
        help="segment your own images from a few labelled examples",
        description="Masks: values 0/1 or 0/255 (foreground = 1 or 255), 0/1 with "
        "255 = ignore, or grey (soft, JPEG) read with --mask-threshold. Writes "
        "OUT/masks/NAME.png, OUT/overlays/NAME.jpg, OUT/summary.json; NAME is the query's "
        "path relative to the folder holding all queries, without its suffix.",
    )
    _add_learner_choice(seg)
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
    seg.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output folder (absent or empty)"
    )
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out (in one step, once the new run is complete)",
    )
    seg.add_argument(
        "--format",
        choices=("png", "coco", "both"),
        default="png",
        help="masks as masks/NAME.png, as one COCO RLE file coco.json, or both (default png)",
    )
    seg.add_argument(
        "--probabilities",
        action="store_true",
        help="also write probabilities/NAME.png: 8-bit foreground probability maps",
    )
    seg.add_argument(
        "--class-name",
        default="object",
        metavar="NAME",
        help="the class's name in coco.json and summary.json (default object)",
    )
    _add_mask_threshold(seg)
    seg.add_argument(
        "--size",
        type=_positive,
        metavar="PX",
        help="square inference size (default: the checkpoint's training size, else 400)",
    )
    seg.add_argument(
        "--batch-size", type=_positive, default=8, metavar="N", help="queries at once (default 8)"
    )
    seg.add_argument("--seed", type=int, default=0, help="torch's seed (default 0)")
    seg.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_precision(seg)
    _add_progress(seg)
    _add_inference_flags(seg)
    seg.set_defaults(run=cmd_segment)

    serve = commands.add_parser(
        "serve",
        help="a local web page: label a few examples in the browser, segment images",
        description="Serves a page (Gradio; `make install` installs it, else pip install "
        "'fewseg[ui]') on which you upload support images, paint their masks, add images "
        "or a server folder to segment, and download the masks (PNG zip, COCO RLE). "
        "The model is loaded once.",
    )
    _add_learner_choice(serve)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: "
        "every network interface, with no login)",
    )
    serve.add_argument("--port", type=_port, default=7860, help="port to listen on (default 7860)")
    serve.add_argument(
        "--size",
        type=_positive,
        metavar="PX",
        help="square inference size (default: the checkpoint's training size, else 400)",
    )
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_mask_threshold(serve)
    _add_inference_flags(serve)
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        retain_freed_memory()
        return args.run(args)
    except FewSegError as error:
        print(f"fewseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"fewseg: interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        return 130
