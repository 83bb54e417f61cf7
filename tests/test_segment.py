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

import fewseg
from fewseg.api import Model, resized_log_odds
from fewseg.apps.exports import NamedMask, coco_document, rle
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
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner, LearnerOptions, Predictor
from fewseg.refinement.options import PLAIN, InferenceOptions

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


def test_the_inference_options_reach_segment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    box = (10, 20, 30, 50)
    query = save(tmp_path / "wide.png", scene(40, 70, box))
    args = ["--support", str(image), str(mask), "--query", str(query)]
    padded = tmp_path / "padded"
    assert run_segment(capsys, *args, "--out", str(padded), "--resize", "pad")[0] == 0
    model = fewseg.load("baseline", device="cpu", size=64, inference=InferenceOptions(resize="pad"))
    expected = model.adapt([image], [mask])([query])[0]
    assert np.array_equal(read_mask(padded / "masks/wide.png") == 255, expected)
    summary = read_summary(padded)
    assert summary["inference"]["resize"] == "pad" and "presence" in summary["definitions"]
    presence = model.adapt([image], [mask]).presence([query])[0]
    assert summary["queries"][0]["presence"] == pytest.approx(presence, abs=1e-6)
    assert 0 < presence < 1
    absent = tmp_path / "absent"
    assert run_segment(capsys, *args, "--out", str(absent), "--min-presence", "1")[0] == 0
    assert not read_mask(absent / "masks/wide.png").any()  # no presence score reaches 1
    code, _, err = run_segment(capsys, *args, "--out", str(tmp_path / "x"), "--edges", "blur")
    assert code == 2 and "edges must be one of guided, superpixels, guided+superpixels, none" in err


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


def test_progress_bars_for_every_run_of_more_than_one_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    queries = [str(save(tmp_path / f"q{i}.png", scene(16, 16, (0, 0, 8, 8)))) for i in range(2)]
    base = ["segment", "--size", SIZE, "--support", str(image), str(mask), "--query"]
    assert main([*base, *queries, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err  # 2 queries, one batch: the input check and the run
    assert "check: 100%" in err and "segment: 100%" in err
    assert main([*base, queries[0], "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""  # one query: no bar
    assert main([*base, *queries, "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


# ---- output names, the output folder, formats -------------------------------------------


def test_queries_with_one_name_write_under_their_relative_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path / "support")
    photos = tmp_path / "photos"
    day = save(photos / "day" / "x.png", scene(16, 20, (0, 0, 8, 8)))
    night = save(photos / "night" / "x.jpg", scene(24, 16, (4, 4, 12, 12)))
    same_folder = [save(photos / "y.jpg", scene(16, 16, (0, 0, 8, 8))), photos / "y.png"]
    save(same_folder[1], scene(20, 16, (0, 0, 8, 8)))
    out = tmp_path / "out"
    code, _, err = run_segment(
        capsys, "--support", str(image), str(mask), "--query", str(photos / "day"),
        str(photos / "night"), *map(str, same_folder), "--out", str(out),
    )  # fmt: skip
    assert (code, err) == (0, "")
    queries = read_summary(out)["queries"]
    assert [(q["image"], q["mask"], q["overlay"]) for q in queries] == [
        (str(day), "masks/day/x.png", "overlays/day/x.jpg"),
        (str(night), "masks/night/x.png", "overlays/night/x.jpg"),
        (str(same_folder[0]), "masks/y.jpg.png", "overlays/y.jpg.jpg"),
        (str(same_folder[1]), "masks/y.png.png", "overlays/y.png.jpg"),
    ]
    sizes = [Image.open(out / q["mask"]).size for q in queries]
    assert sizes == [(20, 16), (16, 24), (16, 16), (16, 20)]


def test_a_single_folder_names_its_queries_by_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path / "support")
    save(tmp_path / "photos" / "a.jpg", scene(16, 16, (0, 0, 8, 8)))
    out = tmp_path / "out"
    code, _, _ = run_segment(
        capsys, "--support", str(image), str(mask), "--query", str(tmp_path / "photos"),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    assert [p.relative_to(out).as_posix() for p in files_under(out)] == [
        "masks", "masks/a.png", "overlays", "overlays/a.jpg", "summary.json",
    ]  # fmt: skip


@pytest.mark.parametrize("layout", ["flat", "subfolders"])
def test_a_query_folder_of_image_mask_pairs_segments_the_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    image, mask = support_pair(tmp_path / "support")
    folder = tmp_path / "labelled"
    images, masks = (folder, folder) if layout == "flat" else (folder / "images", folder / "masks")
    for stem in ("a", "b"):
        save(images / f"{stem}.jpg", scene(16, 16, (0, 0, 8, 8)))
        save(masks / f"{stem}.png", box_mask(16, 16, (0, 0, 8, 8)))
    out = tmp_path / "out"
    code, _, err = run_segment(
        capsys, "--support", str(image), str(mask), "--query", str(folder), "--out", str(out)
    )
    assert (code, err) == (0, "")
    queries = read_summary(out)["queries"]
    assert [(q["image"], q["mask"]) for q in queries] == [
        (str(images / "a.jpg"), "masks/a.png"),
        (str(images / "b.jpg"), "masks/b.png"),
    ]


def test_a_non_empty_out_is_refused_unless_overwrite_which_replaces_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path / "support")
    first = save(tmp_path / "first.png", scene(16, 16, (0, 0, 8, 8)))
    second = save(tmp_path / "second.png", scene(16, 16, (0, 0, 8, 8)))
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    base = ["--support", str(image), str(mask), "--out", str(out)]
    assert run_segment(capsys, *base, "--query", str(first))[0] == 0
    message = one_line_error(capsys, *base, "--query", str(second))
    assert message == (
        f"fewseg: error: {out}: not empty (an earlier run's files?); pass --overwrite to "
        "replace it, or choose another --out"
    )
    assert (out / "masks/first.png").is_file() and not (out / "masks/second.png").exists()
    assert run_segment(capsys, *base, "--query", str(second), "--overwrite")[0] == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["second.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_stopped_run_leaves_out_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fewseg.apps.segment as segment_app

    image, mask = support_pair(tmp_path / "support")
    queries = [str(save(tmp_path / f"q{i}.png", scene(16, 16, (0, 0, 8, 8)))) for i in range(3)]
    out = tmp_path / "out"
    base = ["--support", str(image), str(mask), "--out", str(out), "--batch-size", "1"]
    assert run_segment(capsys, *base, "--query", queries[0])[0] == 0
    before = {p: p.read_bytes() for p in files_under(out) if p.is_file()}
    calls = []

    def interrupted(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return overlay(*args, **kwargs)  # type: ignore[arg-type]

    overlay = segment_app.overlay
    monkeypatch.setattr(segment_app, "overlay", interrupted)
    code, _, err = run_segment(capsys, *base, "--query", *queries, "--overwrite")
    assert (code, err) == (130, "fewseg: interrupted\n")
    assert {p: p.read_bytes() for p in files_under(out) if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("format", ["png", "coco", "both"])
def test_formats_png_and_coco_rle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], format: str
) -> None:
    from pycocotools.coco import COCO

    image, mask = support_pair(tmp_path / "support")
    photos = tmp_path / "photos"
    queries = [
        save(photos / "a.jpg", scene(40, 50, (10, 10, 30, 40))),
        save(photos / "sub" / "b.png", scene(30, 20, (5, 5, 20, 15))),
    ]
    model = fewseg.load("baseline", size=64)
    expected = model.adapt([image], [mask])(queries)
    out = tmp_path / "out"
    code, _, _ = run_segment(
        capsys, "--support", str(image), str(mask), "--query", *map(str, queries),
        "--out", str(out), "--format", format, "--class-name", "red box",
    )  # fmt: skip
    assert code == 0
    summary = read_summary(out)
    names = ["a", "sub/b"]
    if format in ("png", "both"):
        for name, truth in zip(names, expected, strict=True):
            assert np.array_equal(read_mask(out / f"masks/{name}.png") == 255, truth)
    else:
        assert not (out / "masks").exists() and "mask" not in summary["queries"][0]
    if format == "png":
        assert not (out / "coco.json").exists() and "coco" not in summary
        return
    assert summary["coco"] == "coco.json" and summary["class_name"] == "red box"
    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["red box"]
    images = coco.loadImgs(coco.getImgIds())
    assert [(i["file_name"], i["height"], i["width"]) for i in images] == [
        ("a.jpg", 40, 50), ("sub/b.png", 30, 20),
    ]  # fmt: skip
    for info, truth in zip(images, expected, strict=True):
        (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        assert np.array_equal(coco.annToMask(annotation).astype(bool), truth)
        assert annotation["area"] == int(truth.sum())
        rows, cols = np.nonzero(truth)
        x, y = cols.min(), rows.min()
        assert annotation["bbox"] == [x, y, cols.max() + 1 - x, rows.max() + 1 - y]


def coco_counts(text: str) -> list[int]:
    """Decode COCO's compressed RLE string by its definition (pycocotools' rleFrString):
    5 bits per character + 48, a sixth bit continuing the number, the sign in the last
    group's bit 4, and each count from the third on stored as its difference to the one
    two places back."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(text[position]) - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def test_coco_rle_by_hand() -> None:
    # column-major: 0 0 | 1 0 | 1 1  ->  runs of 2 zeros, 1 one, 1 zero, 2 ones
    mask = np.array([[0, 1, 1], [0, 0, 1]], bool)
    encoded = rle(mask)
    assert encoded["size"] == [2, 3] and coco_counts(encoded["counts"]) == [2, 1, 1, 2]
    big = np.zeros((40, 30), bool)
    big[5:25, 3:13] = True  # 10 columns of 5 zeros, 20 ones, 15 zeros, after 3 empty columns
    counts = coco_counts(rle(big)["counts"])
    assert counts == [3 * 40 + 5] + [20, 20] * 9 + [20, 15 + 17 * 40]
    document = coco_document(
        [NamedMask("a", "a.jpg", mask), NamedMask("e", "sub/e.png", np.zeros((4, 5), bool))],
        "cat",
        scores=[0.75, 0.1],
    )
    assert document["images"] == [
        {"id": 1, "file_name": "a.jpg", "width": 3, "height": 2},
        {"id": 2, "file_name": "sub/e.png", "width": 5, "height": 4},
    ]
    assert document["annotations"] == [  # none for the empty mask
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": encoded, "area": 3,
         "bbox": [1.0, 0.0, 2.0, 2.0], "iscrowd": 0, "score": 0.75},
    ]  # fmt: skip
    assert document["categories"] == [{"id": 1, "name": "cat", "supercategory": "cat"}]


def test_probability_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, mask = support_pair(tmp_path / "support")
    query = save(tmp_path / "q.png", scene(40, 50, (10, 10, 30, 40)))
    out = tmp_path / "out"
    code, _, _ = run_segment(
        capsys, "--support", str(image), str(mask), "--query", str(query), "--out", str(out),
        "--probabilities",
    )  # fmt: skip
    assert code == 0
    probabilities = fewseg.load("baseline", size=64).adapt([image], [mask]).probabilities([query])
    written = read_mask(out / "probabilities/q.png")
    assert written.dtype == np.uint8 and written.shape == (40, 50)
    assert np.abs(written.astype(int) - np.round(probabilities[0] * 255)).max() <= 1
    assert read_summary(out)["queries"][0]["probabilities"] == "probabilities/q.png"


# ---- grey masks: --mask-threshold --------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "foreground"),
    [(127, [0, 0, 1, 1, 1, 1]), (200, [0, 0, 0, 0, 1, 1]), (0, [0, 1, 1, 1, 1, 1])],
)
def test_grey_masks_are_thresholded(threshold: int, foreground: list[int]) -> None:
    label = np.array([0, 100, 128, 200, 201, 255], np.uint8).reshape(2, 3)
    fg, ignore, encoding = decode_mask(label, "m.jpg", threshold)
    assert fg.ravel().tolist() == [bool(v) for v in foreground]
    assert not ignore.any() and encoding == f"grey, > {threshold}"
    with pytest.raises(FewSegError, match=r"m\.jpg: mask values must be 0/1, 0/255"):
        decode_mask(label, "m.jpg")  # the API's strict reading


def test_a_jpeg_mask_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, png_mask = support_pair(tmp_path)
    jpeg_mask = tmp_path / "mask.jpg"
    Image.open(png_mask).save(jpeg_mask, quality=70)
    label = np.asarray(Image.open(jpeg_mask))
    assert len(np.unique(label)) > 3  # JPEG noise: not 0/255 any more
    query = save(tmp_path / "q.png", scene(40, 40, (10, 10, 30, 30)))
    for mask, threshold in ((jpeg_mask, "127"), (jpeg_mask, "60"), (png_mask, "127")):
        out = tmp_path / f"out-{mask.suffix}-{threshold}"
        code, _, err = run_segment(
            capsys, "--support", str(image), str(mask), "--query", str(query), "--out", str(out),
            "--mask-threshold", threshold,
        )  # fmt: skip
        assert (code, err) == (0, "")
        support = read_summary(out)["support"][0]
        if mask == jpeg_mask:
            assert support["encoding"] == f"grey, > {threshold}"
            assert support["foreground_pixels"] == int((label > int(threshold)).sum())
        else:
            assert support["encoding"] == "0/255"


def test_a_photo_given_as_the_mask_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = support_pair(tmp_path)
    message = one_line_error(
        capsys, "--support", str(mask), str(image), "--query", str(image),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert message.startswith(f"fewseg: error: {image}: looks like a photo, not a mask (")
    assert message.endswith("are the image and its mask swapped?")
    assert not (tmp_path / "out").exists()


def test_palette_and_16_bit_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = support_pair(tmp_path)
    box = box_mask(64, 64, (8, 12, 32, 36), value=1)
    wide = Image.fromarray(box.astype(np.uint16) * 65535)
    sixteen = tmp_path / "sixteen.png"
    wide.save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    pair = read_support_pair(image, sixteen, 127)
    assert pair.encoding == "0/255" and np.array_equal(pair.sample.mask, box == 1)
    indexed = Image.fromarray(box * 15, mode="L").convert("P")
    indexed.putpalette([0, 0, 0] * 15 + [192, 128, 128] + [0, 0, 0] * 240)
    palette = tmp_path / "palette.png"
    indexed.save(palette)
    with pytest.raises(FewSegError, match="a palette mask's values are indices, not grey levels"):
        read_support_pair(image, palette, 127)


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
