"""The demo: meta-train every learner on one dataset, evaluate all on unseen classes,
print one table and write a report directory (markdown, learning curves, overlays)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fewseg.data.source import SegmentationSource
from fewseg.data.spec import open_source
from fewseg.engine.checkpoint import checkpoint_path, read_checkpoint
from fewseg.engine.config import TRAIN_FIELDS, TrainConfig, read_yaml, resolve_config
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.figures import episode_row, plot_episode_grid, plot_learning_curves
from fewseg.engine.loading import load_learner
from fewseg.engine.report import EvaluationReport, format_table, write_report
from fewseg.engine.scoring import foreground_prediction
from fewseg.engine.train import check_same_run, train
from fewseg.episodes.sampler import episode_plan
from fewseg.episodes.tensors import load_resized_episode
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write, write_json
from fewseg.learners.base import LEARNERS, Learner, LearnerOptions
from fewseg.models.backbones import BACKBONES
from fewseg.options import field_names, options_from


@dataclass
class DemoPlan:
    dataset: str
    fold: str
    train: dict[str, Any]
    learners: dict[str, dict[str, Any]]
    shots: list[int]
    episodes: int
    seed: int
    overlay_episodes: int = 4
    source_file: str = "demo.yaml"

    def learner_of(self, entry: str) -> str:
        """The registered learner an entry of ``learners`` runs: its ``learner`` option, or
        the entry's own name (``protonet-corr: {learner: protonet, model: correlation}``)."""
        return str(self.learners[entry].get("learner", entry))


@dataclass
class LearnerResult:
    name: str
    train_seconds: float | None
    reports: dict[int, EvaluationReport] = field(default_factory=dict)


def read_plan(path: str | Path) -> DemoPlan:
    values = read_yaml(path)
    try:
        evaluation = values["evaluate"]
        plan = DemoPlan(
            dataset=str(values["dataset"]),
            fold=str(values.get("fold", "0")),
            train=dict(values.get("train") or {}),
            learners={k: dict(v or {}) for k, v in values["learners"].items()},
            shots=[int(k) for k in evaluation["shots"]],
            episodes=int(evaluation["episodes"]),
            seed=int(evaluation.get("seed", 0)),
            overlay_episodes=int(evaluation.get("overlay_episodes", 4)),
            source_file=str(path),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FewSegError(f"{path}: not a demo plan ({exc})") from None
    check_plan_options(plan)
    return plan


def check_plan_options(plan: DemoPlan) -> None:
    """Every shared ``train`` option is a training option or an option of some learner of
    the plan (each learner takes those it has), and every entry's options resolve: a typo
    in the last entry is an error before the first one trains."""
    known = set(TRAIN_FIELDS)
    for name in plan.learners:
        known |= field_names(LEARNERS.get(plan.learner_of(name)).Options)
    unknown = sorted(set(plan.train) - known)
    if unknown:
        raise FewSegError(
            f"{plan.source_file}: train: unknown option(s) {', '.join(unknown)} "
            "(neither training options nor any learner's)"
        )
    for name in plan.learners:
        entry_options(plan, name)


def learner_values(plan: DemoPlan, name: str) -> dict[str, Any]:
    """Entry ``name``'s learner options in the plan: the shared ones its learner has, then
    the entry's own."""
    own = field_names(LEARNERS.get(plan.learner_of(name)).Options)
    shared = {k: v for k, v in plan.train.items() if k in own}
    entry = {k: v for k, v in plan.learners[name].items() if k != "learner"}
    return {**shared, **entry}


def entry_options(plan: DemoPlan, name: str) -> tuple[TrainConfig | None, LearnerOptions]:
    """Entry ``name``'s training settings (None for a training-free learner) and learner
    options, checked."""
    learner = plan.learner_of(name)
    source = f"{plan.source_file} ({name})"
    try:
        config = None
        if LEARNERS.get(learner).trainable:
            shared = {k: v for k, v in plan.train.items() if k in TRAIN_FIELDS}
            values = {**shared, **learner_values(plan, name), "learner": learner}
            values |= {"dataset": plan.dataset, "fold": plan.fold}
            config, options = resolve_config(values, {}, source)
        else:
            options_class = LEARNERS.get(learner).Options
            options = options_from(options_class, learner_values(plan, name), source, learner)
        BACKBONES.get(options.backbone)
    except FewSegError as exc:
        if str(exc).startswith(source):
            raise
        raise FewSegError(f"{source}: {exc}") from None
    return config, options


def train_learner(plan: DemoPlan, name: str, out: Path, progress: bool) -> tuple[Learner, float]:
    config, options = entry_options(plan, name)
    assert config is not None  # a trainable learner's entry
    run_dir = out / "train" / name
    # A finished run is reused and an interrupted one continues from its checkpoint, exactly
    # as if it had not stopped; one with other settings is refused with the setting named.
    resume = checkpoint_path(run_dir).exists()
    if resume:
        state = read_checkpoint(run_dir)
        if state["step"] >= config.steps:
            check_same_run(state, config, options, checkpoint_path(run_dir))
            loaded = load_learner(run_dir, state=state)
            return loaded.learner, state["extra"].get("seconds", 0.0)
    summary = train(config, options, run_dir, resume=resume, progress=progress)
    state = read_checkpoint(run_dir)  # its seconds: the same figure a reuse reports
    loaded = load_learner(run_dir, state=state)
    return loaded.learner, state["extra"].get("seconds", summary["seconds"])


def prepare_learner(
    plan: DemoPlan, name: str, out: Path, progress: bool
) -> tuple[Learner, float | None]:
    """A training-free learner as built, or a trainable one meta-trained into ``out/train``
    (with its training seconds)."""
    torch.manual_seed(plan.seed)
    learner = plan.learner_of(name)
    if LEARNERS.get(learner).trainable:
        return train_learner(plan, name, out, progress)
    return load_learner(learner, options=learner_values(plan, name)).learner, None


def overlay_grid(
    learner: Learner,
    source: SegmentationSource,
    plan: DemoPlan,
    shots: int,
    size: int,
    out_png: Path,
) -> Path:
    """Support / query / prediction for the first episodes of the evaluation list."""
    split = source.fold_split(plan.fold)
    episodes = episode_plan(source, split.test, shots, plan.overlay_episodes, plan.seed)
    rows = []
    learner.eval()
    for episode in episodes.episodes:
        tensors = load_resized_episode(source, episode, size)
        logits = learner.adapt(tensors.support)(tensors.query.images)
        title = f"{source.class_name(episode.class_index)}"
        rows.append(episode_row(title, tensors, foreground_prediction(logits)[0]))
    return plot_episode_grid(rows, out_png)


def run_demo(plan: DemoPlan, out: str | Path, progress: bool = True) -> list[LearnerResult]:
    out = Path(out)
    source = open_source(plan.dataset)
    size = int(plan.train.get("size") or source.default_size)
    results: list[LearnerResult] = []
    for name in plan.learners:
        learner, seconds = prepare_learner(plan, name, out, progress)
        result = LearnerResult(name, seconds)
        for shots in plan.shots:
            settings = EvaluationSettings(plan.fold, shots, plan.episodes, size, progress=progress)
            report = evaluate(learner, source, plan.dataset, settings, [plan.seed])
            write_report(out / "eval" / f"{name}-{shots}shot", report)
            result.reports[shots] = report
        overlay_grid(
            learner, source, plan, plan.shots[0], size, out / "figures" / f"overlays-{name}.png"
        )
        results.append(result)
        print(
            f"{name}: "
            + ", ".join(f"{k}-shot mIoU {r.miou:.1f}" for k, r in result.reports.items()),
            flush=True,
        )
    trained = {r.name: out / "train" / r.name for r in results if r.train_seconds is not None}
    if trained:
        plot_learning_curves(trained, out / "figures" / "learning-curves.png")
    write_demo_report(plan, results, out)
    return results


def results_table(plan: DemoPlan, results: list[LearnerResult]) -> str:
    headers = ["learner"]
    for k in plan.shots:
        headers += [f"{k}-shot mIoU", f"{k}-shot FB-IoU"]
    headers.append("train s")
    rows = []
    for r in results:
        row: list[Any] = [r.name]
        for k in plan.shots:
            row += [r.reports[k].miou, r.reports[k].fbiou]
        row.append(f"{r.train_seconds:.0f}" if r.train_seconds is not None else "-")
        rows.append(row)
    return format_table(headers, rows)


def write_demo_report(plan: DemoPlan, results: list[LearnerResult], out: Path) -> None:
    table = results_table(plan, results)
    first = results[0].reports[plan.shots[0]]
    lines = [
        "# fewseg demo",
        "",
        f"Dataset `{plan.dataset}`, fold {plan.fold} ({first.fold_convention}): meta-trained on "
        f"{len(first.meta_train_classes)} classes, evaluated on {len(first.classes_used)} "
        f"classes never seen in training: {', '.join(first.classes_used)}.",
        f"Evaluation: {plan.episodes} episodes per setting, seed {plan.seed}, "
        f"{first.settings.image_size}x{first.settings.image_size} px; "
        "mIoU and FB-IoU in percent (HSNet/PFENet protocol).",
        "",
        "```",
        table,
        "```",
        "",
        "Training settings: " + ", ".join(f"{k}={v}" for k, v in plan.train.items()),
        "",
        *(f"- `{name}`: {opts or 'defaults'}" for name, opts in plan.learners.items()),
        "",
        "## Learning curves",
        "",
        "![learning curves](figures/learning-curves.png)",
        "",
        "## Episodes (support / query ground truth / prediction)",
        "",
        *(f"### {r.name}\n\n![{r.name}](figures/overlays-{r.name}.png)\n" for r in results),
    ]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "README.md", lambda handle: handle.write(text.encode()))
    write_json(
        out / "results.json",
        {
            r.name: {
                "train_seconds": r.train_seconds,
                **{f"{k}shot": {"miou": v.miou, "fbiou": v.fbiou} for k, v in r.reports.items()},
            }
            for r in results
        },
    )
    print(table)
    print(f"report: {out / 'README.md'}")
