"""The Python API: fewseg.load, Model.adapt, the class segmenter; and the light front door
(``import fewseg`` and every ``--help`` without torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefiles import box_mask, save, scene, support_pair
from PIL import Image
from tiny_training import tiny_values

import fewseg
from fewseg.cli import build_parser, main
from fewseg.engine.config import resolve_config
from fewseg.engine.train import train

REPO = Path(__file__).resolve().parents[1]
BOX = (8, 12, 32, 36)


@pytest.fixture(scope="module")
def model() -> fewseg.Model:
    return fewseg.load("baseline", device="cpu", size=64)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    image, mask = support_pair(tmp_path)
    return {
        "image": image,
        "mask": mask,
        "wide": save(tmp_path / "wide.jpg", scene(40, 70, (10, 20, 30, 50))),
        "small": save(tmp_path / "small.png", scene(30, 20, (5, 5, 15, 15))),
    }


def test_the_readme_example_runs(model: fewseg.Model, files: dict[str, Path]) -> None:
    segment = model.adapt([files["image"]], [files["mask"]])
    masks = segment([files["wide"], files["small"]])
    probabilities = segment.probabilities([files["wide"]])
    assert [m.shape for m in masks] == [(40, 70), (30, 20)] and masks[0].dtype == bool
    assert probabilities[0].dtype == np.float32 and probabilities[0].shape == (40, 70)
    assert 0.0 <= probabilities[0].min() <= probabilities[0].max() <= 1.0
    assert np.array_equal(masks[0], probabilities[0] > 0.5)
    assert masks[0][20, 35] and not masks[0][2, 2]  # the red box, not the green ground


def test_paths_pil_images_and_arrays_give_the_same_masks(
    model: fewseg.Model, files: dict[str, Path]
) -> None:
    image_array = np.asarray(Image.open(files["image"]).convert("RGB"))
    mask_array = np.asarray(Image.open(files["mask"]))
    from_paths = model.adapt([files["image"]], [files["mask"]])([files["wide"]])
    from_pil = model.adapt([Image.open(files["image"])], [Image.open(files["mask"])])(
        [Image.open(files["wide"])]
    )
    from_arrays = model.adapt([image_array], [mask_array > 0])(
        [np.asarray(Image.open(files["wide"]))]
    )
    zero_one = model.adapt([image_array], [(mask_array > 0).astype(np.uint8)])([files["wide"]])
    for other in (from_pil, from_arrays, zero_one):
        assert np.array_equal(other[0], from_paths[0])


def test_the_api_gives_what_fewseg_segment_writes(
    model: fewseg.Model, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = [
        "segment", "--size", "64", "--support", str(files["image"]), str(files["mask"]),
        "--query", str(files["wide"]), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    written = np.asarray(Image.open(out / "masks/wide.png")) == 255
    assert np.array_equal(
        written, model.adapt([files["image"]], [files["mask"]])([files["wide"]])[0]
    )


def test_a_trained_run_loads_with_its_training_size(tmp_path: Path) -> None:
    config, options = resolve_config(tiny_values("protonet", steps=1, size=48), {})
    train(config, options, tmp_path / "run", progress=False)
    model = fewseg.load(tmp_path / "run")
    assert model.size == 48 and model.learner.name == "protonet"
    assert model.loaded.trained["step"] == 1
    assert fewseg.load(tmp_path / "run", size=96).size == 96


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fewseg.load("maml"), "learner 'maml' must be trained"),
        (lambda: fewseg.load("no/such/run"), "no/such/run: neither a training-free learner"),
        (lambda: fewseg.load("baseline", device="tpu"), "unknown device 'tpu'"),
        (lambda: fewseg.load("baseline", size=4), "size must be >= 8"),
        (
            lambda: fewseg.load("probe", options={"enlarg": 1}),
            "of learner probe: enlarg",
        ),
        (lambda: fewseg.load("probe", options={"enlarge": 9}), "probe: enlarge must be in"),
    ],
)
def test_bad_loads_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(fewseg.FewSegError, match=message.replace("(", r"\(")):
        call()


def test_a_learner_by_name_takes_its_options() -> None:
    model = fewseg.load("probe", options={"enlarge": 1})
    assert model.learner.options.enlarge == 1.0
    assert fewseg.load("probe").learner.options.enlarge == 1.4


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu_is_a_one_line_error() -> None:
    with pytest.raises(fewseg.FewSegError, match="device 'cuda': no CUDA GPU is available here"):
        fewseg.load("baseline", device="cuda")


def test_bad_support_inputs_name_what_is_wrong(model: fewseg.Model, files: dict[str, Path]) -> None:
    image, mask = files["image"], files["mask"]
    small_mask = save(image.with_name("small-mask.png"), box_mask(30, 20, (5, 5, 15, 15)))
    cases = [
        (([image], [mask, mask]), "1 support images but 2 masks"),
        (([], []), "at least one support image"),
        ((image, mask), "a list of images and a list of masks"),
        (([image], [small_mask]), f"{small_mask}: mask is 20x30 but its image is 64x64"),
        (([image], [np.zeros((64, 64), bool)]), "mask 0: support mask has no foreground pixel"),
        (([image], [np.full((64, 64), 7, np.uint8)]), "mask 0: mask values must be 0/1"),
        (([np.zeros((64, 64, 3), np.float32)], [mask]), "image 0: expected a uint8 array"),
        (([image], [np.zeros((64, 64), np.float32)]), "expected a bool or integer mask"),
        (([image.with_name("none.jpg")], [mask]), "none.jpg: no such file"),
        (([image], [box_mask(64, 64, (3, 3, 4, 4)) > 0]), "vanishes at 64x64"),
    ]
    small = fewseg.load("baseline", size=8)
    for (images, masks), message in cases:
        target = small if "vanishes" in message else model
        if "vanishes" in message:
            message = "vanishes at 8x8"
        with pytest.raises(fewseg.FewSegError, match=message.replace("(", r"\(")):
            target.adapt(images, masks)
    segment = model.adapt([image], [mask])
    with pytest.raises(fewseg.FewSegError, match="pass a list of query images"):
        segment(files["wide"])


def test_importing_fewseg_and_every_help_load_no_torch() -> None:
    commands = [None, "list", "datasets", "train", "demo", "bench", "evaluate", "segment", "serve"]
    script = (
        "import sys, contextlib, io\n"
        "import fewseg\n"
        "from fewseg.cli import main\n"
        f"for command in {commands!r}:\n"
        "    argv = ([command] if command else []) + ['--help']\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'gradio' not in sys.modules, 'gradio was imported'\n"
        "fewseg.load\n"
        "assert 'torch' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_every_option_of_every_command_has_help() -> None:
    import argparse

    from fewseg.learners import LEARNERS

    parsers = [build_parser(["train", "--learner", e.name]) for e in LEARNERS]
    parsers.append(build_parser())
    for parser in parsers:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, command in commands.choices.items():
            for action in command._actions:
                assert action.help, f"fewseg {name} {action.option_strings}: no help"


def test_train_help_lists_a_learners_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, present, absent in [
        (["train", "--help"], "fewseg train --learner NAME --help", "--inner-lr"),
        (["train", "--learner", "maml", "--help"], "--meta-sgd", "--alignment-weight"),
        (["train", "--learner", "protonet", "--help"], "--alignment-weight", "--inner-lr"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert present in out and absent not in out
