"""Bad input, one test per case of issue #7, through the command line: exit status 2, one
line ``fewseg: error: ...`` naming the file or value, no traceback, and no output written.

Related lower-level tests: the dataset readers' own errors are in tests/test_*_source.py,
checkpoint safety and non-finite losses in tests/test_train.py, interruptions in
tests/test_interrupt.py.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefiles import box_mask, files_under, save, scene, support_pair
from PIL import Image

from fewseg.cli import main
from fewseg.engine.config import resolve_config
from fewseg.engine.train import train


def assert_one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str
) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fewseg: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class Segment:
    """A ``fewseg segment`` run on a valid support pair and query, with one part swapped."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.image, self.mask = support_pair(tmp_path / "in")
        self.query = save(tmp_path / "in" / "query.png", scene(40, 48, (10, 10, 30, 30)))
        self.out = tmp_path / "out"

    def argv(
        self,
        image: Path | None = None,
        mask: Path | None = None,
        query: Path | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        return [
            "segment", "--size", "64", "--no-progress",
            "--support", str(image or self.image), str(mask or self.mask),
            "--query", str(query or self.query), "--out", str(self.out), *extra,
        ]  # fmt: skip

    def assert_nothing_written(self) -> None:
        assert files_under(self.out) == []


@pytest.fixture
def run(tmp_path: Path) -> Segment:
    return Segment(tmp_path)


def encoded(array: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


# ---- images -----------------------------------------------------------------------------


def test_missing_image(run: Segment, capsys: pytest.CaptureFixture[str]) -> None:
    missing = run.tmp / "in" / "no-such-image.jpg"
    assert_one_line_error(capsys, run.argv(image=missing), f"{missing}: no such file")
    run.assert_nothing_written()


def test_unreadable_image(
    run: Segment, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run.query.chmod(0)
    if os.access(run.query, os.R_OK):  # root reads anything: make the open fail as it would
        real_open = Image.open

        def denied(path: object, *args: object, **kwargs: object) -> Image.Image:
            if Path(str(path)) == run.query:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Image, "open", denied)
    line = assert_one_line_error(capsys, run.argv(), f"{run.query}: cannot read image")
    assert "Permission denied" in line
    run.assert_nothing_written()


def test_corrupt_image(run: Segment, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = run.tmp / "in" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert_one_line_error(capsys, run.argv(query=corrupt), f"{corrupt}: cannot read image")
    run.assert_nothing_written()


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_truncated_png_or_jpeg(
    run: Segment, capsys: pytest.CaptureFixture[str], format: str
) -> None:
    data = encoded(scene(64, 64, (8, 8, 40, 40)), format)
    truncated = run.tmp / "in" / f"truncated.{format.lower()}"
    truncated.write_bytes(data[: len(data) // 2])
    line = assert_one_line_error(
        capsys, run.argv(image=truncated), f"{truncated}: cannot read image"
    )
    assert "truncated" in line.lower()
    run.assert_nothing_written()


# ---- masks ------------------------------------------------------------------------------


def test_mask_size_differs_from_its_image(run: Segment, capsys: pytest.CaptureFixture[str]) -> None:
    small = save(run.tmp / "in" / "small-mask.png", box_mask(32, 48, (4, 4, 20, 20)))
    assert_one_line_error(
        capsys, run.argv(mask=small), f"{small}: mask is 48x32 but its image is 64x64"
    )
    run.assert_nothing_written()


def test_mask_values_outside_the_accepted_sets(
    run: Segment, capsys: pytest.CaptureFixture[str]
) -> None:
    values = box_mask(64, 64, (8, 12, 32, 36), value=1)
    values[0, :3] = [7, 128, 254]
    bad = save(run.tmp / "in" / "bad-values.png", values)
    assert_one_line_error(
        capsys, run.argv(mask=bad), str(bad), "0/1, 0/255, or 0/1 with 255 = ignore",
        "found 7, 128, 254",
    )  # fmt: skip
    run.assert_nothing_written()


def test_empty_support_mask(run: Segment, capsys: pytest.CaptureFixture[str]) -> None:
    empty = save(run.tmp / "in" / "empty.png", np.zeros((64, 64), np.uint8))
    assert_one_line_error(capsys, run.argv(mask=empty), f"{empty}: support mask has no foreground")
    run.assert_nothing_written()


# ---- datasets ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_class_with_fewer_than_k_plus_one_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    out = tmp_path / "out"
    dataset = "synthetic:images=2,size=64"  # every class has 2 images, plus a few as distractor
    common = ["--dataset", dataset, "--shots", "30", "--out", str(out), "--no-progress"]
    if command == "evaluate":
        argv = ["evaluate", "--learner", "baseline", "--episodes", "2", *common]
        expected = "no class has the 31 images a 30-shot episode needs"
    else:
        argv = ["train", "--learner", "protonet", "--backbone", "convnet", *common]
        expected = "fold 0: no meta-train class has 31 images"
    assert_one_line_error(capsys, argv, expected)
    assert not out.exists()


def test_unknown_dataset_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "imagenet:/data", "--out", str(out), "--no-progress"]
    assert_one_line_error(capsys, argv, "unknown dataset kind 'imagenet'", "synthetic")
    assert not out.exists()


@pytest.mark.parametrize(
    ("where", "expected"),
    [("spec", "unknown option(s) colour"), ("config file", "unknown option(s) of maml: stepz")],
)
def test_unknown_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, expected: str
) -> None:
    out = tmp_path / "out"
    if where == "spec":
        argv = ["evaluate", "--dataset", "synthetic:colour=red", "--out", str(out)]
    else:
        config = tmp_path / "run.yaml"
        config.write_text("learner: maml\nstepz: 3\n")
        argv = ["train", "--config", str(config), "--out", str(out), "--no-progress"]
    assert_one_line_error(capsys, argv, expected)
    assert not out.exists()


# ---- checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    config, options = resolve_config(
        {
            "learner": "protonet",
            "dataset": "synthetic:images=8,size=64",
            "backbone": "convnet",
            "hidden": 8,
            "meta_batch": 2,
            "val_every": 0,
            "steps": 1,
            "size": 48,
        },
        {},
    )
    train(config, options, run_dir, progress=False)
    return run_dir


def test_checkpoint_of_another_architecture(
    run: Segment, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    state["learner_options"]["hidden"] = 16  # the weights are for hidden = 8
    other = run.tmp / "other"
    other.mkdir()
    torch.save(state, other / "checkpoint.pt")
    assert_one_line_error(
        capsys,
        run.argv(extra=["--checkpoint", str(other)]),
        f"{other / 'checkpoint.pt'}: its weights do not fit learner 'protonet'",
        "another architecture",
    )
    run.assert_nothing_written()


def test_corrupt_checkpoint(
    run: Segment, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = run.tmp / "corrupt"
    corrupt.mkdir()
    good = (trained_run / "checkpoint.pt").read_bytes()
    (corrupt / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    assert_one_line_error(
        capsys,
        run.argv(extra=["--checkpoint", str(corrupt)]),
        f"{corrupt / 'checkpoint.pt'}: corrupt or unsafe checkpoint",
    )
    run.assert_nothing_written()


# ---- folders ----------------------------------------------------------------------------


def test_non_image_file_in_a_folder_is_skipped_with_a_warning(
    run: Segment, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = run.tmp / "queries"
    save(folder / "photo.png", scene(32, 32, (4, 4, 20, 20)))
    (folder / "notes.txt").write_text("shot on a Tuesday")
    (folder / "data.bin").write_bytes(bytes(100))
    assert main(run.argv(query=folder)) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"fewseg: warning: {folder / 'data.bin'}: not an image, skipped",
        f"fewseg: warning: {folder / 'notes.txt'}: not an image, skipped",
    ]
    assert out.startswith("segmented 1 image(s)")
    assert [p.name for p in files_under(run.out) if p.is_file()] == [
        "photo.png",
        "photo.jpg",
        "summary.json",
    ]
