"""``--score-at original`` and ``--missing-classes zero`` against hand-computed scores."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from fewseg.cli import main
from fewseg.data.source import ClassSample, SegClass, SegmentationSource
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.protocol import score_plan_reference
from fewseg.episodes.sampler import episode_plan
from fewseg.episodes.tensors import LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners.base import Learner, LearnerOptions, Predictor

# class → (height, width) of each of its images; every mask is the image's first column
IMAGES = {
    "wide": {"w1": (2, 4), "w2": (2, 4)},  # squashed to 2x2, the mask stays column 0
    "square": {"s1": (2, 2), "s2": (2, 2)},  # already at the evaluation size
    "lonely": {"l1": (2, 2)},  # one image: left out of 1-shot episodes
}
NAMES = list(IMAGES)


class ColumnSource(SegmentationSource):
    kind: ClassVar[str] = "columns"

    def classes(self) -> Sequence[SegClass]:
        return tuple(SegClass(i, n) for i, n in enumerate(NAMES))

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        return {i: {image: h for image, (h, _) in IMAGES[n].items()} for i, n in enumerate(NAMES)}

    def load(self, image_id: str, class_index: int) -> ClassSample:
        height, width = IMAGES[NAMES[class_index]][image_id]
        mask = np.zeros((height, width), bool)
        mask[:, 0] = True
        return ClassSample(np.zeros((height, width, 3), np.uint8), mask, np.zeros_like(mask))


class LeftHalfLearner(Learner):
    """Foreground log-odds +1 on the left half of the query, -1 on the right half."""

    name = "left-half"
    trainable = False

    def __init__(self) -> None:
        super().__init__(LearnerOptions())
        self.encoder = None

    def adapt(self, support: LabelledImages) -> Predictor:
        def predict(images: torch.Tensor) -> torch.Tensor:
            logits = -torch.ones(images.shape[0], 1, *images.shape[-2:])
            logits[..., : images.shape[-1] // 2] = 1
            return logits

        return predict


def run(score_at: str, missing: str = "skip", episodes: int = 12, reference: bool = False):
    settings = EvaluationSettings(
        "all", 1, episodes, 2, progress=False, score_at=score_at, missing_classes=missing
    )
    scorer = score_plan_reference if reference else None
    return evaluate(LeftHalfLearner(), ColumnSource(), "columns", settings, [0], scorer=scorer)


def episodes_per_class(episodes: int) -> dict[str, int]:
    plan = episode_plan(ColumnSource(), (0, 1, 2), 1, episodes, seed=0)
    return {n: sum(NAMES[e.class_index] == n for e in plan.episodes) for n in NAMES}


def test_scores_at_the_evaluation_size_and_at_the_original_size_by_hand() -> None:
    n = episodes_per_class(12)
    assert n["wide"] > 0 and n["square"] > 0
    # at 2x2 a wide query's mask (nearest: columns 0 and 2 of 4) is its left column, which
    # the prediction hits exactly: every IoU is 1
    resized = run("resized")
    assert resized.per_class == {"wide": 100.0, "square": 100.0}
    assert resized.fbiou == 100.0
    assert resized.settings.scored_at == "evaluation resolution 2x2"
    # at 2x4 the logits (1, -1) become (1, 1/2, -1/2, -1) (half-pixel centres): the
    # prediction is columns 0-1 against the mask's column 0, fg I = 2 of U = 4 pixels;
    # background I = 4 (columns 2-3) of U = 6 (columns 1-3)
    original = run("original")
    assert original.per_class == {"wide": 50.0, "square": 100.0}
    assert original.miou == 75.0
    w, s = n["wide"], n["square"]
    fg = (2 * w + 2 * s) / (4 * w + 2 * s)
    bg = (4 * w + 2 * s) / (6 * w + 2 * s)
    assert original.fbiou == pytest.approx(100 * (fg + bg) / 2, abs=1e-12)
    assert original.settings.scored_at.startswith("original")


def test_the_reference_loop_scores_at_the_original_size_as_the_runner_does() -> None:
    fast, reference = run("original"), run("original", reference=True)
    assert (fast.per_class, fast.miou, fast.fbiou) == (
        reference.per_class,
        reference.miou,
        reference.fbiou,
    )


def test_classes_without_episodes_count_as_zero_when_asked() -> None:
    # one episode: one of the two usable classes is drawn, the other is not; "lonely" has
    # too few images for 1-shot
    drawn = [name for name, k in episodes_per_class(1).items() if k]
    assert len(drawn) == 1
    skipped = run("resized", "skip", episodes=1)
    assert skipped.per_class == {drawn[0]: 100.0} and skipped.miou == 100.0
    zero = run("resized", "zero", episodes=1)
    assert zero.per_class == {n: 100.0 if n == drawn[0] else 0.0 for n in NAMES}
    assert zero.miou == pytest.approx(100 / 3, abs=1e-12)
    assert zero.fbiou == skipped.fbiou  # pooled over episodes: unchanged
    assert zero.classes_without_episodes == skipped.classes_without_episodes
    assert zero.classes_without_episodes == [n for n in ("square", "wide") if n not in drawn]
    assert zero.settings.missing_classes == "zero"
    # both options: (50 + 100 + 0) / 3
    both = run("original", "zero")
    assert both.miou == pytest.approx(50.0, abs=1e-12)


def test_unknown_scoring_options_are_one_line_errors() -> None:
    with pytest.raises(FewSegError, match="score_at 'native'"):
        EvaluationSettings("all", 1, 1, 2, score_at="native")
    with pytest.raises(FewSegError, match="missing_classes 'none'"):
        EvaluationSettings("all", 1, 1, 2, missing_classes="none")


def test_the_command_line_passes_both_options_to_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_cli(out: Path, *extra: str) -> dict:
        args = ["evaluate", "--dataset", "synthetic", "--fold", "0", "--episodes", "4"]
        assert main([*args, "--out", str(out), "--no-progress", *extra]) == 0
        return json.loads((out / "report.json").read_text())

    plain = run_cli(tmp_path / "plain")
    assert plain["settings"]["scored_at"] == "evaluation resolution 96x96"
    assert plain["settings"]["missing_classes"] == "skip"
    capsys.readouterr()
    both = run_cli(tmp_path / "both", "--score-at", "original", "--missing-classes", "zero")
    out = capsys.readouterr().out
    assert "scored at each query's original size" in out
    assert "classes without episodes count as IoU 0 in mIoU" in out
    assert both["settings"]["scored_at"].startswith("original")
    assert both["settings"]["missing_classes"] == "zero"
    # synthetic images are 96x96 already: the original size changes no score
    assert {n: both["per_class"][n] for n in plain["per_class"]} == plain["per_class"]
    missing = both["classes_without_episodes"]
    assert len(both["per_class"]) == 12 and len(missing) >= 8  # 4 episodes, 12 classes
    assert all(both["per_class"][n] == 0.0 for n in missing)
    assert both["miou"] == pytest.approx(sum(plain["per_class"].values()) / 12, abs=1e-9)


def test_a_benchmark_plan_takes_both_options_and_reuses_only_a_report_scored_alike(
    tmp_path: Path,
) -> None:
    from test_benchmark import PLAN

    from fewseg.engine.report import write_report
    from fewseg.experiments.benchmark import finished_report, read_bench_plan

    path = tmp_path / "bench.yaml"
    path.write_text(PLAN)
    assert (read_bench_plan(path).score_at, read_bench_plan(path).missing_classes) == (
        "resized",
        "skip",
    )
    path.write_text(PLAN.replace("min_class_images: 3}", "min_class_images: 3, " + OPTIONS))
    plan = read_bench_plan(path)
    assert (plan.score_at, plan.missing_classes) == ("original", "zero")
    path.write_text(PLAN.replace("min_class_images: 3}", "score_at: native}"))
    with pytest.raises(FewSegError, match=f"{path}: score_at 'native': expected one of"):
        read_bench_plan(path)
    # an earlier run's report is reused only when it was scored the same way
    report = run("original", "zero")
    write_report(tmp_path / "eval", report)
    learner = LeftHalfLearner()
    same = report.settings
    settings = EvaluationSettings(
        "all", 1, 12, 2, score_at="original", missing_classes="zero", progress=False
    )
    assert finished_report(tmp_path / "eval", learner, same.dataset, settings, [0]) == report
    for other in (
        EvaluationSettings("all", 1, 12, 2, missing_classes="zero"),
        EvaluationSettings("all", 1, 12, 2, score_at="original"),
    ):
        assert finished_report(tmp_path / "eval", learner, same.dataset, other, [0]) is None


OPTIONS = "score_at: original, missing_classes: zero}"


def test_min_class_images_leaves_out_the_classes_the_benchmark_leaves_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fold 0's twelve synthetic test classes have 8 to 14 images each
    args = ["evaluate", "--dataset", "synthetic:images=4,size=64", "--fold", "0"]
    args += ["--episodes", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "report.json").read_text())["classes_left_out"] == {}
    assert main([*args, "--min-class-images", "12", "--out", str(tmp_path / "twelve")]) == 0
    report = json.loads((tmp_path / "twelve" / "report.json").read_text())
    assert sorted(report["classes_left_out"].values()) == [8, 10, 10, 11]
    assert not set(report["classes_left_out"]) & set(report["per_class"])
    assert report["settings"]["min_class_images"] == 12
    assert "left out (fewer than 12 images): " in capsys.readouterr().out
    assert main([*args, "--min-class-images", "20", "--out", str(tmp_path / "twenty")]) == 2
    assert "no class has the 20 images a 1-shot episode needs" in capsys.readouterr().err
