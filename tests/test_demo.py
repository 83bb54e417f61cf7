"""The demo pipeline end to end on a tiny plan (the real plan is configs/demo.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fewseg.engine.checkpoint import read_checkpoint
from fewseg.errors import FewSegError
from fewseg.experiments.demo import read_plan, run_demo

PLAN = """
dataset: "synthetic:images=8,size=64"
fold: "0"
train: {shots: 1, steps: 2, meta_batch: 2, backbone: convnet, hidden: 8, inner_steps: 1,
        val_every: 2, val_episodes: 2, checkpoint_every: 2}
learners:
  fomaml: {}
  protonet: {}
  baseline: {backbone: mobilenet_v2}
evaluate: {shots: [1, 2], episodes: 4, seed: 0, overlay_episodes: 2}
"""


def test_demo_writes_table_report_curves_and_overlays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN)
    results = run_demo(read_plan(plan_file), tmp_path / "out", progress=False)
    out = capsys.readouterr().out
    assert [r.name for r in results] == ["fomaml", "protonet", "baseline"]
    header = next(line for line in out.splitlines() if line.startswith("learner"))
    assert header.split() == [
        "learner", "1-shot", "mIoU", "1-shot", "FB-IoU", "2-shot", "mIoU", "2-shot", "FB-IoU",
        "train", "s",
    ]  # fmt: skip
    summary = json.loads((tmp_path / "out/results.json").read_text())
    assert summary["baseline"]["train_seconds"] is None
    assert summary["fomaml"]["train_seconds"] > 0
    for name, result in zip(["fomaml", "protonet", "baseline"], results, strict=True):
        report = json.loads((tmp_path / f"out/eval/{name}-2shot/report.json").read_text())
        assert summary[name]["2shot"]["miou"] == report["miou"] == result.reports[2].miou
    markdown = (tmp_path / "out/README.md").read_text()
    assert "figures/learning-curves.png" in markdown and "overlays-protonet.png" in markdown
    for png in ["learning-curves", "overlays-fomaml", "overlays-protonet", "overlays-baseline"]:
        with Image.open(tmp_path / f"out/figures/{png}.png") as image:
            assert image.width > 100 and image.height > 100


def test_bad_plan_is_a_one_line_error(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("dataset: synthetic\nlearners: {maml: {}}\n")
    with pytest.raises(FewSegError, match="not a demo plan"):
        read_plan(plan_file)


def test_shipped_demo_plan_trains_every_learner() -> None:
    plan = read_plan(Path(__file__).resolve().parents[1] / "configs/demo.yaml")
    assert list(plan.learners) == ["maml", "fomaml", "reptile", "protonet", "finetune", "baseline"]
    assert plan.shots == [1, 5]
    gradient_based = ["maml", "fomaml", "reptile", "finetune"]
    assert len({plan.learners[name]["inner_steps"] for name in gradient_based}) == 1
    assert len({plan.learners[name]["inner_lr"] for name in gradient_based}) == 1


def test_running_the_demo_again_reuses_its_trained_models(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN)
    plan = read_plan(plan_file)
    first = run_demo(plan, tmp_path / "out", progress=False)
    checkpoint = tmp_path / "out/train/fomaml/checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    again = run_demo(plan, tmp_path / "out", progress=False)
    assert checkpoint.stat().st_mtime_ns == written  # nothing retrained
    assert [r.reports[1].miou for r in again] == [r.reports[1].miou for r in first]
    plan_file.write_text(PLAN.replace("hidden: 8", "hidden: 16"))
    with pytest.raises(
        FewSegError,
        match=r"fomaml/checkpoint\.pt: cannot resume with different learner option hidden$",
    ):
        run_demo(read_plan(plan_file), tmp_path / "out", progress=False)


def test_an_entry_can_run_a_learner_under_a_name_of_its_own(tmp_path: Path) -> None:
    """``protonet-narrow: {learner: protonet, hidden: 4}`` trains protonet with its own options
    beside the plain entry (how the benchmark runs each family on both models)."""
    plan_file = tmp_path / "plan.yaml"
    two_protonets = PLAN.replace(" inner_steps: 1,", "").replace(
        "  fomaml: {}\n  protonet: {}\n  baseline: {backbone: mobilenet_v2}",
        "  protonet: {}\n  protonet-narrow: {learner: protonet, hidden: 4}",
    )
    plan_file.write_text(two_protonets)
    plan = read_plan(plan_file)
    assert plan.learner_of("protonet-narrow") == "protonet"
    results = run_demo(plan, tmp_path / "out", progress=False)
    assert [r.name for r in results] == ["protonet", "protonet-narrow"]
    state = read_checkpoint(tmp_path / "out/train/protonet-narrow")
    assert state["learner_name"] == "protonet" and state["learner_options"]["hidden"] == 4
    wide = read_checkpoint(tmp_path / "out/train/protonet")
    assert wide["learner_options"]["hidden"] == 8
    plan_file.write_text(two_protonets.replace("hidden: 4}", "colour: 1}"))
    with pytest.raises(FewSegError, match="colour"):
        run_demo(read_plan(plan_file), tmp_path / "bad", progress=False)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "baseline: {backbone: mobilenet_v2, colour: 1}",
            r"\(baseline\): unknown option\(s\) of baseline: colour$",
        ),
        ("baseline: {backbone: resnet1000}", r"\(baseline\): .*resnet1000"),
        ("fomaml: {inner_lr: fast}", r"\(fomaml\): .*inner_lr"),
        ("fomaml: {steps: 0}", r"\(fomaml\): option steps must be >= 1, got 0$"),
    ],
)
def test_every_entry_is_checked_when_the_plan_is_read(
    tmp_path: Path, entry: str, message: str
) -> None:
    """A bad option in any entry is a one-line error before the first learner trains."""
    plan_file = tmp_path / "plan.yaml"
    name = entry.split(":")[0]
    lines = [line for line in PLAN.splitlines() if not line.startswith(f"  {name}:")]
    at = lines.index("learners:") + 1
    plan_file.write_text("\n".join([*lines[:at], f"  {entry}", *lines[at:]]))
    with pytest.raises(FewSegError, match=message) as caught:
        read_plan(plan_file)
    assert str(plan_file) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
