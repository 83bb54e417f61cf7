"""``results.md`` / ``results.json`` of the benchmark: tables, bar charts, targets, anchors."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fewseg.engine.figures import plot_score_bars
from fewseg.engine.report import format_table
from fewseg.experiments.benchmark import BenchPlan
from fewseg.experiments.demo import learner_values
from fewseg.fileio import atomic_write, write_json
from fewseg.learners.base import LEARNERS
from fewseg.options import defaults

MAML_FAMILY = ("maml", "fomaml", "reptile", "imaml")
META_LEARNED = (*MAML_FAMILY, "protonet", "lrd2")
REQUIRED_CONTROLS = ("finetune", "baseline")  # issue #17's two controls
# and, where the plan has it, the training-free probe: the strongest at 5 shots here
CONTROLS = (*REQUIRED_CONTROLS, "probe")
MIOU_TARGETS = {1: (25.0, 30.0), 5: (30.0, 36.0)}  # shots → (target, stretch), issue #17
CONTROL_MARGIN = 2.0
PUBLISHED = [
    ("PANet (ICCV'19)", "VGG16", "20.9 / 29.7 (consecutive split)"),
    ("HSNet (ICCV'21)", "ResNet50", "39.2 / 46.9"),
    ("HDMNet (CVPR'23)", "ResNet50", "50.0 / 56.0"),
]


def dataset_table(plan: BenchPlan, results: dict[str, Any], dataset: str) -> str:
    folds = plan.folds
    headers = ["learner", "shots", *(f"fold {f}" for f in folds), "mean", "seeds mean ± std"]
    rows = []
    for name, by_dataset in results.items():
        for shots in plan.shots:
            entry = by_dataset[dataset][f"{shots}shot"]
            rows.append([
                name, shots, *(entry["per_fold"][f]["miou"] for f in folds), entry["mean"],
                f"{entry['seeds_mean']:.1f}"
                + (f" ± {entry['std']:.1f}" if entry["std"] is not None else " (one seed)"),
            ])  # fmt: skip
    return format_table(headers, rows)


def boundary_table(plan: BenchPlan, results: dict[str, Any], dataset: str) -> str:
    """mIoU, FB-IoU and boundary IoU side by side: the first seed, mean of folds."""
    headers = ["learner", "shots", "mIoU", "FB-IoU", "boundary IoU"]
    rows = []
    for name, by_dataset in results.items():
        for shots in plan.shots:
            entry = by_dataset[dataset][f"{shots}shot"]
            boundary = entry.get("boundary_mean")
            rows.append([
                name, shots, entry["mean"], entry["fbiou_mean"],
                boundary if boundary is not None else "-",
            ])  # fmt: skip
    return format_table(headers, rows)


def best_entry(
    plan: BenchPlan, results: dict[str, Any], learners: Sequence[str], dataset: str, key: str
) -> tuple[str, float] | None:
    """The entry, among those running one of ``learners`` (any model), with the best mean
    mIoU on ``dataset`` at ``key`` shots, and that mean."""
    entries = [n for n in results if plan.learner_of(n) in learners]
    if not entries:
        return None
    best = max(entries, key=lambda n: results[n][dataset][key]["mean"])
    return best, results[best][dataset][key]["mean"]


def against(value: float, goal: float, sign: str = "") -> str:
    """``value`` to one decimal, or to two where one decimal would hide which side of
    ``goal`` it is on (24.97 shows as 24.97 beside a goal of 25, not as 25.0)."""
    one = f"{value:{sign}.1f}"
    return one if (float(one) >= goal) == (value >= goal) else f"{value:{sign}.2f}"


def target_lines(plan: BenchPlan, results: dict[str, Any]) -> list[str]:
    """Issue #17's targets: the best meta-learned entry's mean mIoU on the meta-training
    dataset, and the margin of the best MAML-family entry (on the meta-training dataset) or
    the best meta-learned entry (cross-domain) over the best control (finetune, baseline and,
    where the plan has it, probe), each control on its best model."""
    lines = []
    for shots in plan.shots:
        key = f"{shots}shot"
        found = best_entry(plan, results, META_LEARNED, plan.dataset_name, key)
        if shots in MIOU_TARGETS and found is not None:
            goal, stretch = MIOU_TARGETS[shots]
            name, value = found
            verdict = "stretch met" if value >= stretch else "met" if value >= goal else "MISSED"
            lines.append(
                f"- best meta-learned {shots}-shot mean mIoU ≥ {goal:.0f} (stretch "
                f"{stretch:.0f}): {verdict} ({name}: {against(value, goal)})"
            )
    for dataset in plan.datasets:
        contenders = MAML_FAMILY if dataset == plan.dataset_name else META_LEARNED
        label = "MAML-family" if dataset == plan.dataset_name else "meta-learned"
        for shots in plan.shots:
            key = f"{shots}shot"
            found = best_entry(plan, results, contenders, dataset, key)
            controls = {c: best_entry(plan, results, (c,), dataset, key) for c in CONTROLS}
            if found is None or any(controls[c] is None for c in REQUIRED_CONTROLS):
                continue
            name, value = found
            control, control_value = max((c for c in controls.values() if c), key=lambda c: c[1])
            margin = value - control_value
            verdict = "met" if margin >= CONTROL_MARGIN else "MISSED"
            lines.append(
                f"- {dataset} {shots}-shot, best {label} beats the controls by ≥ "
                f"{CONTROL_MARGIN:.0f}: {verdict} ({name} {value:.1f} vs {control} "
                f"{control_value:.1f}: {against(margin, CONTROL_MARGIN, '+')})"
            )
    return lines


def component_table(plan: BenchPlan, results: dict[str, Any]) -> str:
    """Each entry's components (what issue #17's ablation turns on and off) and its mean
    mIoU on the meta-training dataset at each shot count."""
    fold_plan = plan.fold_plan(plan.folds[0])
    rows = []
    for name in results:
        learner = plan.learner_of(name)
        values = {**defaults(LEARNERS.get(learner).Options), **learner_values(fold_plan, name)}
        model = str(values.get("model", "-"))
        pseudo = plan.learners[name].get("pseudo_ratio", plan.train.get("pseudo_ratio")) or 0
        rows.append(
            [
                name,
                learner,
                model,
                ("on" if values["prior"] else "off") if model == "correlation" else "-",
                str(values["probe"]) if model == "correlation" else "-",
                f"{pseudo:g}" if LEARNERS.get(learner).trainable else "-",
                str(values.get("backbone", "-")),
                *(
                    f"{results[name][plan.dataset_name][f'{k}shot']['mean']:.1f}"
                    for k in plan.shots
                ),
            ]
        )
    headers = ["entry", "learner", "model", "prior", "probe", "pseudo", "backbone"]
    return format_table([*headers, *(f"{k}-shot" for k in plan.shots)], rows)


def work_total(outcome: dict[str, Any]) -> float:
    """Seconds of training and evaluation summed over every task (reused ones included)."""
    return sum(s for by_fold in outcome["work_seconds"].values() for s in by_fold.values())


def example_lines(
    overlays: dict[str, dict[str, str]], results: dict[str, Any], figures: Path, plan: BenchPlan
) -> list[str]:
    """Per dataset, the overlay grid (fold ``plan.folds[0]``) of the learner with the best
    mean at the first shot count, and the training-free baseline's for comparison, saved
    as JPEG next to the page (every learner's PNG stays in the run directory)."""
    key = f"{plan.shots[0]}shot"
    lines = []
    for dataset in plan.datasets:
        candidates = [n for n in overlays if dataset in overlays[n]]
        if not candidates:
            continue
        best = max(candidates, key=lambda n: results[n][dataset][key]["mean"])
        shown = [best, *(["baseline"] if "baseline" in candidates and best != "baseline" else [])]
        for name in shown:
            target = figures / f"examples-{name}-{dataset}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(overlays[name][dataset]) as image:
                image.convert("RGB").save(target, quality=85)
            label = "best" if name == best else "training-free"
            lines.append(f"![{name} ({label}) on {dataset}](figures/{target.name})")
    if not lines:
        return []
    return [
        "## Examples",
        "",
        f"The first episodes of seed {plan.seeds[0]}'s list, {plan.shots[0]}-shot, models "
        f"trained on fold {plan.folds[0]}: support, query with its ground truth, prediction. "
        "Every learner's grid is in the run directory (`fold*/overlays/`).",
        "",
        *lines,
        "",
    ]


def write_results(plan: BenchPlan, outcome: dict[str, Any], docs: Path, command: str) -> Path:
    results = outcome["results"]
    datasets = list(next(iter(results.values())))
    figures = docs / "figures"
    for dataset in datasets:
        scores = {
            f"{shots}-shot": {
                name: (
                    r[dataset][f"{shots}shot"]["seeds_mean"],
                    r[dataset][f"{shots}shot"]["std"] or 0.0,
                )
                for name, r in results.items()
            }
            for shots in plan.shots
        }
        plot_score_bars(
            scores,
            f"{dataset}: mIoU, mean of folds, mean ± std over seeds",
            figures / f"results-{dataset}.png",
        )
    work_minutes = work_total(outcome) / 60
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} "
        f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})"
        + (
            " — **quick run: fewer steps, folds, episodes and seeds than the full benchmark**"
            if plan.settings.get("quick")
            else ""
        )
        + ".",
        "",
        "## Settings",
        "",
        f"- Training: {plan.dataset}, folds {', '.join(plan.folds)} (COCO-20i interleaved), "
        f"meta-train classes only; " + ", ".join(f"{k}={v}" for k, v in plan.train.items()),
        *(f"- `{name}`: {plan.entry_settings(name) or 'defaults'}" for name in plan.learners),
        f"- Time: {outcome['jobs']} task(s) at a time, each (fold, learner) training and "
        "evaluating in a process of its own; "
        f"{outcome['seconds'] // 60:.0f} min {outcome['seconds'] % 60:.0f} s of wall clock for "
        "this invocation; the tasks' training and evaluation add up to "
        f"{work_minutes:.0f} min ({work_minutes / outcome['jobs']:.0f} "
        "min per job; an interrupted run resumes from its checkpoints and finished "
        "evaluations, whose recorded times count here).",
        f"- Evaluation: {plan.episodes} episodes per seed, seeds {plan.seeds}; classes with "
        f"fewer than {plan.min_class_images} images left out for every shot count (so 1- and "
        "5-shot use the same classes); scored at the evaluation resolution; mIoU in percent.",
        "- `fold i` and `mean` columns: seed "
        f"{plan.seeds[0]}. `seeds mean ± std`: the fold-mean mIoU of each seed, then mean and "
        "population std over seeds.",
        "- Cross-domain: the models trained on each coco-mini fold, evaluated on every class of "
        "the other dataset (fold `all`) with seeds "
        f"{plan.seeds_for(next(iter(plan.cross_domain), plan.dataset_name))}; "
        "the fold columns name the training fold. A training-free entry is the same learner "
        "on every fold: it is evaluated there once and its numbers stand in every fold column.",
        "- Repeated support sets: at test time adaptation is deterministic, so an episode "
        "whose class and support images were met before (common at 1-shot) reuses the "
        "predictor built then; scores are identical to adapting again (tested).",
        "- Feature reuse: the backbone is frozen, so its features are computed once per "
        "distinct image (content-keyed cache). Training runs without augmentation "
        "(`augment: false`) so that the cache serves training too; with augmentation every "
        "image is new and each step pays full backbone passes.",
        "",
    ]
    for dataset in datasets:
        left_out = next(iter(next(iter(results.values()))[dataset].values()))["per_fold"]
        lines += [
            f"## {dataset}",
            "",
            "```",
            dataset_table(plan, results, dataset),
            "```",
            "",
            f"![{dataset}](figures/results-{dataset}.png)",
            "",
            "mIoU, FB-IoU and boundary IoU (Cheng et al. 2021: the IoU of the bands within "
            "2% of the image diagonal of each mask's contour; docs/evaluation.md), seed "
            f"{plan.seeds_for(dataset)[0]}, mean of folds:",
            "",
            "```",
            boundary_table(plan, results, dataset),
            "```",
            "",
            "Classes left out (fold: class (images)): "
            + "; ".join(
                f"{fold}: "
                + (", ".join(f"{c} ({n})" for c, n in e["classes_left_out"].items()) or "none")
                for fold, e in left_out.items()
            ),
            "",
        ]
    lines += ["## Targets", "", *target_lines(plan, results), ""]
    lines += [
        f"## Entries and their components ({plan.dataset_name}, mean mIoU of the fold columns)",
        "",
        "```",
        component_table(plan, results),
        "```",
        "",
    ]
    lines += example_lines(outcome.get("overlays", {}), results, figures, plan)
    seconds = outcome["train_seconds"]
    lines += [
        "## Training time (s per fold)",
        "",
        "```",
        format_table(
            ["learner", *(f"fold {f}" for f in plan.folds)],
            [
                [n, *(f"{t[f]:.0f}" if t[f] is not None else "-" for f in plan.folds)]
                for n, t in seconds.items()
            ],
        ),
        "```",
        "",
        "## Published anchors (COCO-20i, mean of 4 folds; ../shared/docs/protocol.md)",
        "",
        "| method | backbone | 1 / 5-shot mIoU |",
        "|---|---|---|",
        *(f"| {m} | {b} | {v} |" for m, b, v in PUBLISHED),
        "",
        "They are trained on all of COCO (~80k images) with larger backbones; coco-mini has "
        "285 images, so they give context, not a like-for-like comparison.",
        "",
    ]
    text = "\n".join(lines)
    atomic_write(docs / "results.md", lambda handle: handle.write(text.encode()))
    write_json(
        docs / "results.json",
        {
            "settings": {"command": command, **{k: v for k, v in plan.settings.items()}},
            "results": {
                name: {
                    dataset: {
                        shots: {k: v for k, v in entry.items()} for shots, entry in by_shots.items()
                    }
                    for dataset, by_shots in by_dataset.items()
                }
                for name, by_dataset in results.items()
            },
            "train_seconds": seconds,
            "wall_seconds": outcome["seconds"],
            "work_seconds": outcome["work_seconds"],
            "jobs": outcome["jobs"],
        },
    )
    return docs / "results.md"
