"""``fewseg segment``: mask encodings, image modes, output sizes, summary values, folders,
determinism, every learner."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from imagefiles import box_mask, files_under, save, scene, support_pair
from PIL import Image
from tiny_training import TINY_TRAINING, tiny_values

from fewseg.api import Model, resized_log_odds
from fewseg.apps.segment import (
    SegmentSettings,
    prepare_inputs,
    segment,
)
from fewseg.cli import main
from fewseg.data.user_images import decode_mask, read_support_pair
from fewseg.engine.config import resolve_config
from fewseg.engine.loading import LoadedLearner
from fewseg.engine.train import train
from fewseg.episodes.tensors import LabelledImages
from fewseg.learners.base import Learner, LearnerOptions, Predictor
from fewseg.refinement.options import PLAIN

SIZE = "64"


def run_segment(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["segment", "--size", SIZE, "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---- mask encodings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "foreground", "ignore", "encoding"),
    [
        ([0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], "0/1"),
        ([0, 255, 255, 0], [0, 1, 1, 0], [0, 0, 0, 0], "0/255"),
        ([0, 1, 255, 0], [0, 1, 0, 0], [0, 0, 1, 0], "0/1, 255 = ignore"),
        ([1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], "0/1"),
        ([255, 255, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], "0/255"),
    ],
)
def test_mask_encodings(
    values: list[int], foreground: list[int], ignore: list[int], encoding: str
) -> None:
    label = np.array(values, np.uint8).reshape(2, 2)
    fg, ig, name = decode_mask(label, "m.png")
    assert fg.tolist() == np.array(foreground, bool).reshape(2, 2).tolist()
    assert ig.tolist() == np.array(ignore, bool).reshape(2, 2).tolist()
    assert name == encoding


def test_each_mask_encoding_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _ = support_pair(tmp_path)
    box = (8, 12, 32, 36)
    zero_one = save(tmp_path / "m01.png", box_mask(64, 64, box, value=1))
    zero_255 = save(tmp_path / "m0255.png", box_mask(64, 64, box, value=255))
    with_ignore = box_mask(64, 64, box, value=1)
    with_ignore[40:44, :] = 255  # a 4-row ignore band
    ignore_mask = save(tmp_path / "mign.png", with_ignore)
    query = save(tmp_path / "q.png", scene(48, 48, (20, 20, 40, 44)))
    summaries = {}
    for mask in (zero_one, zero_255, ignore_mask):
        out = tmp_path / f"out-{mask.stem}"
        code, _, err = run_segment(
            capsys, "--support", str(image), str(mask), "--query", str(query), "--out", str(out)
        )
        assert (code, err) == (0, "")
        summaries[mask.stem] = read_summary(out)
    support = {name: s["support"][0] for name, s in summaries.items()}
    assert [support[n]["encoding"] for n in ("m01", "m0255", "mign")] == [
        "0/1",
        "0/255",
        "0/1, 255 = ignore",
    ]
    assert {support[n]["foreground_pixels"] for n in support} == {24 * 24}
    assert [support[n]["ignore_pixels"] for n in ("m01", "m0255", "mign")] == [0, 0, 4 * 64]
    # the same foreground in another encoding gives byte-identical output
    first = (tmp_path / "out-m01/masks/q.png").read_bytes()
    assert (tmp_path / "out-m0255/masks/q.png").read_bytes() == first


# ---- summary values, by hand ------------------------------------------------------------


class PatternLearner(Learner):
    """Logits chosen by the query's mean normalised value: a bright query is foreground
    everywhere with p_fg = 3/4, a dark one background everywhere with p_bg = 4/5, any
    other has its left half foreground and right half background with p = 9/10."""

    name = "pattern"
    trainable = False

    def adapt(self, support: LabelledImages) -> Predictor:
        def predict(images: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(images.shape[0], 2, *images.shape[-2:])
            half = images.shape[-1] // 2
            for i, level in enumerate(images.mean(dim=(1, 2, 3))):
                if level > 1:
                    logits[i, 1] = math.log(3)
                elif level < -1:
                    logits[i, 0] = math.log(4)
                else:
                    logits[i, 1, :, :half] = 2 * math.log(3)
                    logits[i, 1, :, half:] = -2 * math.log(3)
            return logits

        return predict


def test_summary_values_are_the_hand_computed_ones(tmp_path: Path) -> None:
    pair = read_support_pair(*support_pair(tmp_path))
    white = save(tmp_path / "white.png", np.full((6, 16, 3), 255, np.uint8))
    black = save(tmp_path / "black.png", np.zeros((6, 16, 3), np.uint8))
    gray = save(tmp_path / "gray.png", np.full((6, 16, 3), 128, np.uint8))
    inputs = prepare_inputs([pair], [white, black, gray], size=8)
    out = tmp_path / "out"
    model = Model(LoadedLearner(PatternLearner(LearnerOptions()), None), size=8, inference=PLAIN)
    summary = segment(model, inputs, out, SegmentSettings(2))
    assert summary == read_summary(out)
    queries = {Path(q["image"]).stem: q for q in summary["queries"]}
    assert [(q["width"], q["height"]) for q in queries.values()] == [(16, 6)] * 3
    assert queries["white"]["foreground_fraction"] == 1.0
    assert queries["white"]["mean_confidence"] == pytest.approx(0.75, rel=1e-6)
    assert queries["black"]["foreground_fraction"] == 0.0
    assert queries["black"]["mean_confidence"] == pytest.approx(0.8, rel=1e-6)
    # 8 → 16 columns (bilinear, half-pixel centres): output columns 7 and 8 mix input
    # columns 3 and 4 as 3:1 and 1:3, so their logit is ±log 3 (p = 3/4) and the other 14
    # keep ±2 log 3 (p = 9/10); columns 0-7 are foreground.
    assert queries["gray"]["foreground_fraction"] == 0.5
    assert queries["gray"]["mean_confidence"] == pytest.approx((14 * 0.9 + 2 * 0.75) / 16)
    expected = np.zeros((6, 16), np.uint8)
    expected[:, :8] = 255
    assert np.array_equal(read_mask(out / "masks/gray.png"), expected)
    assert np.array_equal(read_mask(out / "masks/white.png"), np.full((6, 16), 255))
    assert queries["gray"]["mask"] == "masks/gray.png"
    assert queries["gray"]["overlay"] == "overlays/gray.jpg"
    assert Image.open(out / "overlays/gray.jpg").size == (16, 6)
    assert summary["image_size"] == 8
    assert summary["support"][0]["foreground_pixels"] == 24 * 24
    assert set(summary["definitions"]) == {"mask", "foreground_fraction", "mean_confidence"}


# ---- image modes and sizes --------------------------------------------------------------


def test_grayscale_and_rgba_images_are_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = (8, 12, 32, 36)
    image = save(tmp_path / "gray-support.png", scene(64, 64, box), mode="L")
    mask = save(tmp_path / "gray-support-mask.png", box_mask(64, 64, box))
    queries = [
        save(tmp_path / "rgba.png", scene(40, 50, (5, 5, 25, 30)), mode="RGBA"),
        save(tmp_path / "gray.png", scene(30, 20, (5, 5, 15, 15)), mode="L"),
        save(tmp_path / "gray-alpha.png", scene(20, 30, (5, 5, 15, 15)), mode="LA"),
        save(tmp_path / "palette.png", scene(24, 24, (5, 5, 15, 15)), mode="P"),
    ]
    out = tmp_path / "out"
    code, _, err = run_segment(
        capsys,
        "--support", str(image), str(mask),
        "--query", *map(str, queries),
        "--out", str(out),
    )  # fmt: skip
    assert (code, err) == (0, "")
    sizes = {q.stem: Image.open(q).size for q in queries}
    for query in queries:
        assert Image.open(out / "masks" / f"{query.stem}.png").size == sizes[query.stem]
        assert Image.open(out / "overlays" / f"{query.stem}.jpg").mode == "RGB"


def test_output_masks_have_each_querys_own_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    shapes = {"wide": (30, 40), "tall": (57, 23), "square": (64, 64), "big": (150, 90)}
    queries = [
        save(tmp_path / f"{name}.jpg", scene(h, w, (h // 4, w // 4, h // 2, w // 2)))
        for name, (h, w) in shapes.items()
    ]
    out = tmp_path / "out"
    code, stdout, _ = run_segment(
        capsys, "--support", str(image), str(mask), "--query", *map(str, queries),
        "--out", str(out), "--batch-size", "3",
    )  # fmt: skip
    assert code == 0
    assert stdout.startswith("segmented 4 image(s) with baseline from 1 support example(s)")
    summary = read_summary(out)
    for query in summary["queries"]:
        h, w = shapes[Path(query["image"]).stem]
        assert (query["height"], query["width"]) == (h, w)
        mask_array = read_mask(out / query["mask"])
        assert mask_array.shape == (h, w) and mask_array.dtype == np.uint8
        assert set(np.unique(mask_array)) <= {0, 255}
        assert query["foreground_fraction"] == pytest.approx(np.mean(mask_array == 255))
        assert 0.5 <= query["mean_confidence"] <= 1.0


def test_baseline_finds_the_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, mask = support_pair(tmp_path)
    box = (32, 24, 56, 48)
    query = save(tmp_path / "query.png", scene(64, 64, box))
    out = tmp_path / "out"
    code, _, _ = run_segment(
        capsys, "--support", str(image), str(mask), "--query", str(query), "--out", str(out)
    )
    assert code == 0
    predicted = read_mask(out / "masks/query.png") == 255
    truth = box_mask(64, 64, box) == 255
    assert (predicted & truth).sum() / (predicted | truth).sum() > 0.5


# ---- folders, determinism, progress -----------------------------------------------------


def test_query_folder_skips_non_image_files_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path / "support")
    folder = tmp_path / "queries"
    save(folder / "b.jpg", scene(32, 32, (4, 4, 20, 20)))
    save(folder / "a.png", scene(32, 40, (4, 4, 20, 20)))
    (folder / "notes.txt").write_text("not an image")
    save(folder / ".hidden.png", scene(8, 8, (0, 0, 4, 4)))
    (folder / "sub").mkdir()
    out = tmp_path / "out"
    code, _, err = run_segment(
        capsys, "--support", str(image), str(mask), "--query", str(folder), "--out", str(out)
    )
    assert code == 0
    assert err.splitlines() == [f"fewseg: warning: {folder / 'notes.txt'}: not an image, skipped"]
    assert [q["image"] for q in read_summary(out)["queries"]] == [
        str(folder / "a.png"),
        str(folder / "b.jpg"),
    ]


@pytest.mark.parametrize("layout", ["flat", "subfolders"])
def test_support_dir_equals_support_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    pairs = tmp_path / "pairs"
    first = support_pair(pairs, "one")
    second = support_pair(pairs, "two")
    folder = tmp_path / "support"
    images, masks = (folder, folder) if layout == "flat" else (folder / "images", folder / "masks")
    for image, mask in (first, second):
        for source, target in ((image, images), (mask, masks)):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    query = save(tmp_path / "q.png", scene(40, 40, (10, 10, 30, 30)))
    flags = ["--query", str(query)]
    code, _, _ = run_segment(
        capsys, "--support", *map(str, first + second), *flags, "--out", str(tmp_path / "a")
    )
    assert code == 0
    code, _, _ = run_segment(
        capsys, "--support-dir", str(folder), *flags, "--out", str(tmp_path / "b")
    )
    assert code == 0
    support = read_summary(tmp_path / "b")["support"]
    assert [Path(s["image"]).name for s in support] == ["one.jpg", "two.jpg"]
    assert [Path(s["mask"]).name for s in support] == ["one.png", "two.png"]
    assert (tmp_path / "a/masks/q.png").read_bytes() == (tmp_path / "b/masks/q.png").read_bytes()


def test_segment_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, mask = support_pair(tmp_path)
    queries = [
        str(save(tmp_path / f"q{i}.png", scene(40 + i, 50, (5 * i, 5, 5 * i + 20, 30))))
        for i in range(3)
    ]
    for out in ("first", "second"):
        code, _, _ = run_segment(
            capsys, "--support", str(image), str(mask), "--query", *queries,
            "--out", str(tmp_path / out), "--seed", "3",
        )  # fmt: skip
        assert code == 0
    first, second = files_under(tmp_path / "first"), files_under(tmp_path / "second")
    assert [p.relative_to(tmp_path / "first") for p in first] == [
        p.relative_to(tmp_path / "second") for p in second
    ]
    assert len([p for p in first if p.is_file()]) == 7  # 3 masks, 3 overlays, summary
    for a, b in zip(first, second, strict=True):
        if a.is_file():
            assert a.read_bytes() == b.read_bytes(), a.name


def test_progress_bar_only_for_many_queries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    queries = [str(save(tmp_path / f"q{i}.png", scene(16, 16, (0, 0, 8, 8)))) for i in range(3)]
    base = ["segment", "--size", SIZE, "--support", str(image), str(mask), "--query"]
    assert main([*base, *queries, "--batch-size", "2", "--out", str(tmp_path / "a")]) == 0
    assert "segment: 100%" in capsys.readouterr().err  # 3 queries > one batch
    assert main([*base, *queries, "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""  # one batch: no bar


# ---- every learner ----------------------------------------------------------------------

TINY = {**TINY_TRAINING, "steps": 2, "size": 48}


@pytest.mark.parametrize("learner", ["maml", "fomaml", "reptile", "protonet", "finetune"])
def test_every_trained_learner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], learner: str
) -> None:
    config, options = resolve_config(tiny_values(learner, steps=2, size=48), {})
    train(config, options, tmp_path / "run", progress=False)
    image, mask = support_pair(tmp_path)
    query = save(tmp_path / "query.png", scene(48, 60, (10, 10, 30, 40)))
    out = tmp_path / "out"
    code = main(
        ["segment", "--checkpoint", str(tmp_path / "run"), "--support", str(image), str(mask),
         "--query", str(query), "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    summary = read_summary(out)
    assert summary["learner"]["learner"] == learner
    assert summary["trained"]["checkpoint"] == str(tmp_path / "run")
    assert summary["trained"]["step"] == 2 and summary["trained"]["train_config"]["size"] == 48
    assert summary["image_size"] == 48  # the checkpoint's training size
    assert read_mask(out / "masks/query.png").shape == (48, 60)


def test_training_free_baseline_needs_no_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    query = save(tmp_path / "query.png", scene(48, 60, (10, 10, 30, 40)))
    code, _, _ = run_segment(
        capsys, "--learner", "baseline", "--support", str(image), str(mask),
        "--query", str(query), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0
    summary = read_summary(tmp_path / "out")
    assert summary["learner"]["learner"] == "baseline" and "trained" not in summary
    assert summary["image_size"] == 64


# ---- segment-specific input errors (the list is in tests/test_bad_input.py) -----


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run_segment(capsys, *args)
    assert (code, out, len(err.splitlines())) == (2, "", 1), err
    assert err.startswith("fewseg: error: ")
    return err.strip()


def test_queries_whose_outputs_would_collide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    a = save(tmp_path / "a" / "x.png", scene(16, 16, (0, 0, 8, 8)))
    b = save(tmp_path / "b" / "x.jpg", scene(16, 16, (0, 0, 8, 8)))
    out = tmp_path / "out"
    message = one_line_error(
        capsys, "--support", str(image), str(mask), "--query", str(a), str(b), "--out", str(out)
    )
    assert message.endswith(f"{a} and {b} would both write masks/x.png: rename one of them")
    assert not out.exists()


def test_support_takes_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, mask = support_pair(tmp_path)
    message = one_line_error(
        capsys, "--support", str(image), str(mask), str(image), "--query", str(image),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert message == "fewseg: error: --support takes IMAGE MASK pairs, got 3 paths"


def test_support_dir_with_an_image_without_mask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "support"
    support_pair(folder, "one")
    lone = save(folder / "two.jpg", scene(64, 64, (0, 0, 8, 8)))
    message = one_line_error(
        capsys, "--support-dir", str(folder), "--query", str(lone), "--out", str(tmp_path / "o")
    )
    assert f"{folder}: stem 'two' needs one image and one .png mask, found two.jpg" in message


def test_trained_learner_needs_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    message = one_line_error(
        capsys, "--learner", "maml", "--support", str(image), str(mask), "--query", str(image),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert message == (
        "fewseg: error: learner 'maml' must be trained: load a `fewseg train` run directory "
        "(--checkpoint DIR)"
    )


def test_support_foreground_that_vanishes_at_the_inference_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, _ = support_pair(tmp_path)
    mask = save(tmp_path / "dot.png", box_mask(64, 64, (3, 3, 4, 4)))  # one pixel
    code = main(
        ["segment", "--size", "8", "--support", str(image), str(mask), "--query", str(image),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"fewseg: error: {mask}: the mask's foreground vanishes at 8x8; "
        "use a larger size (--size)\n"
    )
    assert not (tmp_path / "out").exists()


def test_log_odds_read_one_or_two_class_logits() -> None:
    torch.manual_seed(0)
    two_class = torch.randn(2, 5, 7)
    resized = F.interpolate(two_class[None], (11, 9), mode="bilinear")[0]
    expected_foreground = (resized[1] > resized[0]).numpy()
    expected_confidence = resized.softmax(dim=0).max(dim=0).values.numpy()
    for logits in (two_class, two_class[1:] - two_class[:1]):
        log_odds = resized_log_odds(logits, 11, 9)
        foreground = log_odds > 0
        confidence = torch.sigmoid(torch.from_numpy(np.abs(log_odds))).numpy()
        assert foreground.shape == confidence.shape == (11, 9)
        np.testing.assert_array_equal(foreground, expected_foreground)
        np.testing.assert_allclose(confidence, expected_confidence, rtol=1e-6)
