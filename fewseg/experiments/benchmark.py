"""The real-data benchmark: every learner on every fold of a dataset, 1- and 5-shot, one
fixed episode list per seed, plus cross-domain evaluation of the same trained models.
Writes ``results.json``, ``results.md`` and figures."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewseg.allocator import retain_freed_memory
from fewseg.data.source import SegmentationSource
from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluate, scored_at
from fewseg.engine.feature_disk import FeatureDisk
from fewseg.engine.features import share_frozen_features
from fewseg.engine.report import EvaluationReport, read_report, write_report
from fewseg.errors import FewSegError
from fewseg.experiments.demo import DemoPlan, check_plan_options, overlay_grid, prepare_learner
from fewseg.learners.base import LEARNERS, Learner
from fewseg.options import changed_options, recorded_defaults

FEATURES_DIR = "features"  # under the run directory, while the benchmark runs


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
    score_at: str = "resized"  # evaluate's --score-at
    missing_classes: str = "skip"  # evaluate's --missing-classes
    cross_domain_seeds: list[int] | None = None  # None: the same seeds as the main dataset
    dataset_name: str = ""
    source_file: str = "bench.yaml"
    settings: dict[str, Any] = field(default_factory=dict)
    # entry → shot count → the options its model for that shot count overrides (PFENet-style
    # models per shot count); a shot count not named here uses the entry's own model
    shot_models: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    @property
    def datasets(self) -> dict[str, str]:
        """Dataset name → source spec: the meta-training dataset first, then cross-domain."""
        return {self.dataset_name: self.dataset, **self.cross_domain}

    def seeds_for(self, dataset: str) -> list[int]:
        if dataset != self.dataset_name and self.cross_domain_seeds is not None:
            return self.cross_domain_seeds
        return self.seeds

    def learner_of(self, entry: str) -> str:
        return self.fold_plan(self.folds[0]).learner_of(entry)

    def fold_free(self, entry: str) -> bool:
        """A training-free entry: the same learner on every fold, so its cross-domain
        evaluations (their episodes do not depend on the fold either) run once, in the first
        fold's task, and stand for every fold (:func:`share_fold_free`)."""
        return not LEARNERS.get(self.learner_of(entry)).trainable

    def model_entry(self, entry: str, shots: int) -> str:
        """The entry whose model evaluates ``entry`` at ``shots`` shots: ``entry`` itself, or
        its own model for that shot count (``shot_models``), trained under this name."""
        return f"{entry}@{shots}shot" if shots in self.shot_models.get(entry, {}) else entry

    def entry_settings(self, entry: str) -> dict[str, Any]:
        """The entry's options as the plan gives them (with its ``shot_models``)."""
        own = self.shot_models.get(entry)
        return {**self.learners[entry], **({"shot_models": own} if own else {})}

    def fold_plan(self, fold: str) -> DemoPlan:
        per_shots = {
            self.model_entry(name, shots): {"learner": name, **self.learners[name], **overrides}
            for name, models in self.shot_models.items()
            for shots, overrides in models.items()
        }
        return DemoPlan(
            self.dataset,
            fold,
            self.train,
            {**self.learners, **per_shots},
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
        learners = {k: dict(v or {}) for k, v in values["learners"].items()}
        shots = [int(k) for k in evaluation["shots"]]
        shot_models = {
            name: read_shot_models(name, entry.pop("shot_models"), shots)
            for name, entry in learners.items()
            if "shot_models" in entry
        }
        if quick:
            overrides = dict(values.get("quick") or {})
            folds = [str(f) for f in overrides.pop("folds", folds)]
            for key in ("episodes", "seeds", "cross_domain_seeds"):
                if key in overrides:
                    evaluation[key] = overrides.pop(key)
            train.update(overrides)
            for entry in learners.values():  # an entry's own steps give way to quick's too
                entry.update({k: v for k, v in overrides.items() if k in entry})
        # checked now, not when the first evaluation starts
        EvaluationSettings(
            "all",
            1,
            1,
            1,
            score_at=str(evaluation.get("score_at", "resized")),
            missing_classes=str(evaluation.get("missing_classes", "skip")),
        )
        plan = BenchPlan(
            dataset=str(values["dataset"]),
            folds=folds,
            cross_domain={str(k): str(v) for k, v in (values.get("cross_domain") or {}).items()},
            train=train,
            learners=learners,
            shots=shots,
            episodes=int(evaluation["episodes"]),
            seeds=[int(s) for s in evaluation["seeds"]],
            min_class_images=int(evaluation.get("min_class_images", 0)),
            score_at=str(evaluation.get("score_at", "resized")),
            missing_classes=str(evaluation.get("missing_classes", "skip")),
            cross_domain_seeds=(
                [int(s) for s in evaluation["cross_domain_seeds"]]
                if "cross_domain_seeds" in evaluation
                else None
            ),
            dataset_name=str(values.get("dataset_name", values["dataset"])),
            source_file=str(path),
            settings={**values, "quick": quick},  # the flag, not the YAML's `quick` overrides
            shot_models=shot_models,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FewSegError(f"{path}: not a benchmark plan ({exc})") from None
    except FewSegError as exc:
        raise FewSegError(f"{path}: {exc}") from None
    check_plan_options(plan.fold_plan(plan.folds[0]))
    return plan


def read_shot_models(entry: str, value: Any, shots: list[int]) -> dict[int, dict[str, Any]]:
    """An entry's ``shot_models``: evaluated shot count → the options its model overrides."""
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise FewSegError(
            f"{entry}: shot_models must map a shot count to options, e.g. {{1: {{max_shots: 1}}}}"
        )
    models = {int(k): dict(v) for k, v in value.items()}
    unknown = sorted(set(models) - set(shots))
    if unknown:
        raise FewSegError(
            f"{entry}: shot_models names shot counts {unknown} that are not evaluated {shots}"
        )
    return models


def summarize_folds(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean over folds of the first seed's mIoU, and mean ± std over seeds of the
    fold-mean mIoU (each seed's fold-mean first, then statistics across seeds; std is None
    with a single seed); the mean over folds of the first seed's FB-IoU and boundary IoU."""
    first = [r["miou"] for r in per_fold.values()]
    n_seeds = min(len(r["seed_miou"]) for r in per_fold.values())
    fold_means = [
        statistics.fmean(r["seed_miou"][s] for r in per_fold.values()) for s in range(n_seeds)
    ]
    boundary = [r.get("boundary_iou") for r in per_fold.values()]
    return {
        "mean": statistics.fmean(first),
        "fbiou_mean": statistics.fmean(r["fbiou"] for r in per_fold.values()),
        # the first seed's, mean of folds (None when a fold's report predates boundary IoU)
        "boundary_mean": None if None in boundary else statistics.fmean(boundary),
        "seeds_mean": statistics.fmean(fold_means),
        "std": statistics.pstdev(fold_means) if n_seeds > 1 else None,  # one seed: no spread
    }


def fold_entry(report: EvaluationReport) -> dict[str, Any]:
    runs = report.runs
    return {
        "miou": runs[0].miou,
        "fbiou": runs[0].fbiou,
        "seed_miou": [r.miou for r in runs],
        "seed_fbiou": [r.fbiou for r in runs],
        "boundary_iou": runs[0].boundary_iou,
        "seed_boundary_iou": [r.boundary_iou for r in runs],
        "classes_used": report.classes_used,
        "classes_left_out": report.classes_left_out,
        "seconds": report.seconds,
    }


@dataclass(frozen=True)
class BenchTask:
    """One learner on one fold: train it, then evaluate it on every dataset of the plan."""

    fold: str
    learner: str


def bench_tasks(
    plan: BenchPlan, recorded: Mapping[str, Mapping[str, float | None]] | None = None
) -> list[BenchTask]:
    """Every (fold, entry) pair, longest first, so that the parallel schedule ends with
    the short ones: by ``recorded`` seconds (entry → fold → seconds, the ``work_seconds``
    of an earlier results.json) when it has every task's, else entries on the correlation
    model first, then those that adapt by inner-loop steps (their evaluations take longest)."""
    tasks = [BenchTask(fold, name) for name in plan.learners for fold in plan.folds]
    seconds = {t: (recorded or {}).get(t.learner, {}).get(t.fold) for t in tasks}
    if all(isinstance(s, int | float) for s in seconds.values()):
        return sorted(tasks, key=lambda t: -float(seconds[t] or 0.0))

    def family(task: BenchTask) -> tuple[bool, bool]:
        options = plan.learners[task.learner]
        return options.get("model") != "correlation", "inner_steps" not in options

    return sorted(tasks, key=family)


def recorded_seconds(results_json: Path) -> dict[str, dict[str, float | None]] | None:
    """The ``work_seconds`` of an earlier results.json (for :func:`bench_tasks`); None
    when there is none or it cannot be read as entry → fold → seconds (only an ordering
    hint: a damaged page must not stop the benchmark)."""
    try:
        work = json.loads(results_json.read_text()).get("work_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(work, dict) or not all(isinstance(f, dict) for f in work.values()):
        return None
    return work


_SOURCES: dict[str, SegmentationSource] = {}


def _source(spec: str) -> SegmentationSource:
    """One opened source per spec and process, so its decoded-sample memo is shared by the
    tasks a process runs."""
    if spec not in _SOURCES:
        _SOURCES[spec] = open_source(spec)
    return _SOURCES[spec]


def run_task(plan: BenchPlan, task: BenchTask, out: Path, progress: bool) -> dict[str, Any]:
    """Train and evaluate one task; returns its per-dataset, per-shots fold entries."""
    start = time.perf_counter()
    fold_dir = out / f"fold{task.fold}"
    fold_plan = plan.fold_plan(task.fold)
    models: dict[str, Learner] = {}  # model entry → its learner (trained once per task)
    train_seconds: float | None = None
    for shots in plan.shots:
        name = plan.model_entry(task.learner, shots)
        if name not in models:
            models[name], seconds = prepare_learner(fold_plan, name, fold_dir, progress)
            if seconds is not None:
                train_seconds = (train_seconds or 0.0) + seconds
    entries: dict[str, dict[str, Any]] = {}
    overlays: dict[str, str] = {}
    work_seconds = train_seconds or 0.0
    for dataset, spec in plan.datasets.items():
        cross_domain = dataset != plan.dataset_name
        if cross_domain and task.fold != plan.folds[0] and plan.fold_free(task.learner):
            continue  # the first fold's task evaluates it (share_fold_free)
        source = _source(spec)
        eval_fold = "all" if cross_domain else task.fold
        size = int(plan.train.get("size") or source.default_size)
        for shots in plan.shots:
            learner = models[plan.model_entry(task.learner, shots)]
            settings = EvaluationSettings(
                eval_fold,
                shots,
                plan.episodes,
                size,
                progress=progress,
                min_class_images=plan.min_class_images,
                score_at=plan.score_at,
                missing_classes=plan.missing_classes,
            )
            seeds = plan.seeds_for(dataset)
            report_dir = fold_dir / "eval" / f"{task.learner}-{dataset}-{shots}shot"
            report = finished_report(report_dir, learner, spec, settings, seeds)
            if report is None:
                report = evaluate(learner, source, spec, settings, seeds)
                write_report(report_dir, report)
            work_seconds += report.seconds
            entries.setdefault(dataset, {})[f"{shots}shot"] = fold_entry(report)
        if task.fold == plan.folds[0]:
            overlay = fold_dir / "overlays" / f"{task.learner}-{dataset}-{plan.shots[0]}shot.png"
            demo_plan = plan.fold_plan(eval_fold)
            first = models[plan.model_entry(task.learner, plan.shots[0])]
            overlay_grid(first, source, demo_plan, plan.shots[0], size, overlay)
            overlays[dataset] = str(overlay)
    return {
        "task": task,
        "entries": entries,
        "train_seconds": train_seconds,
        "overlays": overlays,
        "seconds": time.perf_counter() - start,
        "work_seconds": work_seconds,
    }


def share_fold_free(plan: BenchPlan, results: dict[str, Any]) -> None:
    """Each training-free entry's cross-domain results of the first fold copied to the other
    folds, marked ``same_as_fold`` and with no seconds of their own: evaluated again, the
    same learner on the same episodes would score the same."""
    first, others = plan.folds[0], plan.folds[1:]
    for name in plan.learners:
        if not plan.fold_free(name):
            continue
        for dataset in plan.cross_domain:
            for entry in results[name][dataset].values():
                shared = {**entry["per_fold"][first], "seconds": 0.0, "same_as_fold": first}
                entry["per_fold"].update({fold: dict(shared) for fold in others})


def finished_report(
    report_dir: Path,
    learner: Learner,
    spec: str,
    settings: EvaluationSettings,
    seeds: list[int],
) -> EvaluationReport | None:
    """The report an earlier (interrupted) run wrote for this very evaluation, if any: same
    dataset, fold, shots, episodes, seeds, image size, scoring and learner settings. Delete
    the run directory to evaluate again."""
    path = report_dir / "report.json"
    if not path.is_file():
        return None
    try:
        report = read_report(path)
    except FewSegError:
        return None  # unreadable: evaluate again
    if report.boundary_iou is None:
        return None  # written before boundary IoU was scored: evaluate again
    written = report.settings
    expected = (
        spec,
        settings.fold,
        settings.shots,
        settings.episodes,
        seeds,
        settings.size,
        scored_at(settings),
        settings.missing_classes,
    )
    found = (
        written.dataset,
        written.fold,
        written.shots,
        written.episodes,
        written.seeds,
        written.image_size,
        written.scored_at,
        written.missing_classes,
    )
    # an option the report lacks was added to fewseg after it was written: it stands for
    # the value that kept the behaviour it had (options.recorded_defaults; as for resumed
    # training, engine.train.check_same_run)
    current = json.loads(json.dumps(learner.settings()))
    added = json.loads(json.dumps(recorded_defaults(type(learner.options))))
    same_learner = not changed_options(written.learner, current, added)
    return report if found == expected and same_learner else None


def _init_worker(threads: int, features: Path) -> None:
    torch.set_num_threads(threads)
    share_frozen_features(FeatureDisk(features))
    retain_freed_memory()  # as the command line does in its own process
    # A benchmark started in the background inherits SIGINT ignored; its workers take it
    # (from the watch below) as Ctrl-C all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    watch = threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True)
    watch.start()


def _stop_when_orphaned(parent: int, poll_seconds: float = 1.0) -> None:
    """A worker whose benchmark process is gone (killed, not interrupted) stops as on
    Ctrl-C, instead of running its task to the end beside a rerun: a training saves its
    checkpoint after the current step, an evaluation stops (its finished seeds' report is
    written only when all are done, so a rerun evaluates it again)."""
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def _run_tasks(
    plan: BenchPlan,
    tasks: list[BenchTask],
    out: Path,
    progress: bool,
    jobs: int,
    features: Path,
) -> list[dict[str, Any]]:
    """The tasks' results, in task order; ``jobs`` > 1 runs them in that many processes,
    the machine's threads shared between them. Their frozen backbones' features are
    shared through files under ``features`` (each image encoded once per backbone)."""
    if jobs <= 1:
        share_frozen_features(FeatureDisk(features))
        try:
            return [
                _announce(run_task(plan, t, out, progress), i, len(tasks))
                for i, t in enumerate(tasks)
            ]
        finally:
            share_frozen_features(None)
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    # One process per task: what a task decoded and cached is freed with it (holding the
    # samples and features of several tasks' datasets ran this 24 GiB machine out of memory).
    with ProcessPoolExecutor(
        jobs,
        mp_context=context,
        initializer=_init_worker,
        initargs=(threads, features),
        max_tasks_per_child=1,
    ) as pool:
        futures = [pool.submit(run_task, plan, t, out, False) for t in tasks]
        done = collect_results(futures, len(tasks))
    return [done[t] for t in tasks]


def collect_results(futures: list[Future], total: int) -> dict[BenchTask, dict[str, Any]]:
    """Each task's result as it finishes (announced); a task's error stops the benchmark,
    the others cancelled, and a worker process that ended abruptly is a one-line error."""
    done: dict[BenchTask, dict[str, Any]] = {}
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                raise FewSegError(
                    f"bench: a task's process ended abruptly (killed, perhaps for want of "
                    f"memory) after {len(done)} of {total} tasks finished; what finished is "
                    "kept: the same command goes on from there (--jobs 1 needs less memory)"
                ) from None
            done[result["task"]] = _announce(result, len(done), total)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return done


def _announce(result: dict[str, Any], index: int, total: int) -> dict[str, Any]:
    task = result["task"]
    scores = ", ".join(
        f"{dataset} {shots}: {entry['miou']:.1f}"
        for dataset, by_shots in result["entries"].items()
        for shots, entry in by_shots.items()
    )
    print(
        f"[{index + 1}/{total}] fold {task.fold} {task.learner} "
        f"({result['seconds']:.0f} s): {scores}",
        flush=True,
    )
    return result


def run_benchmark(
    plan: BenchPlan,
    out: str | Path,
    progress: bool = True,
    jobs: int = 1,
    recorded: Mapping[str, Mapping[str, float | None]] | None = None,
) -> dict[str, Any]:
    """Train and evaluate everything; returns learner → dataset → shots → results, the
    training seconds per learner and fold, example overlays and the wall-clock seconds.
    ``recorded``: each task's seconds in an earlier run, to start the longest first."""
    start = time.perf_counter()
    out = Path(out)
    for spec in plan.datasets.values():
        _source(spec)  # a bad spec fails here, before any training
    tasks = bench_tasks(plan, recorded)
    # features belong to this run's code: never left for a later run
    features = out / FEATURES_DIR
    shutil.rmtree(features, ignore_errors=True)
    try:
        finished = _run_tasks(plan, tasks, out, progress, min(jobs, len(tasks)), features)
    finally:
        shutil.rmtree(features, ignore_errors=True)
    results: dict[str, Any] = {name: {d: {} for d in plan.datasets} for name in plan.learners}
    timings: dict[str, dict[str, float | None]] = {name: {} for name in plan.learners}
    overlays: dict[str, dict[str, str]] = {name: {} for name in plan.learners}
    work: dict[str, dict[str, float]] = {name: {} for name in plan.learners}
    for fold in plan.folds:  # folds in plan order, whatever order the tasks finished in
        for result in finished:
            task = result["task"]
            if task.fold != fold:
                continue
            timings[task.learner][fold] = result["train_seconds"]
            work[task.learner][fold] = result["work_seconds"]
            overlays[task.learner].update(result["overlays"])
            for dataset, by_shots in result["entries"].items():
                for shots, entry in by_shots.items():
                    slot = results[task.learner][dataset].setdefault(shots, {"per_fold": {}})
                    slot["per_fold"][fold] = entry
    share_fold_free(plan, results)
    for learner_results in results.values():
        for dataset_results in learner_results.values():
            for entry in dataset_results.values():
                entry.update(summarize_folds(entry["per_fold"]))
    return {
        "results": results,
        "train_seconds": timings,
        "overlays": overlays,
        "work_seconds": work,
        "seconds": time.perf_counter() - start,
        "jobs": min(jobs, len(tasks)),
    }
