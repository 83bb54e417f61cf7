"""Figures: learning curves from ``metrics.jsonl`` and episode grids (support, truth, prediction).

Everything draws on a standalone ``Figure`` with the Agg canvas, so no pyplot state is
created or left behind, and no display is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fewseg.episodes.tensors import EpisodeTensors
from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write

DPI = 100
CURVES_INCHES = (12.0, 5.0)
GRID_CELL_INCHES = 3.0
GRID_HEADER_INCHES = 0.4
GRID_LABEL_INCHES = 0.4

SUPPORT_COLOR = (0, 220, 0)
TRUTH_COLOR = (0, 120, 255)
PREDICTION_COLOR = (255, 40, 40)

Color = tuple[int, int, int]


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Series name → [(step, value)] in file order, from ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FewSegError(f"no metrics file {path} (is {run_dir} a training run directory?)")
    series: dict[str, list[tuple[int, float]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FewSegError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise FewSegError(f"{where}: expected a JSON object, got {type(record).__name__}")
        step = record.pop("step", None)
        if not isinstance(step, int) or isinstance(step, bool):
            raise FewSegError(f"{where}: missing or non-integer 'step'")
        for name, value in record.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise FewSegError(f"{where}: value of {name!r} is not a number: {value!r}")
            series.setdefault(name, []).append((step, float(value)))
    return series


def series_colors(count: int) -> list[Any]:
    """``count`` distinct colours: matplotlib's default cycle (C0..C9) up to ten, else the
    20 of ``tab20``, else samples of ``turbo`` (a repeated colour would make two legend
    entries one)."""
    from matplotlib import colormaps

    if count <= 10:
        return [f"C{i}" for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / (count - 1)) for i in range(count)]


def plot_learning_curves(runs: dict[str, Path], out_png: Path) -> Path:
    """Training loss (left) and validation mIoU (right) against step, one line per run."""
    if not runs:
        raise FewSegError("no runs to plot")
    metrics = {name: read_metrics(run_dir) for name, run_dir in runs.items()}
    fig = Figure(figsize=CURVES_INCHES, dpi=DPI, layout="constrained")
    loss_ax, miou_ax = fig.subplots(1, 2)
    colors = series_colors(len(runs))
    has_validation = False
    for (name, series), color in zip(metrics.items(), colors, strict=True):
        if loss := series.get("train/loss"):
            steps, values = zip(*loss, strict=True)
            loss_ax.plot(steps, values, color=color, linewidth=1.5, label=name)
        if miou := series.get("val/miou"):
            has_validation = True
            steps, values = zip(*miou, strict=True)
            miou_ax.plot(steps, values, color=color, marker="o", markersize=4, label=name)
    _style(loss_ax, "training loss", "loss")
    _style(miou_ax, "validation mIoU", "mIoU (%)")
    if not has_validation:
        miou_ax.text(
            0.5,
            0.5,
            "no validation records",
            ha="center",
            va="center",
            transform=miou_ax.transAxes,
            color="gray",
        )
    names = ": " + ", ".join(runs) if len(runs) <= 4 else ""
    fig.suptitle(f"Learning curves{names}", fontsize=13)
    return _save(fig, out_png)


def _style(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised [3,H,W] float → H×W×3 uint8 (clipped to [0, 255])."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image [3,H,W], got shape {tuple(image.shape)}")
    pixels = image.detach().to("cpu", torch.float64).numpy().transpose(1, 2, 0)
    pixels = pixels * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)


OUTLINE_FRACTION = 1 / 250  # the outline's width: this fraction of the image's longer side


def outline_width(height: int, width: int) -> int:
    """The overlay outline's width in pixels: 1 up to 375 px, then growing with the image
    (4 px at 1000 px), so it stays visible on a full-size photo."""
    return max(1, round(max(height, width) * OUTLINE_FRACTION))


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner boundary band ``width`` px wide: mask pixels within ``width`` 4-neighbour
    steps of a pixel outside the mask (or the image)."""
    inside = mask.astype(bool)
    eroded = inside
    for _ in range(width):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return inside & ~eroded


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: Color,
    alpha: float = 0.5,
    width: int | None = None,
) -> np.ndarray:
    """Blend ``color`` into the mask region at ``alpha`` and draw its outline opaquely,
    ``width`` px wide (default :func:`outline_width` of the image)."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
    mask = mask.astype(bool)
    rgb = np.asarray(color, dtype=np.float64)
    out = image.copy()
    blended = (1.0 - alpha) * image[mask].astype(np.float64) + alpha * rgb
    out[mask] = np.round(blended).astype(np.uint8)
    band = outline(mask, outline_width(*mask.shape) if width is None else width)
    out[band] = np.asarray(color, dtype=np.uint8)
    return out


@dataclass
class EpisodeRow:
    """One episode to draw: uint8 H×W×3 images and bool H×W masks.

    ``query_ignore`` (optional) marks pixels left out of the IoU, as in the evaluation protocol.
    """

    title: str
    support_images: list[np.ndarray]
    support_masks: list[np.ndarray]
    query_image: np.ndarray
    query_mask: np.ndarray
    prediction: np.ndarray
    query_ignore: np.ndarray | None = None

    def iou(self) -> float | None:
        """Foreground IoU of the prediction (fraction), or None when both masks are empty."""
        valid = (
            np.ones_like(self.query_mask, bool) if self.query_ignore is None else ~self.query_ignore
        )
        prediction = self.prediction.astype(bool) & valid
        truth = self.query_mask.astype(bool) & valid
        union = int((prediction | truth).sum())
        return None if union == 0 else int((prediction & truth).sum()) / union


def grid_size_px(n_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that ``plot_episode_grid`` writes for n rows."""
    width = GRID_LABEL_INCHES + 3 * GRID_CELL_INCHES
    height = GRID_HEADER_INCHES + n_rows * GRID_CELL_INCHES
    return round(width * DPI), round(height * DPI)


def plot_episode_grid(rows: Sequence[EpisodeRow], out_png: Path) -> Path:
    """One row per episode: support with mask (green), query with truth (blue) and prediction
    (red, IoU in its title). With K > 1 shots only the first support image is shown."""
    if not rows:
        raise ValueError("no episodes to plot")
    width, height = grid_size_px(len(rows))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    label, cell = GRID_LABEL_INCHES / (width / DPI), GRID_CELL_INCHES / (width / DPI)
    header = GRID_HEADER_INCHES / (height / DPI)
    row_height = GRID_CELL_INCHES / (height / DPI)
    for column, text in enumerate(("support", "query: ground truth", "query: prediction")):
        fig.text(
            label + (column + 0.5) * cell,
            1 - header / 2,
            text,
            ha="center",
            va="center",
            fontsize=13,
            fontweight="bold",
        )
    for index, row in enumerate(rows):
        bottom = 1 - header - (index + 1) * row_height
        fig.text(
            label / 2,
            bottom + row_height / 2,
            row.title,
            rotation=90,
            ha="center",
            va="center",
            fontsize=11,
        )
        shots = len(row.support_images)
        iou = row.iou()
        panels = (
            (
                overlay(row.support_images[0], row.support_masks[0], SUPPORT_COLOR),
                f"shot 1 (+{shots - 1} more)" if shots > 1 else "1 shot",
            ),
            (overlay(row.query_image, row.query_mask, TRUTH_COLOR), ""),
            (
                overlay(row.query_image, row.prediction, PREDICTION_COLOR),
                "IoU: n/a (both empty)" if iou is None else f"IoU {100 * iou:.1f}%",
            ),
        )
        for column, (image, title) in enumerate(panels):
            # A 4% margin in each cell leaves room for the panel title.
            ax = fig.add_axes(
                (
                    label + (column + 0.04) * cell,
                    bottom + 0.02 * row_height,
                    0.92 * cell,
                    0.86 * row_height,
                )
            )
            ax.imshow(image, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=10, pad=3)
    return _save(fig, out_png)


def episode_row(title: str, episode: EpisodeTensors, prediction: torch.Tensor) -> EpisodeRow:
    """Build a row from an episode's tensors and the learner's output for its query.

    ``prediction`` is a foreground map [H,W] or [1,H,W] (bool or {0,1}), or logits
    [2,H,W] or [1,2,H,W] (background, foreground) as a predictor returns them.
    """
    prediction = prediction.detach().cpu()
    if prediction.ndim == 4 and prediction.shape[0] == 1:
        prediction = prediction[0]
    if prediction.ndim == 3 and prediction.is_floating_point() and prediction.shape[0] == 2:
        prediction = prediction[1] > prediction[0]
    elif prediction.ndim == 3 and prediction.shape[0] == 1:
        prediction = prediction[0]
    query = episode.query
    if prediction.shape != query.masks[0].shape:
        raise ValueError(
            f"prediction shape {tuple(prediction.shape)} does not match the query mask "
            f"{tuple(query.masks[0].shape)}"
        )
    support = episode.support
    return EpisodeRow(
        title=title,
        support_images=[denormalize(image) for image in support.images],
        support_masks=[_bool_mask(mask) for mask in support.masks],
        query_image=denormalize(query.images[0]),
        query_mask=_bool_mask(query.masks[0]),
        prediction=_bool_mask(prediction),
        query_ignore=query.ignore[0].detach().cpu().numpy().astype(bool),
    )


def _bool_mask(mask: torch.Tensor) -> np.ndarray:
    return (mask.detach().cpu() > 0.5).numpy() if mask.dtype != torch.bool else mask.cpu().numpy()


def plot_score_bars(
    scores: dict[str, dict[str, tuple[float, float]]], title: str, out_png: Path
) -> Path:
    """Grouped bars: ``scores[group][learner] = (mean, std)`` in percent, std as error bars."""
    groups = list(scores)
    learners = list(dict.fromkeys(name for g in groups for name in scores[g]))
    fig = Figure(
        figsize=(2.2 + 1.6 * len(groups) * max(1, len(learners)) / 3, 4.5),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.subplots()
    width = 0.8 / max(1, len(learners))
    colors = series_colors(len(learners))
    for i, name in enumerate(learners):
        xs = [g + (i - (len(learners) - 1) / 2) * width for g in range(len(groups))]
        means = [scores[group].get(name, (0.0, 0.0))[0] for group in groups]
        stds = [scores[group].get(name, (0.0, 0.0))[1] for group in groups]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name, color=colors[i])
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(3, len(learners)))
    return _save(fig, out_png)


def _save(fig: Figure, out_png: Path) -> Path:
    canvas = FigureCanvasAgg(fig)
    atomic_write(out_png, lambda handle: canvas.print_png(handle))
    return Path(out_png)


__all__ = [
    "EpisodeRow",
    "denormalize",
    "episode_row",
    "grid_size_px",
    "outline",
    "overlay",
    "plot_episode_grid",
    "plot_learning_curves",
    "plot_score_bars",
    "read_metrics",
]
