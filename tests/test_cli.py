"""The ``fewseg`` command line, end to end through :func:`fewseg.cli.main`."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fewseg.cli import main
from fewseg.data.synthetic import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared/data/coco-mini"
needs_coco_mini = pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"{COCO_MINI} not present")

# synthetic: 48 classes, generic interleaved folds: fold 0 tests classes 0, 4, ..., 44
FOLD0_TEST = [CLASS_NAMES[i] for i in range(0, 48, 4)]
FOLD0_TRAIN = [n for i, n in enumerate(CLASS_NAMES) if i % 4 != 0]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fewseg: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def evaluate_args(out: Path, *extra: str, episodes: int = 20) -> list[str]:
    return [
        "evaluate",
        "--learner",
        "baseline",
        "--dataset",
        "synthetic",
        "--fold",
        "0",
        "--shots",
        "1",
        "--episodes",
        str(episodes),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def table_rows(out: str) -> list[list[str]]:
    """The rows of the first table: the lines between its dashed rule and a blank line."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "})
    end = lines.index("", rule)
    return [line.split() for line in lines[rule + 1 : end]]


def read_report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


# ---- help, list, datasets ---------------------------------------------------------------


def test_module_help_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fewseg", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fewseg")
    for command in ("list", "datasets", "evaluate"):
        assert command in result.stdout
    assert result.stderr == ""


def test_list_prints_learners_backbones_and_dataset_kinds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    headings = [line for line in lines if not line.startswith(" ")]
    assert headings == ["learners:", "backbones:", "dataset kinds:"]
    names = {
        heading: [
            line.split()[0]
            for line in lines[lines.index(heading) + 1 :]
            if line.startswith("  ") and line.strip()
        ]
        for heading in headings
    }
    assert "baseline" in names["learners:"]
    assert "mobilenet_v2" in names["backbones:"]
    for kind in ("coco", "fss1000", "masks", "pascal", "synthetic"):
        assert kind in names["dataset kinds:"]


def test_datasets_synthetic_lists_classes_and_shot_marks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "datasets", "synthetic")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["index", "class", "images", "1-shot", "5-shot"]
    rows = table_rows(out)
    assert len(rows) == 48 >= 40
    assert [r[1] for r in rows] == list(CLASS_NAMES)
    assert [int(r[0]) for r in rows] == list(range(48))
    for _, _, images, one, five in rows:
        assert int(images) >= 24  # primary of 24 images, distractor in more
        assert (one, five) == ("yes", "yes")
    assert lines[-1] == "48 classes; 48 can serve 1-shot episodes, 48 can serve 5-shot episodes"


def test_datasets_marks_classes_that_cannot_serve_k_shots(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "datasets", "synthetic:images=1", "--shots", "1,200")
    assert code == 0
    rows = table_rows(out)
    assert len(rows) == 48
    for _, _, images, one, many in rows:
        assert one == ("yes" if int(images) >= 2 else "-")
        assert many == "-"
    assert out.splitlines()[-1].endswith(", 0 can serve 200-shot episodes")


def test_datasets_fold_column(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "datasets", "synthetic", "--fold", "0")
    assert code == 0
    assert out.splitlines()[0].split()[-2:] == ["fold", "0"]
    rows = table_rows(out)
    roles = {r[1]: r[-1] for r in rows}
    assert [n for n, role in roles.items() if role == "test"] == FOLD0_TEST
    assert [n for n, role in roles.items() if role == "train"] == FOLD0_TRAIN


def test_datasets_missing_coco_root_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-coco"
    code, out, err = run_cli(capsys, "datasets", f"coco:{missing}")
    assert_one_line_error(code, out, err, str(missing))


def test_unknown_dataset_kind_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "datasets", "imagenet:/data")
    assert_one_line_error(code, out, err, "unknown dataset kind 'imagenet'", "synthetic")


def test_unknown_spec_option_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "datasets", "synthetic:seed=1,colour=red")
    assert_one_line_error(code, out, err, "unknown option(s) colour")


def test_bad_spec_value_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "datasets", "synthetic:images=many")
    assert_one_line_error(code, out, err, "images='many' is not an integer")


def test_learner_options_reach_a_learner_by_name(tmp_path: Path) -> None:
    from fewseg.cli import _load, build_parser

    argv = evaluate_args(tmp_path / "ev", "--learner-option", "enlarge=1")
    argv[argv.index("baseline")] = "probe"
    loaded = _load(build_parser(argv).parse_args(argv), "cpu")
    assert loaded.learner.name == "probe" and loaded.learner.options.enlarge == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--learner-option", "enlarge"], "--learner-option 'enlarge': expected KEY=VALUE"),
        (["--learner-option", "nope=1"], "unknown option(s) of learner baseline: nope"),
    ],
)
def test_bad_learner_options_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    assert_one_line_error(*run_cli(capsys, *evaluate_args(tmp_path / "ev", *extra)), message)


def test_bad_fold_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "datasets", "synthetic", "--fold", "7")
    assert_one_line_error(code, out, err, "unknown fold '7'")


# ---- evaluate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    out: Path  # the --out directory
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One 20-episode evaluation, shared by the tests that read its report or output."""
    out = tmp_path_factory.mktemp("eval") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main([*evaluate_args(out), "--seed", "0"]) == 0
    return Run(out, stdout.getvalue(), stderr.getvalue())


def test_evaluate_writes_a_complete_report(first_run: Run) -> None:
    report = read_report(first_run.out)
    settings = report["settings"]
    assert settings["dataset"] == "synthetic"
    assert settings["fold"] == "0"
    assert settings["shots"] == 1
    assert settings["episodes"] == 20
    assert settings["seeds"] == [0]
    assert settings["image_size"] == 96  # synthetic's default size
    assert settings["learner"]["learner"] == "baseline"
    assert settings["learner"]["backbone"] == "mobilenet_v2"
    assert settings["source"]["kind"] == "synthetic"
    assert settings["source"]["seed"] == 0
    assert report["fold_convention"] == "interleaved"
    assert report["classes_used"] == FOLD0_TEST
    assert report["classes_left_out"] == {}
    assert report["meta_train_classes"] == FOLD0_TRAIN
    # scores are percentages
    assert 0 <= report["miou"] <= 100 and 0 <= report["fbiou"] <= 100
    assert report["miou"] > 1 and report["fbiou"] > 1  # not fractions of one
    per_class = report["per_class"]
    assert per_class and set(per_class) <= set(FOLD0_TEST)
    assert all(0 <= v <= 100 for v in per_class.values())
    # mIoU is the mean of the per-class IoUs (one seed)
    assert report["miou"] == pytest.approx(statistics.fmean(per_class.values()))
    assert "miou_std" not in report
    (run,) = report["runs"]
    assert run["seed"] == 0
    assert run["miou"] == report["miou"] and run["fbiou"] == report["fbiou"]
    assert run["per_class"] == per_class


def test_evaluate_prints_a_summary(first_run: Run) -> None:
    report = read_report(first_run.out)
    assert first_run.stderr == ""  # --no-progress: no progress bar
    lines = first_run.stdout.splitlines()
    assert lines[0] == (
        "baseline on synthetic — fold 0 (interleaved), 1-shot, 20 episodes, seed 0, 96x96"
    )
    boundary = report["per_class_boundary"]
    assert table_rows(first_run.stdout) == [
        [name, f"{iou:.1f}", f"{boundary[name]:.1f}"]
        for name, iou in sorted(report["per_class"].items())
    ]
    assert f"mIoU {report['miou']:.2f}   FB-IoU {report['fbiou']:.2f}" in first_run.stdout
    assert lines[-1] == f"report: {first_run.out / 'report.json'}"


def test_evaluate_is_reproducible(first_run: Run, tmp_path: Path) -> None:
    assert main([*evaluate_args(tmp_path), "--seed", "0"]) == 0
    first, second = read_report(first_run.out), read_report(tmp_path)
    assert second["miou"] == first["miou"]
    assert second["fbiou"] == first["fbiou"]
    assert second["per_class"] == first["per_class"]


@pytest.fixture(scope="module")
def two_seeds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "seeds"
    assert main(evaluate_args(out, "--seeds", "0,1", episodes=10)) == 0
    return out


def test_evaluate_several_seeds(two_seeds_dir: Path) -> None:
    report = read_report(two_seeds_dir)
    assert report["settings"]["seeds"] == [0, 1]
    runs = report["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    mious = [r["miou"] for r in runs]
    fbious = [r["fbiou"] for r in runs]
    assert mious[0] != mious[1]  # different episode lists
    assert report["miou"] == pytest.approx(statistics.fmean(mious))
    assert report["fbiou"] == pytest.approx(statistics.fmean(fbious))
    assert report["miou_std"] == pytest.approx(abs(mious[0] - mious[1]) / 2)
    assert report["fbiou_std"] == pytest.approx(abs(fbious[0] - fbious[1]) / 2)
    # 10 episodes over 12 classes: seed 1 draws classes 20 and 44, seed 0 does not
    seen = [set(run["per_class"]) for run in runs]
    assert seen[1] - seen[0] == {CLASS_NAMES[20], CLASS_NAMES[44]}
    # a class drawn under both seeds gets the mean of its two IoUs
    both = CLASS_NAMES[0]
    assert report["per_class"][both] == pytest.approx(
        statistics.fmean(r["per_class"][both] for r in runs)
    )


def test_per_class_covers_the_classes_of_every_run(two_seeds_dir: Path) -> None:
    report = read_report(two_seeds_dir)
    seen = [set(run["per_class"]) for run in report["runs"]]
    assert set(report["per_class"]) == seen[0] | seen[1]


def test_evaluate_unknown_learner_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = evaluate_args(tmp_path / "out")
    args[args.index("baseline")] = "maml++"
    code, out, err = run_cli(capsys, *args)
    assert_one_line_error(code, out, err, "unknown learner 'maml++'", "baseline")
    assert not (tmp_path / "out").exists()


def test_evaluate_missing_dataset_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "coco"
    args = evaluate_args(tmp_path / "out")
    args[args.index("synthetic")] = f"coco:{missing}"
    code, out, err = run_cli(capsys, *args)
    assert_one_line_error(code, out, err, str(missing))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--shots", "0", "expected an integer >= 1, got 0"),
        ("--episodes", "-3", "expected an integer >= 1, got -3"),
        ("--seeds", "0,x", "expected comma-separated integers"),
    ],
)
def test_evaluate_bad_numbers_are_argparse_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str, message: str
) -> None:
    args = evaluate_args(tmp_path)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_evaluate_seed_and_seeds_are_exclusive(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(evaluate_args(tmp_path, "--seed", "0", "--seeds", "1,2"))
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---- real data --------------------------------------------------------------------------


@needs_coco_mini
def test_datasets_coco_mini(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "datasets", f"coco:{COCO_MINI}")
    assert (code, err) == (0, "")
    rows = table_rows(out)
    assert len(rows) == 80
    person = next(r for r in rows if r[1] == "person")
    assert person[0] == "0" and person[2] == "136"
    assert out.splitlines()[-1].startswith("80 classes; ")


@needs_coco_mini
def test_evaluate_on_coco_mini(tmp_path: Path) -> None:
    args = evaluate_args(tmp_path, "--size", "200", "--seed", "0", episodes=10)
    args[args.index("synthetic")] = f"coco:{COCO_MINI}"
    assert main(args) == 0
    report = read_report(tmp_path)
    assert report["fold_convention"] == "interleaved"
    assert report["settings"]["image_size"] == 200
    assert report["settings"]["episodes"] == 10
    assert report["settings"]["source"]["kind"] == "coco"
    # interleaved fold 0 of COCO-20i: class indices 0, 4, ..., 76 (person is index 0)
    assert len(report["classes_used"]) + len(report["classes_left_out"]) == 20
    assert "person" in report["classes_used"]
    assert set(report["per_class"]) <= set(report["classes_used"])
    assert 0 <= report["miou"] <= 100 and 0 <= report["fbiou"] <= 100


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("command", ["evaluate", "segment", "train"])
def test_a_device_that_is_not_here_is_a_one_line_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "evaluate": evaluate_args(tmp_path / "out"),
        "segment": ["segment", "--support", "a.jpg", "a.png", "--query", "b.jpg",
                    "--out", str(tmp_path / "out")],
        "train": ["train", "--out", str(tmp_path / "out")],
    }[command]  # fmt: skip
    code, out, err = run_cli(capsys, *argv, "--device", "cuda")
    assert_one_line_error(code, out, err, "device 'cuda': no CUDA GPU is available here")
    assert not (tmp_path / "out").exists()
