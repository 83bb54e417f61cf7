"""Plain-text tables for the terminal and the evaluation report file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewseg.fileio import write_json


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


def score_text(report: dict[str, Any], key: str) -> str:
    std = report.get(f"{key}_std")
    return f"{report[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def evaluation_summary(report: dict[str, Any]) -> str:
    s = report["settings"]
    seeds = ",".join(str(x) for x in s["seeds"])
    title = (
        f"{s['learner']['learner']} on {s['dataset']} — fold {s['fold']} "
        f"({report['fold_convention']}), {s['shots']}-shot, {s['episodes']} episodes, "
        f"seed {seeds}, {s['image_size']}x{s['image_size']}"
    )
    rows = sorted(report["per_class"].items())
    table = format_table(["class", "IoU %"], rows)
    lines = [title, "", table, ""]
    if report["classes_left_out"]:
        left = ", ".join(f"{n} ({k} images)" for n, k in report["classes_left_out"].items())
        lines.append(f"left out (fewer than {s['shots'] + 1} images): {left}")
    lines.append(
        f"mIoU {score_text(report, 'miou')}   FB-IoU {score_text(report, 'fbiou')}   "
        f"({report['seconds']:.1f} s)"
    )
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    path = Path(out_dir) / "report.json"
    write_json(path, report)
    return path
