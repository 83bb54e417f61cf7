"""Figures: metrics parsing, image helpers, and that the plots render and clean up."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from fewseg.engine.figures import (
    CURVES_INCHES,
    DPI,
    EpisodeRow,
    denormalize,
    episode_row,
    grid_size_px,
    outline,
    outline_width,
    overlay,
    plot_episode_grid,
    plot_learning_curves,
    read_metrics,
    series_colors,
)
from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.episodes.transforms import IMAGENET_MEAN, IMAGENET_STD
from fewseg.errors import FewSegError


def write_run(run_dir: Path, records: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (run_dir / "metrics.jsonl").write_text(lines)
    return run_dir


def curve_records(scale: float) -> list[dict]:
    records = []
    for step in range(10, 210, 10):
        records.append(
            {"step": step, "train/loss": scale / (1 + step / 50), "time/seconds": step * 0.5}
        )
        if step % 50 == 0:
            records.append({"step": step, "val/miou": 20 + 30 * scale * step / 200})
    return records


def assert_png_drawn(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGB", "RGBA")
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_read_metrics_series(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "train/loss": 0.22, "train/support_loss": 0.43, "time/seconds": 90.9}\n'
        '{"step": 10, "val/miou": 1.4}\n'
        "\n"
        '{"step": 20, "train/loss": 0.2, "train/support_loss": 0.4, "time/seconds": 181}\n'
    )
    assert read_metrics(tmp_path) == {
        "train/loss": [(10, 0.22), (20, 0.2)],
        "train/support_loss": [(10, 0.43), (20, 0.4)],
        "time/seconds": [(10, 90.9), (20, 181.0)],
        "val/miou": [(10, 1.4)],
    }


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"step": 20, "train/loss": 0.2',
        "[1, 2]",
        '{"train/loss": 0.2}',
        '{"step": "20", "train/loss": 0.2}',
        '{"step": 20, "train/loss": "low"}',
    ],
)
def test_read_metrics_malformed_line_named(tmp_path: Path, bad_line: str) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "train/loss": 0.22}\n{"step": 10, "val/miou": 1.4}\n' + bad_line + "\n"
    )
    with pytest.raises(FewSegError, match=r"metrics\.jsonl, line 3"):
        read_metrics(tmp_path)


def test_read_metrics_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FewSegError, match=r"metrics\.jsonl"):
        read_metrics(tmp_path / "nowhere")


def test_denormalize_inverts_imagenet_normalisation() -> None:
    values = (12, 130, 250)
    image = torch.empty(3, 4, 5)
    for c, v in enumerate(values):
        image[c] = (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    out = denormalize(image)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert np.abs(out.astype(int) - np.array(values)).max() <= 1


def test_denormalize_clips_out_of_range() -> None:
    image = torch.full((3, 2, 2), 100.0)
    image[1] = -100.0
    out = denormalize(image)
    assert (out[..., 0] == 255).all() and (out[..., 1] == 0).all()


def test_overlay_outline_interior_and_outside() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    mask = np.zeros((12, 14), bool)
    mask[3:9, 4:11] = True
    color, alpha = (200, 10, 60), 0.3
    original = image.copy()
    out = overlay(image, mask, color, alpha)
    assert np.array_equal(image, original)

    edge = outline(mask)
    interior = mask & ~edge
    expected_edge = mask.copy()
    expected_edge[4:8, 5:10] = False
    assert np.array_equal(edge, expected_edge)

    assert np.array_equal(out[~mask], image[~mask])
    assert (out[edge] == np.array(color, np.uint8)).all()
    mix = np.round((1 - alpha) * image[interior].astype(float) + alpha * np.array(color))
    assert np.array_equal(out[interior], mix.astype(np.uint8))


def test_outline_at_image_border() -> None:
    mask = np.ones((4, 4), bool)
    expected = np.ones((4, 4), bool)
    expected[1:3, 1:3] = False
    assert np.array_equal(outline(mask), expected)


def test_outline_width_band_and_scaling() -> None:
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True  # 7x7: a 2-px band leaves the 3x3 centre
    expected = mask.copy()
    expected[3:6, 3:6] = False
    assert np.array_equal(outline(mask, 2), expected)
    assert outline_width(300, 200) == 1
    assert outline_width(600, 1000) == 4  # 1000 / 250


def test_overlay_outline_is_thicker_on_a_large_image() -> None:
    image = np.zeros((1000, 800, 3), np.uint8)
    mask = np.zeros((1000, 800), bool)
    mask[100:900, 100:700] = True
    out = overlay(image, mask, (255, 0, 0), alpha=0.0)
    assert (out[500, 100:104] == (255, 0, 0)).all()  # 4 px of outline
    assert (out[500, 104] == 0).all()


def test_plot_learning_curves(tmp_path: Path) -> None:
    runs = {
        "maml": write_run(tmp_path / "maml", curve_records(1.0)),
        "protonet": write_run(tmp_path / "protonet", curve_records(0.6)),
        "no-val": write_run(
            tmp_path / "no-val", [r for r in curve_records(0.8) if "train/loss" in r]
        ),
    }
    out = plot_learning_curves(runs, tmp_path / "figs" / "curves.png")
    assert out == tmp_path / "figs" / "curves.png"
    assert_png_drawn(out, (round(CURVES_INCHES[0] * DPI), round(CURVES_INCHES[1] * DPI)))
    assert plt.get_fignums() == []
    assert not list((tmp_path / "figs").glob(".*.tmp"))


def disc(size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (y - center[0]) ** 2 + (x - center[1]) ** 2 < radius**2


def example_rows(size: int = 48) -> list[EpisodeRow]:
    rng = np.random.default_rng(1)
    rows = []
    for index, shots in enumerate((1, 3)):
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(shots + 1)]
        masks = [disc(size, rng.uniform(12, 36, 2), rng.uniform(6, 14)) for _ in range(shots + 1)]
        prediction = np.roll(masks[-1], 4, axis=1)
        rows.append(
            EpisodeRow(
                f"episode {index}", images[:-1], masks[:-1], images[-1], masks[-1], prediction
            )
        )
    return rows


def test_plot_episode_grid(tmp_path: Path) -> None:
    rows = example_rows()
    out = plot_episode_grid(rows, tmp_path / "grid.png")
    assert_png_drawn(out, grid_size_px(len(rows)))
    assert plt.get_fignums() == []


def test_episode_row_iou_ignores_ignored_pixels() -> None:
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    prediction = np.zeros((4, 4), bool)
    prediction[:3] = True
    image = np.zeros((4, 4, 3), np.uint8)
    row = EpisodeRow("r", [image], [truth], image, truth, prediction)
    assert row.iou() == pytest.approx(8 / 12)
    row.query_ignore = np.zeros((4, 4), bool)
    row.query_ignore[2] = True
    assert row.iou() == 1.0
    assert EpisodeRow("e", [image], [truth], image, ~truth & truth, ~truth & truth).iou() is None


def test_episode_row_from_tensors() -> None:
    k, h, w = 2, 6, 7
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    pixels = torch.randint(0, 256, (k + 1, 3, h, w))
    normalised = (pixels / 255 - mean) / std
    masks = (torch.rand(k + 1, h, w) > 0.5).float()
    ignore = torch.zeros(h, w, dtype=torch.bool)
    episode = EpisodeTensors(
        class_index=3,
        support=LabelledImages(normalised[:k], masks[:k], torch.zeros(k, h, w, dtype=torch.bool)),
        query=LabelledImages(normalised[k:], masks[k:], ignore[None]),
    )
    logits = torch.stack([torch.zeros(h, w), masks[k] * 2 - 1])[None]
    row = episode_row("class 3", episode, logits)
    assert row.title == "class 3"
    assert len(row.support_images) == k and len(row.support_masks) == k
    assert row.support_masks[0].dtype == bool
    assert np.abs(row.query_image.astype(int) - pixels[k].permute(1, 2, 0).numpy()).max() <= 1
    assert np.array_equal(row.prediction, masks[k].bool().numpy())
    assert row.iou() == 1.0 or not masks[k].any()
    same = episode_row("class 3", episode, masks[k].bool())
    assert np.array_equal(same.prediction, row.prediction)
    with pytest.raises(ValueError, match="shape"):
        episode_row("bad", episode, torch.zeros(h + 1, w, dtype=torch.bool))


@pytest.mark.parametrize("count", [1, 10, 11, 20, 23])
def test_every_series_gets_a_colour_of_its_own(count: int) -> None:
    from matplotlib.colors import to_rgba

    colors = [to_rgba(c) for c in series_colors(count)]
    assert len(set(colors)) == count
    if count <= 10:  # matplotlib's default cycle, as figures had before
        assert series_colors(count) == [f"C{i}" for i in range(count)]
