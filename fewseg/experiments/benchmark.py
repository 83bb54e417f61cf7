"""The real-data benchmark: every learner on every fold of a dataset, 1- and 5-shot, one
fixed episode list per seed, plus cross-domain evaluation of the same trained models.
Writes ``results.json``, ``results.md`` and figures."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluation_report
from fewseg.engine.report import write_report
from fewseg.errors import FewSegError
from fewseg.experiments.demo import DemoPlan, prepare_learner


@dataclass
class BenchPlan:
    dataset: str
    folds: list[str]
    cross_domain: dict[str, str]
    train: dict[str, Any]
    learners: dict[str, dict[str, Any]]
    shots: list[int]
    episodes: int
    seeds: list[int]
    min_class_images: int = 0
    dataset_name: str = ""
    source_file: str = "bench.yaml"
    settings: dict[str, Any] = field(default_factory=dict)

    def fold_plan(self, fold: str) -> DemoPlan:
        return DemoPlan(
            self.dataset,
            fold,
            self.train,
            self.learners,
            self.shots,
            self.episodes,
            self.seeds[0],
            source_file=self.source_file,
        )


def read_bench_plan(path: str | Path, quick: bool = False) -> BenchPlan:
    from fewseg.engine.config import read_yaml

    values = read_yaml(path)
    try:
        evaluation = dict(values["evaluate"])
        train = dict(values.get("train") or {})
        folds = [str(f) for f in values["folds"]]
        if quick:
            overrides = dict(values.get("quick") or {})
            folds = [str(f) for f in overrides.pop("folds", folds)]
            for key in ("episodes", "seeds"):
                if key in overrides:
                    evaluation[key] = overrides.pop(key)
            train.update(overrides)
        return BenchPlan(
            dataset=str(values["dataset"]),
            folds=folds,
            cross_domain={str(k): str(v) for k, v in (values.get("cross_domain") or {}).items()},
            train=train,
            learners={k: dict(v or {}) for k, v in values["learners"].items()},
            shots=[int(k) for k in evaluation["shots"]],
            episodes=int(evaluation["episodes"]),
            seeds=[int(s) for s in evaluation["seeds"]],
            min_class_images=int(evaluation.get("min_class_images", 0)),
            dataset_name=str(values.get("dataset_name", values["dataset"])),
            source_file=str(path),
            settings={"quick": quick, **values},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FewSegError(f"{path}: not a benchmark plan ({exc})") from None


def summarize_folds(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean over folds of the first seed's mIoU, and mean ± std over seeds of the
    fold-mean mIoU (each seed's fold-mean first, then statistics across seeds)."""
    first = [r["miou"] for r in per_fold.values()]
    n_seeds = min(len(r["seed_miou"]) for r in per_fold.values())
    fold_means = [
        statistics.fmean(r["seed_miou"][s] for r in per_fold.values()) for s in range(n_seeds)
    ]
    return {
        "mean": statistics.fmean(first),
        "fbiou_mean": statistics.fmean(r["fbiou"] for r in per_fold.values()),
        "seeds_mean": statistics.fmean(fold_means),
        "std": statistics.pstdev(fold_means) if n_seeds > 1 else 0.0,
    }


def fold_entry(report: dict[str, Any]) -> dict[str, Any]:
    runs = report["runs"]
    return {
        "miou": runs[0]["miou"],
        "fbiou": runs[0]["fbiou"],
        "seed_miou": [r["miou"] for r in runs],
        "seed_fbiou": [r["fbiou"] for r in runs],
        "classes_used": report["classes_used"],
        "classes_left_out": report["classes_left_out"],
        "seconds": report["seconds"],
    }


def run_benchmark(plan: BenchPlan, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate everything; returns learner → dataset → shots → results."""
    out = Path(out)
    datasets = {plan.dataset_name: plan.dataset, **plan.cross_domain}
    sources = {name: open_source(spec) for name, spec in datasets.items()}
    results: dict[str, Any] = {name: {d: {} for d in datasets} for name in plan.learners}
    timings: dict[str, dict[str, float | None]] = {name: {} for name in plan.learners}
    for fold in plan.folds:
        fold_plan = plan.fold_plan(fold)
        for name in plan.learners:
            learner, seconds = prepare_learner(fold_plan, name, out / f"fold{fold}", progress)
            timings[name][fold] = seconds
            for dataset, source in sources.items():
                eval_fold = fold if dataset == next(iter(datasets)) else "all"
                size = int(plan.train.get("size") or source.default_size)
                for shots in plan.shots:
                    settings = EvaluationSettings(
                        eval_fold,
                        shots,
                        plan.episodes,
                        size,
                        progress=progress,
                        min_class_images=plan.min_class_images,
                    )
                    report = evaluation_report(
                        learner, source, datasets[dataset], settings, plan.seeds
                    )
                    write_report(
                        out / f"fold{fold}" / "eval" / f"{name}-{dataset}-{shots}shot", report
                    )
                    entry = results[name][dataset].setdefault(f"{shots}shot", {"per_fold": {}})
                    entry["per_fold"][fold] = fold_entry(report)
            print(
                f"fold {fold} {name}: "
                + ", ".join(
                    f"{d} {k}: {v['per_fold'][fold]['miou']:.1f}"
                    for d, shots in results[name].items()
                    for k, v in shots.items()
                ),
                flush=True,
            )
    for learner_results in results.values():
        for dataset_results in learner_results.values():
            for entry in dataset_results.values():
                entry.update(summarize_folds(entry["per_fold"]))
    return {"results": results, "train_seconds": timings}
