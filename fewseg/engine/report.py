"""Evaluation reports: typed records, turned into JSON only when written; text tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fewseg.errors import FewSegError
from fewseg.fileio import write_json

REPORT_NAME = "report.json"


@dataclass(frozen=True)
class SeedResult:
    """The scores of one fixed episode list."""

    seed: int
    miou: float  # percent
    fbiou: float  # percent
    per_class: dict[str, float]  # class name → IoU in percent
    seconds: float
    boundary_iou: float | None = None  # percent (None: a report of fewseg before 0.3)
    per_class_boundary: dict[str, float] = field(default_factory=dict)  # name → boundary IoU %


@dataclass(frozen=True)
class ReportSettings:
    """What was evaluated, and how."""

    dataset: str  # the spec
    source: dict[str, Any]  # the source's own settings
    fold: str
    shots: int
    episodes: int
    seeds: list[int]
    image_size: int
    scored_at: str
    learner: dict[str, Any]  # Learner.settings()
    device: str
    trained: dict[str, Any] | None = None  # checkpoint, step, training config
    missing_classes: str = "skip"  # test classes with no scored episode: skipped, or IoU 0
    precision: str = "fp32"  # fp32, or the autocast dtype (bf16, fp16)
    inference: dict[str, Any] | None = None  # fewseg.refinement.InferenceOptions, as a dict
    min_class_images: int = 0  # test classes with fewer usable images were left out

    @property
    def images_needed(self) -> int:
        """Usable images a test class needed to be evaluated: a K-shot episode's K + 1, or
        ``min_class_images`` when that is more."""
        return max(self.shots + 1, self.min_class_images)


@dataclass(frozen=True)
class EvaluationReport:
    """``report.json``: the settings and the scores (mean over seeds; population std when
    there are several), each seed's run, and which classes were used. ``boundary_iou`` is
    the mean over classes of the Boundary IoU (fewseg.metrics), in percent like the others.

    ``classes_without_episodes`` names usable test classes that no episode drew (possible
    with few episodes): mIoU averages only the classes that were scored, unless
    ``settings.missing_classes`` is ``zero`` (every test class of the fold, IoU 0 for those
    unscored)."""

    fewseg_version: str
    settings: ReportSettings
    miou: float
    fbiou: float
    per_class: dict[str, float]
    seconds: float
    runs: list[SeedResult]
    fold_convention: str
    classes_used: list[str]
    classes_left_out: dict[str, int]  # class name → usable images
    classes_without_episodes: list[str]
    meta_train_classes: list[str]
    miou_std: float | None = None
    fbiou_std: float | None = None
    boundary_iou: float | None = None  # None: a report of fewseg before 0.3
    boundary_iou_std: float | None = None
    per_class_boundary: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object (key order as written since fewseg 0.1, then the boundary IoU;
        the stds only with several seeds, the training record only for a trained learner,
        the inference options only when set)."""
        data = asdict(self)
        settings = data.pop("settings")
        for optional in ("trained", "inference"):
            if settings[optional] is None:
                del settings[optional]
        stds = {k: data.pop(k) for k in ("miou_std", "fbiou_std")}
        ordered: dict[str, Any] = {
            "fewseg_version": data.pop("fewseg_version"),
            "settings": settings,
            "miou": data.pop("miou"),
            "fbiou": data.pop("fbiou"),
        }
        ordered.update({k: v for k, v in stds.items() if v is not None})
        ordered["boundary_iou"] = data.pop("boundary_iou")
        if (std := data.pop("boundary_iou_std")) is not None:
            ordered["boundary_iou_std"] = std
        return {**ordered, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str | Path = REPORT_NAME) -> EvaluationReport:
        try:
            settings = ReportSettings(**data["settings"])
            runs = [SeedResult(**run) for run in data["runs"]]
            names = {f.name for f in fields(cls)} - {"settings", "runs"}
            values = {k: v for k, v in data.items() if k in names}
            return cls(settings=settings, runs=runs, **values)
        except (KeyError, TypeError) as exc:
            raise FewSegError(f"{path}: not a fewseg evaluation report ({exc})") from None


def write_report(out_dir: str | Path, report: EvaluationReport) -> Path:
    path = Path(out_dir) / REPORT_NAME
    write_json(path, report.to_json())
    return path


def read_report(path: str | Path) -> EvaluationReport:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FewSegError(f"{path}: cannot read report ({exc})") from None
    return EvaluationReport.from_json(data, path)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Text left-aligned, numbers right-aligned; floats with one decimal."""

    def cell(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(headers))
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def score_text(value: float, std: float | None) -> str:
    return f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def evaluation_summary(report: EvaluationReport) -> str:
    s = report.settings
    seeds = ",".join(str(x) for x in s.seeds)
    title = (
        f"{s.learner['learner']} on {s.dataset} — fold {s.fold} "
        f"({report.fold_convention}), {s.shots}-shot, {s.episodes} episodes, "
        f"seed {seeds}, {s.image_size}x{s.image_size}"
    )
    rows = [
        [name, iou, report.per_class_boundary.get(name, float("nan"))]
        for name, iou in sorted(report.per_class.items())
    ]
    table = format_table(["class", "IoU %", "boundary IoU %"], rows)
    lines = [title]
    if s.inference:
        lines.append("inference: " + ", ".join(f"{k} {v}" for k, v in s.inference.items()))
    lines += ["", table, ""]
    if report.classes_left_out:
        left = ", ".join(f"{n} ({k} images)" for n, k in report.classes_left_out.items())
        lines.append(f"left out (fewer than {s.images_needed} images): {left}")
    if s.missing_classes == "zero" and (report.classes_left_out or report.classes_without_episodes):
        lines.append("classes without episodes count as IoU 0 in mIoU")
    if s.scored_at.startswith("original"):
        lines.append("scored at each query's original size")
    lines.append(
        f"mIoU {score_text(report.miou, report.miou_std)}   "
        f"FB-IoU {score_text(report.fbiou, report.fbiou_std)}   "
        + (
            f"boundary IoU {score_text(report.boundary_iou, report.boundary_iou_std)}   "
            if report.boundary_iou is not None
            else ""
        )
        + f"({report.seconds:.1f} s)"
    )
    return "\n".join(lines)
