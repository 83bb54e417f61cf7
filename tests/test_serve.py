"""``fewseg serve`` without a browser: the page's actions on in-memory images (what the
Gradio components hand over), their messages, the downloads, and the command's one-line
errors. The real-browser test is tests/test_serve_browser.py."""

from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefiles import box_mask, save, scene
from PIL import Image
from pycocotools import mask as mask_utils

import fewseg
from fewseg.apps import page
from fewseg.apps.labelling import Labeller, painted_mask
from fewseg.cli import main
from fewseg.errors import FewSegError

BOX = (16, 16, 48, 48)  # the support object


@pytest.fixture(scope="module")
def labeller() -> Labeller:
    return Labeller(fewseg.load("baseline", device="cpu", size=64))


def editor_value(image: np.ndarray, painted: np.ndarray | None = None) -> dict:
    """What gr.ImageEditor(type="numpy", image_mode="RGBA") hands over: an RGBA background
    and paint layers, transparent where nothing was painted."""
    background = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    layer = np.zeros((*image.shape[:2], 4), np.uint8)
    if painted is not None:
        layer[painted] = (255, 0, 255, 255)
    return {"background": background, "layers": [layer], "composite": background}


def support_image() -> np.ndarray:
    return scene(64, 64, BOX)


def stroke() -> np.ndarray:
    """A short painted stroke inside the object."""
    painted = np.zeros((64, 64), bool)
    painted[28:36, 22:42] = True
    return painted


def test_painted_mask_is_the_union_of_the_layers_alpha() -> None:
    first = np.zeros((4, 6, 4), np.uint8)
    first[0, 0] = (255, 0, 255, 255)
    first[1, 2, 3] = 1  # a faint, antialiased edge pixel still counts
    second = np.zeros((4, 6, 4), np.uint8)
    second[3, 5] = (0, 0, 0, 128)
    mask = painted_mask({"layers": [first, None, second]}, (4, 6))
    expected = np.zeros((4, 6), bool)
    expected[0, 0] = expected[1, 2] = expected[3, 5] = True
    assert np.array_equal(mask, expected)
    # a canvas of another size is resized (nearest) onto the image: 2x2 → 4x4
    small = np.zeros((2, 2, 4), np.uint8)
    small[0, 1, 3] = 255
    resized = painted_mask({"layers": [small]}, (4, 4))
    assert resized.tolist() == [[False, False, True, True]] * 2 + [[False] * 4] * 2


def test_an_example_from_paint_or_from_an_uploaded_mask(labeller: Labeller, tmp_path: Path) -> None:
    image = support_image()
    painted = labeller.example(editor_value(image, stroke()), None, 1)
    assert painted.source == "painted" and np.array_equal(painted.foreground, stroke())
    assert np.array_equal(painted.image, image)
    mask_file = save(tmp_path / "cat-mask.png", box_mask(64, 64, BOX))
    uploaded = labeller.example(editor_value(image, stroke()), str(mask_file), 2)
    assert uploaded.source == "cat-mask.png"  # the upload is used instead of the paint
    assert np.array_equal(uploaded.foreground, box_mask(64, 64, BOX) == 255)
    grey = tmp_path / "soft.jpg"
    Image.fromarray(box_mask(64, 64, BOX)).save(grey, quality=60)
    soft = labeller.example(editor_value(image), str(grey), 3)
    assert np.array_equal(soft.foreground, np.asarray(Image.open(grey)) > 127)


@pytest.mark.parametrize(
    ("editor", "mask", "message"),
    [
        (None, None, "example 1: upload a support image first"),
        ("image", None, "example 1: the mask is empty: paint the object with the brush"),
        ("image", "empty", "example 1: empty.png: no foreground pixel"),
        ("image", "small", "small.png: mask is 32x32 but its image is 64x64"),
        ("image", "photo", "photo.png: looks like a photo, not a mask"),
        ("image", "text", "notes.png: cannot read image"),
    ],
)
def test_bad_examples_are_one_line_messages(
    labeller: Labeller, tmp_path: Path, editor: str | None, mask: str | None, message: str
) -> None:
    masks = {
        "empty": save(tmp_path / "empty.png", np.zeros((64, 64), np.uint8)),
        "small": save(tmp_path / "small.png", box_mask(32, 32, (0, 0, 8, 8))),
        "photo": save(tmp_path / "photo.png", support_image()),
        "text": tmp_path / "notes.png",
    }
    masks["text"].write_text("not an image")
    value = editor_value(support_image()) if editor else None
    with pytest.raises(FewSegError) as error:
        labeller.example(value, None if mask is None else str(masks[mask]), 1)
    assert message in str(error.value) and "\n" not in str(error.value)
    outcome = page.add_example(labeller, [], value, None if mask is None else str(masks[mask]))
    assert outcome.examples == [] and outcome.message == f"**Error:** {error.value}"


def test_queries_from_uploads_and_a_server_folder(labeller: Labeller, tmp_path: Path) -> None:
    uploads = [
        save(tmp_path / "up1" / "a.png", scene(20, 30, (0, 0, 8, 8))),
        save(tmp_path / "up2" / "a.png", scene(20, 20, (0, 0, 8, 8))),  # the same name twice
    ]
    folder = tmp_path / "photos"
    save(folder / "x.jpg", scene(24, 24, (0, 0, 8, 8)))
    save(folder / "x.png", box_mask(24, 24, (0, 0, 8, 8)))  # x.jpg's mask: not a query
    save(folder / "a.jpg", scene(16, 16, (0, 0, 8, 8)))
    (folder / "notes.txt").write_text("skipped")
    queries = labeller.queries([str(p) for p in uploads], f"  {folder}  ")
    assert [(q.name, q.file_name, q.image.shape) for q in queries] == [
        ("a", "a.png", (20, 30, 3)),
        ("a-2", "a.png", (20, 20, 3)),
        ("a-3", "a.jpg", (16, 16, 3)),
        ("x", "x.jpg", (24, 24, 3)),
    ]
    bad = tmp_path / "upload" / "notes.txt"
    bad.parent.mkdir()
    bad.write_text("not an image")
    with pytest.raises(FewSegError, match=r"^notes\.txt: cannot read image \(cannot identify"):
        labeller.queries([str(bad)], None)
    with pytest.raises(FewSegError, match="no such folder on the server"):
        labeller.queries([], str(tmp_path / "none"))
    with pytest.raises(FewSegError, match="no image to segment"):
        labeller.queries([], "  ")


def test_a_server_folder_larger_than_the_page_takes_is_refused(
    labeller: Labeller, tmp_path: Path
) -> None:
    for i in range(3):
        save(tmp_path / "photos" / f"{i}.png", scene(8, 8, (0, 0, 4, 4)))
    small = Labeller(labeller.model, max_folder_images=2)
    with pytest.raises(FewSegError) as error:
        small.queries([], str(tmp_path / "photos"))
    assert str(error.value) == (
        f"{tmp_path / 'photos'}: 3 images; the page segments at most 2 at once "
        "(use `fewseg segment` for more)"
    )
    assert (
        len(Labeller(labeller.model, max_folder_images=3).queries([], str(tmp_path / "photos")))
        == 3
    )


def test_segment_gives_what_the_api_gives_and_the_downloads_hold_it(
    labeller: Labeller, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = page.add_example(labeller, [], editor_value(support_image(), stroke()), None)
    assert first.message.startswith("Added example 1 (160 foreground pixels, painted)")
    second_image = scene(48, 56, (8, 10, 30, 40))
    second_mask = box_mask(48, 56, (8, 10, 30, 40))
    queries = [
        save(tmp_path / "q" / "one.png", scene(40, 50, (10, 10, 30, 40))),
        save(tmp_path / "q" / "two.jpg", scene(30, 30, (5, 5, 20, 20))),
    ]
    # the example left in the editor is used too, and not added
    outcome = page.segment(
        labeller, first.examples, editor_value(second_image), None, [], None, "box", tmp_path
    )
    assert outcome.message == "**Error:** no image to segment: add query images (or a folder)"
    mask_file = save(tmp_path / "second.png", second_mask)
    outcome = page.segment(
        labeller, first.examples, editor_value(second_image), str(mask_file),
        [str(q) for q in queries], None, "box", tmp_path,
    )  # fmt: skip
    assert outcome.message.startswith(
        "Segmented 2 image(s) from 2 example(s) (with the one in the editor) in "
    )
    segmenter = fewseg.load("baseline", size=64).adapt(
        [support_image(), second_image], [stroke(), second_mask]
    )
    expected, presence = segmenter(queries), segmenter.presence(queries)
    for result, truth, score in zip(outcome.results, expected, presence, strict=True):
        assert np.array_equal(result.mask, truth) and result.presence == score
    assert outcome.results[0].caption() == (
        f"one.png: {100 * expected[0].mean():.1f}% foreground, presence {presence[0]:.2f}"
    )
    assert outcome.results[0].preview().shape == (40, 50, 3)

    with zipfile.ZipFile(outcome.downloads["masks.zip"]) as archive:
        assert archive.namelist() == ["masks/one.png", "masks/two.png"]
        for name, truth in zip(archive.namelist(), expected, strict=True):
            written = np.asarray(Image.open(io.BytesIO(archive.read(name))))
            assert np.array_equal(written == 255, truth) and set(np.unique(written)) <= {0, 255}
    document = json.loads(outcome.downloads["coco.json"].read_text())
    assert document["categories"][0]["name"] == "box"
    assert [i["file_name"] for i in document["images"]] == ["one.png", "two.jpg"]
    for annotation in document["annotations"]:
        segmentation = dict(annotation["segmentation"])
        segmentation["counts"] = segmentation["counts"].encode()
        truth = expected[annotation["image_id"] - 1]
        assert np.array_equal(mask_utils.decode(segmentation).astype(bool), truth)

    # support.zip is a --support-dir: `fewseg segment` with it writes the same masks
    support = tmp_path / "support"
    with zipfile.ZipFile(outcome.downloads["support.zip"]) as archive:
        assert sorted(archive.namelist()) == [
            "images/example-1.png", "images/example-2.png",
            "masks/example-1.png", "masks/example-2.png",
        ]  # fmt: skip
        archive.extractall(support)
    out = tmp_path / "out"
    code = main(
        ["segment", "--size", "64", "--support-dir", str(support), "--query", *map(str, queries),
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    for name, truth in zip(("one", "two"), expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(out / f"masks/{name}.png")) == 255, truth)


def test_the_presence_score_is_shown_when_the_segmenter_gives_one(
    labeller: Labeller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClassSegmenter.presence (issue #18) is used where it exists: here a stand-in."""
    adapt = labeller.model.adapt_samples

    class WithPresence:
        def __init__(self, segmenter: object) -> None:
            self.segmenter = segmenter

        def predict_arrays(self, images: list[np.ndarray]) -> list[np.ndarray]:
            return self.segmenter.predict_arrays(images)  # type: ignore[attr-defined]

        def presence(self, queries: list[np.ndarray]) -> list[float]:
            return [0.25 + 0.5 * i for i, _ in enumerate(queries)]

    monkeypatch.setattr(labeller.model, "adapt_samples", lambda *a: WithPresence(adapt(*a)))
    queries = [
        save(tmp_path / "one.png", scene(40, 50, (10, 10, 30, 40))),
        save(tmp_path / "two.png", scene(30, 30, (5, 5, 20, 20))),
    ]
    outcome = page.segment(
        labeller, [], editor_value(support_image(), stroke()), None,
        [str(q) for q in queries], None, "box", tmp_path,
    )  # fmt: skip
    expected = fewseg.load("baseline", size=64).adapt([support_image()], [stroke()])(queries)
    assert [r.presence for r in outcome.results] == [0.25, 0.75]
    assert [r.caption() for r in outcome.results] == [
        f"one.png: {100 * expected[0].mean():.1f}% foreground, presence 0.25",
        f"two.png: {100 * expected[1].mean():.1f}% foreground, presence 0.75",
    ]
    document = json.loads(outcome.downloads["coco.json"].read_text())
    assert [a["score"] for a in document["annotations"]] == [0.25, 0.75]


def test_without_presence_there_is_no_score(
    labeller: Labeller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segmenter without ``presence`` (ClassSegmenter before issue #18): no score shown."""
    adapt = labeller.model.adapt_samples

    class WithoutPresence:
        def __init__(self, segmenter: object) -> None:
            self.predict_arrays = segmenter.predict_arrays  # type: ignore[attr-defined]

    monkeypatch.setattr(labeller.model, "adapt_samples", lambda *a: WithoutPresence(adapt(*a)))
    query = save(tmp_path / "q.png", scene(20, 20, (0, 0, 8, 8)))
    outcome = page.segment(
        labeller, [], editor_value(support_image(), stroke()), None, [str(query)], "", "",
        tmp_path,
    )  # fmt: skip
    assert outcome.results[0].presence is None
    assert "presence" not in outcome.results[0].caption()
    document = json.loads(outcome.downloads["coco.json"].read_text())
    assert all("score" not in annotation for annotation in document["annotations"])


def test_segment_without_examples_says_what_to_do(labeller: Labeller, tmp_path: Path) -> None:
    query = save(tmp_path / "q.png", scene(20, 20, (0, 0, 8, 8)))
    for editor in (None, editor_value(support_image())):  # nothing, or an unpainted image
        outcome = page.segment(labeller, [], editor, None, [str(query)], "", "", tmp_path)
        assert outcome.results == [] and outcome.message == (
            "**Error:** no support example: upload an image, paint the object, press Add example"
        )


def test_bad_input_to_segment_is_a_message_and_nothing_else(
    labeller: Labeller, tmp_path: Path
) -> None:
    """What the page's Segment button shows for each bad input; a good run follows."""
    query = save(tmp_path / "q.png", scene(20, 20, (0, 0, 8, 8)))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    empty = save(tmp_path / "empty.png", np.zeros((64, 64), np.uint8))
    painted = editor_value(support_image(), stroke())
    cases = [
        (painted, None, [str(text)], "notes.txt: cannot read image (cannot identify"),
        (editor_value(support_image()), str(empty), [str(query)], "empty.png: no foreground"),
        (painted, str(text), [str(query)], "notes.txt: cannot read image"),
        (None, None, [str(query)], "no support example: upload an image"),
        (painted, None, [], "no image to segment: add query images (or a folder)"),
    ]
    for editor, mask, uploads, message in cases:
        outcome = page.segment(labeller, [], editor, mask, uploads, None, "", tmp_path)
        assert outcome.results == [] and outcome.downloads == {}
        assert outcome.message.startswith("**Error:** ") and message in outcome.message
        assert "\n" not in outcome.message
    outcome = page.segment(labeller, [], painted, None, [str(query)], None, "", tmp_path)
    assert len(outcome.results) == 1 and outcome.message.startswith("Segmented 1 image(s)")


# ---- the command --------------------------------------------------------------------------


def test_a_port_in_use_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"fewseg: error: port {port} on 127.0.0.1: in use by another program; choose another "
        "with --port\n"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--checkpoint", "no/such/run"], "no/such/run/checkpoint.pt: no checkpoint found"),
        (["--checkpoint", "CORRUPT"], "checkpoint.pt: corrupt or unsafe checkpoint"),
        (["--learner", "maml"], "learner 'maml' must be trained"),
        (["--host", "no.such.host.invalid"], "--host no.such.host.invalid: cannot listen there"),
        pytest.param(
            ["--device", "cuda"],
            "device 'cuda': no CUDA GPU is available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_bad_serve_arguments_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], message: str
) -> None:
    if "CORRUPT" in flags:
        (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
        flags = [str(tmp_path) if flag == "CORRUPT" else flag for flag in flags]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["serve", "--port", str(port), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("fewseg: error: ") and message in err


def test_the_page_builds_offline(labeller: Labeller, tmp_path: Path) -> None:
    import os

    blocks = page.build_page(labeller, tmp_path)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert blocks.analytics_enabled is False
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"support-editor", "add-example", "query-files", "segment", "status"} <= ids
