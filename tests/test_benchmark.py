"""The benchmark pipeline on a tiny plan, and its fold/seed statistics by hand."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from fewseg.data.spec import open_source
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.feature_disk import FeatureDisk
from fewseg.errors import FewSegError
from fewseg.experiments.benchmark import (
    FEATURES_DIR,
    BenchPlan,
    BenchTask,
    bench_tasks,
    collect_results,
    read_bench_plan,
    recorded_seconds,
    run_benchmark,
    summarize_folds,
)
from fewseg.experiments.demo import prepare_learner
from fewseg.experiments.results_page import component_table, target_lines, write_results

PLAN = """
dataset: "synthetic:images=8,size=64"
folds: ["0", "1"]
cross_domain: {other: "synthetic:seed=1,images=8,size=64"}
train: {shots: 1, steps: 2, meta_batch: 2, backbone: convnet, hidden: 8, inner_steps: 1,
        val_every: 0, checkpoint_every: 2}
learners:
  protonet: {}
  finetune: {}
evaluate: {shots: [1, 2], episodes: 4, seeds: [0, 1], min_class_images: 3}
quick: {folds: ["1"], episodes: 2, seeds: [3], steps: 1}
"""


def plan_with_entry(tmp_path: Path, entry: str) -> BenchPlan:
    """:data:`PLAN` with one more learner entry (``name: {options}``), read."""
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN.replace("  finetune: {}", "  finetune: {}\n  " + entry))
    return read_bench_plan(path)


def scores(outcome: dict) -> dict:
    return {
        (name, dataset, shots, fold): (e["miou"], e["fbiou"], e["seed_miou"])
        for name, by_dataset in outcome["results"].items()
        for dataset, by_shots in by_dataset.items()
        for shots, entry in by_shots.items()
        for fold, e in entry["per_fold"].items()
    }


def test_summary_is_fold_mean_per_seed_then_statistics_over_seeds() -> None:
    per_fold = {
        "0": {"miou": 10.0, "fbiou": 50.0, "seed_miou": [10.0, 20.0]},
        "1": {"miou": 30.0, "fbiou": 70.0, "seed_miou": [30.0, 60.0]},
    }
    summary = summarize_folds(per_fold)
    assert summary["mean"] == 20.0  # first seed, mean of folds
    assert summary["fbiou_mean"] == 60.0
    assert summary["boundary_mean"] is None  # reports from before boundary IoU
    per_fold["0"]["boundary_iou"], per_fold["1"]["boundary_iou"] = 4.0, 6.0
    assert summarize_folds(per_fold)["boundary_mean"] == 5.0
    assert summary["seeds_mean"] == 30.0  # fold means per seed: 20, 40
    assert summary["std"] == pytest.approx(10.0)


def test_quick_overrides(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN)
    plan = read_bench_plan(path, quick=True)
    assert (plan.folds, plan.episodes, plan.seeds, plan.train["steps"]) == (["1"], 2, [3], 1)
    full = read_bench_plan(path)
    assert (full.folds, full.episodes, full.seeds, full.train["steps"]) == (
        ["0", "1"],
        4,
        [0, 1],
        2,
    )


def test_quick_overrides_an_entrys_own_training_too(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN.replace("  finetune: {}", "  finetune: {steps: 40, meta_batch: 3}"))
    assert read_bench_plan(path, quick=True).learners["finetune"] == {"steps": 1, "meta_batch": 3}
    assert read_bench_plan(path).learners["finetune"] == {"steps": 40, "meta_batch": 3}


@pytest.mark.parametrize("plan", ["bench.yaml", "ablation.yaml"])
def test_the_repository_plans_read_with_every_entry_checked(plan: str) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / plan
    for quick in (False, True):
        read = read_bench_plan(path, quick=quick)
        assert read.learners and read.shots == [1, 5]


def test_tasks_start_longest_first_by_the_seconds_an_earlier_run_recorded(
    tmp_path: Path,
) -> None:
    plan = plan_with_entry(tmp_path, "reptile: {inner_steps: 1}")
    work = {
        "protonet": {"0": 30.0, "1": 5.0},
        "finetune": {"0": 20.0, "1": 40.0},
        "reptile": {"0": 10.0, "1": 25.0},
    }
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"work_seconds": work, "results": {}}))
    recorded = recorded_seconds(results)
    assert recorded == work
    assert bench_tasks(plan, recorded) == [
        BenchTask(*t)
        for t in [
            ("1", "finetune"),
            ("0", "protonet"),
            ("1", "reptile"),
            ("0", "finetune"),
            ("0", "reptile"),
            ("1", "protonet"),
        ]
    ]
    # a task without a recorded time (a new entry or fold): entries with their own inner
    # steps after those on the correlation model (none here), the rest in plan order
    work["protonet"]["1"] = None  # type: ignore[assignment]
    family = [(t.learner, t.fold) for t in bench_tasks(plan, work)]
    assert family == [(n, f) for n in ("reptile", "protonet", "finetune") for f in ("0", "1")]
    assert bench_tasks(plan, None) == bench_tasks(plan, work)
    results.write_text("{not json")
    assert recorded_seconds(results) is None
    results.write_text(json.dumps({"work_seconds": {"protonet": 30.0}}))
    assert recorded_seconds(results) is None
    assert recorded_seconds(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{inner_stesp: 3}",
            r"bench\.yaml \(finetune\): unknown option\(s\) of finetune: inner_stesp$",
        ),
        (
            "{shot_models: {5: {inner_lr: 1}}}",
            r"bench\.yaml: finetune: shot_models names shot counts \[5\] that are not evaluated",
        ),
        ("{shot_models: [1]}", "finetune: shot_models must map a shot count to options"),
    ],
)
def test_a_bad_entry_is_an_error_when_the_plan_is_read(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN.replace("  finetune: {}", f"  finetune: {entry}"))
    with pytest.raises(FewSegError, match=message):
        read_bench_plan(path)


def test_tiny_benchmark_writes_results(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN)
    plan = read_bench_plan(path)
    outcome = run_benchmark(plan, tmp_path / "runs", progress=False)
    page = write_results(plan, outcome, tmp_path / "docs", "fewseg bench --config bench.yaml")
    data = json.loads((tmp_path / "docs/results.json").read_text())
    assert set(data["results"]) == {"protonet", "finetune"}
    entry = data["results"]["protonet"]["synthetic:images=8,size=64"]["2shot"]
    assert set(entry["per_fold"]) == {"0", "1"}
    assert entry["mean"] == pytest.approx(
        (entry["per_fold"]["0"]["miou"] + entry["per_fold"]["1"]["miou"]) / 2
    )
    report = json.loads((tmp_path / "runs/fold1/eval/protonet-other-1shot/report.json").read_text())
    assert report["settings"]["fold"] == "all"
    other = data["results"]["protonet"]["other"]["1shot"]["per_fold"]["1"]
    assert other["miou"] == report["runs"][0]["miou"]
    text = page.read_text()
    assert "## other" in text and "Published anchors" in text and "## Targets" in text
    assert "boundary IoU" in text
    assert entry["boundary_mean"] == pytest.approx(
        (entry["per_fold"]["0"]["boundary_iou"] + entry["per_fold"]["1"]["boundary_iou"]) / 2
    )
    assert other["boundary_iou"] == report["runs"][0]["boundary_iou"]
    assert "## Examples" in text
    for dataset in ("synthetic:images=8,size=64", "other"):  # the best learner's grid each
        means = {n: r[dataset]["1shot"]["mean"] for n, r in data["results"].items()}
        best = max(means, key=means.__getitem__)
        shown = sorted(
            p.name for p in (tmp_path / "docs/figures").glob(f"examples-*-{dataset}.jpg")
        )
        assert shown == [f"examples-{best}-{dataset}.jpg"]
    assert (tmp_path / "docs/figures/results-other.png").stat().st_size > 1000


def test_cross_domain_seeds_apply_to_the_other_datasets_only(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(
        PLAN.replace("min_class_images: 3}", "min_class_images: 3, cross_domain_seeds: [7]}")
    )
    plan = read_bench_plan(path)
    assert plan.seeds_for("other") == [7]
    assert plan.seeds_for(plan.dataset_name) == [0, 1]
    assert read_bench_plan(tmp_path / "bench.yaml", quick=True).seeds_for("other") == [7]


def test_two_jobs_give_the_results_of_one(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN)
    plan = read_bench_plan(path)
    serial = run_benchmark(plan, tmp_path / "serial", progress=False, jobs=1)
    parallel = run_benchmark(plan, tmp_path / "parallel", progress=False, jobs=2)
    assert parallel["jobs"] == 2

    assert scores(parallel) == scores(serial)  # the tasks' shared features as their own
    assert not any((tmp_path / run / FEATURES_DIR).exists() for run in ("serial", "parallel"))
    assert list(parallel["results"]["protonet"]["other"]["1shot"]["per_fold"]) == ["0", "1"]
    overlay = Path(parallel["overlays"]["finetune"]["other"])
    assert overlay.parent == tmp_path / "parallel/fold0/overlays" and overlay.stat().st_size > 1000


def test_a_training_free_entry_is_evaluated_cross_domain_once_for_every_fold(
    tmp_path: Path,
) -> None:
    plan = plan_with_entry(tmp_path, "baseline: {}")
    outcome = run_benchmark(plan, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs/fold1/eval/baseline-other-1shot").exists()
    assert (tmp_path / "runs/fold1/eval/protonet-other-1shot/report.json").is_file()
    assert (tmp_path / "runs/fold1/eval/baseline-synthetic:images=8,size=64-1shot").is_dir()
    for shots in ("1shot", "2shot"):
        per_fold = outcome["results"]["baseline"]["other"][shots]["per_fold"]
        assert list(per_fold) == ["0", "1"]
        assert per_fold["1"]["same_as_fold"] == "0" and per_fold["1"]["seconds"] == 0.0
        assert "same_as_fold" not in per_fold["0"] and per_fold["0"]["seconds"] > 0
    # what an evaluation of its own on fold 1's plan scores: the shared numbers
    shared = outcome["results"]["baseline"]["other"]["2shot"]["per_fold"]["1"]
    learner, _ = prepare_learner(plan.fold_plan("1"), "baseline", tmp_path / "own", False)
    settings = EvaluationSettings("all", 2, 4, 64, progress=False, min_class_images=3)
    spec = plan.cross_domain["other"]
    own = evaluate(learner, open_source(spec), spec, settings, [0, 1])
    assert shared["seed_miou"] == [run.miou for run in own.runs]
    assert shared["seed_fbiou"] == [run.fbiou for run in own.runs]
    assert (
        outcome["results"]["protonet"]["other"]["2shot"]["per_fold"]["1"].get("same_as_fold")
        is None
    )


def test_an_interrupted_benchmark_reuses_its_finished_training_and_evaluations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(PLAN)
    plan = read_bench_plan(path)
    first = run_benchmark(plan, tmp_path / "runs", progress=False)
    report = tmp_path / "runs/fold0/eval/finetune-other-2shot/report.json"
    checkpoint = tmp_path / "runs/fold0/train/finetune/checkpoint.pt"
    written = (report.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)
    stale = tmp_path / "runs/fold1/eval/protonet-other-1shot/report.json"
    data = json.loads(stale.read_text())
    data["settings"]["episodes"] = 999  # another evaluation's report: not reused
    stale.write_text(json.dumps(data))
    # a report written before an option existed stands for its default: reused
    older = tmp_path / "runs/fold1/eval/finetune-other-1shot/report.json"
    data = json.loads(older.read_text())
    assert data["settings"]["learner"].pop("probe") == "none"
    older.write_text(json.dumps(data))
    older_written = older.stat().st_mtime_ns
    # a report of the learner with another option value: not reused
    other = tmp_path / "runs/fold0/eval/protonet-other-1shot/report.json"
    data = json.loads(other.read_text())
    data["settings"]["learner"]["alignment_weight"] = 0.5
    other.write_text(json.dumps(data))
    again = run_benchmark(plan, tmp_path / "runs", progress=False)
    assert (report.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == written
    assert older.stat().st_mtime_ns == older_written
    assert json.loads(stale.read_text())["settings"]["episodes"] == 4  # evaluated again
    assert json.loads(other.read_text())["settings"]["learner"]["alignment_weight"] == 1.0
    assert scores(again) == scores(first)
    unchanged = again["work_seconds"]["finetune"]["0"]
    assert unchanged == pytest.approx(first["work_seconds"]["finetune"]["0"])


def test_targets_compare_the_best_entries_of_each_family_with_the_better_control(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(
        PLAN.replace(
            "  protonet: {}\n  finetune: {}",
            "  maml: {}\n  maml-corr: {learner: maml, model: correlation, probe: mean}\n"
            "  protonet: {}\n"
            "  finetune: {}\n  finetune-corr: {learner: finetune, model: correlation}\n"
            "  baseline: {}\n  probe: {}",
        ).replace('dataset: "synthetic:images=8,size=64"', 'dataset: "coco:x"\ndataset_name: coco')
    )
    plan = read_bench_plan(path)
    means = {  # entry → (coco 1-shot, coco 2-shot, other 1-shot, other 2-shot)
        "maml": (20.0, 24.0, 10.0, 12.0),
        "maml-corr": (26.0, 29.0, 11.0, 13.0),
        "protonet": (27.0, 31.0, 14.0, 18.0),
        "finetune": (21.0, 28.0, 9.0, 10.0),
        "finetune-corr": (23.0, 27.5, 12.0, 17.0),
        "baseline": (22.0, 25.0, 13.0, 19.0),
        "probe": (10.0, 28.5, 13.5, 15.0),  # a third control, where the plan has it
    }
    results = {
        name: {
            dataset: {"1shot": {"mean": v[2 * d]}, "2shot": {"mean": v[2 * d + 1]}}
            for d, dataset in enumerate(["coco", "other"])
        }
        for name, v in means.items()
    }
    assert target_lines(plan, results) == [
        "- best meta-learned 1-shot mean mIoU ≥ 25 (stretch 30): met (protonet: 27.0)",
        "- coco 1-shot, best MAML-family beats the controls by ≥ 2: met "
        "(maml-corr 26.0 vs finetune-corr 23.0: +3.0)",
        "- coco 2-shot, best MAML-family beats the controls by ≥ 2: MISSED "
        "(maml-corr 29.0 vs probe 28.5: +0.5)",
        "- other 1-shot, best meta-learned beats the controls by ≥ 2: MISSED "
        "(protonet 14.0 vs probe 13.5: +0.5)",
        "- other 2-shot, best meta-learned beats the controls by ≥ 2: MISSED "
        "(protonet 18.0 vs baseline 19.0: -1.0)",
    ]
    assert component_table(plan, results).splitlines()[2:] == [
        "maml           maml      head         -      -      0       convnet   20.0    24.0",
        "maml-corr      maml      correlation  on     mean   0       convnet   26.0    29.0",
        "protonet       protonet  prototypes   -      -      0       convnet   27.0    31.0",
        "finetune       finetune  head         -      -      0       convnet   21.0    28.0",
        "finetune-corr  finetune  correlation  on     none   0       convnet   23.0    27.5",
        "baseline       baseline  -            -      -      -       convnet   22.0    25.0",
        "probe          probe     -            -      -      -       convnet   10.0    28.5",
    ]
    # a value that one decimal would round onto the goal is shown to two
    results["protonet"]["coco"]["1shot"]["mean"] = 24.97
    results["maml-corr"]["coco"]["1shot"]["mean"] = 24.9
    results["maml-corr"]["coco"]["2shot"]["mean"] = 30.48  # margin 1.98 over the probe
    lines = target_lines(plan, results)
    assert lines[0].endswith("(stretch 30): MISSED (protonet: 24.97)")
    assert lines[2].endswith("MISSED (maml-corr 30.5 vs probe 28.5: +1.98)")


def test_a_report_from_before_an_option_that_changed_the_default_is_evaluated_again(
    tmp_path: Path,
) -> None:
    """probe reports written before ``enlarge`` existed were made at 1 (its ``before``):
    reused for a probe at 1, evaluated again for one at the new default."""
    from fewseg.data.spec import open_source
    from fewseg.engine.evaluate import EvaluationSettings, evaluate
    from fewseg.engine.report import write_report
    from fewseg.experiments.benchmark import finished_report
    from fewseg.learners import build_learner

    spec = "synthetic:images=4,size=64"
    settings = EvaluationSettings("0", 1, 2, 64, progress=False)
    as_given = build_learner("probe", {"enlarge": 1})
    write_report(tmp_path, evaluate(as_given, open_source(spec), spec, settings, [0]))
    report = tmp_path / "report.json"
    data = json.loads(report.read_text())
    assert data["settings"]["learner"].pop("enlarge") == 1.0
    report.write_text(json.dumps(data))
    assert finished_report(tmp_path, as_given, spec, settings, [0]) is not None
    assert finished_report(tmp_path, build_learner("probe"), spec, settings, [0]) is None


ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from fewseg.experiments.benchmark import _init_worker

def work(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(300)

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        1, mp_context=context, initializer=_init_worker,
        initargs=(1, Path(sys.argv[1] + ".features")), max_tasks_per_child=1
    )
    pool.submit(work, sys.argv[1])
    time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has stopped; only its parent's reaping is left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_stops_when_the_benchmark_process_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of ``fewseg bench`` must not leave its workers running their tasks."""
    import subprocess
    import sys
    import time

    script = tmp_path / "bench_like.py"
    script.write_text(ORPHAN_SCRIPT)
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _running(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(worker)


def test_tasks_read_the_features_of_a_frozen_backbone_an_earlier_task_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe on two folds (one process): the second task's frozen backbone reads from
    the run's feature disk what the first computed, and scores as it would alone."""
    path = tmp_path / "bench.yaml"
    path.write_text(
        PLAN.split("train:")[0]
        + "train: {backbone: mobilenet_v2}\nlearners:\n  probe: {enlarge: 1}\n"
        + PLAN.split("  finetune: {}\n")[1]
    )
    plan = read_bench_plan(path)
    read: list[bool] = []
    load = FeatureDisk.load

    def counted(self: FeatureDisk, encoder: object, key: object) -> object:
        found = load(self, encoder, key)  # type: ignore[arg-type]
        read.append(found is not None)
        return found

    monkeypatch.setattr(FeatureDisk, "load", counted)
    shared = run_benchmark(plan, tmp_path / "shared", progress=False, jobs=1)
    assert any(read)
    monkeypatch.setattr(FeatureDisk, "load", lambda self, encoder, key: None)
    alone = run_benchmark(plan, tmp_path / "alone", progress=False, jobs=1)
    assert scores(shared) == scores(alone)


def test_an_entry_with_a_model_per_shot_count_scores_as_the_entries_it_combines(
    tmp_path: Path,
) -> None:
    """``shot_models: {1: {...}}``: 1-shot episodes are scored by a model trained with those
    options overridden, the other shot counts by the entry's own; each equals the plain entry
    trained with the same options."""
    path = tmp_path / "bench.yaml"
    entries = (
        "  finetune: {}\n"
        "  finetune-k: {learner: finetune, shot_models: {1: {inner_lr: 0.1}}}\n"
        "  finetune-a: {learner: finetune, inner_lr: 0.1}"
    )
    path.write_text(PLAN.replace("  protonet: {}\n", "").replace("  finetune: {}", entries))
    plan = read_bench_plan(path)
    assert plan.shot_models == {"finetune-k": {1: {"inner_lr": 0.1}}}
    assert "shot_models" not in plan.learners["finetune-k"]
    assert plan.entry_settings("finetune-k")["shot_models"] == {1: {"inner_lr": 0.1}}
    assert [plan.model_entry("finetune-k", k) for k in (1, 2)] == ["finetune-k@1shot", "finetune-k"]
    outcome = run_benchmark(plan, tmp_path / "runs", progress=False)
    got = scores(outcome)
    for name in (plan.dataset_name, "other"):
        for fold in ("0", "1"):
            assert got["finetune-k", name, "1shot", fold] == got["finetune-a", name, "1shot", fold]
            assert got["finetune-k", name, "2shot", fold] == got["finetune", name, "2shot", fold]
    for fold in ("0", "1"):
        assert (tmp_path / f"runs/fold{fold}/train/finetune-k@1shot/checkpoint.pt").is_file()
        one = json.loads(
            (tmp_path / f"runs/fold{fold}/eval/finetune-k-other-1shot/report.json").read_text()
        )
        assert one["settings"]["learner"]["inner_lr"] == 0.1
    page = write_results(plan, outcome, tmp_path / "docs", "fewseg bench").read_text()
    assert "- `finetune-k`: {'learner': 'finetune', 'shot_models': {1: {'inner_lr': 0.1}}}" in page


def test_a_task_process_that_ends_abruptly_is_a_one_line_error() -> None:
    """A worker killed (as the kernel does for want of memory) breaks the pool: the
    benchmark stops with one line that says how far it got and that a rerun goes on."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        futures = [pool.submit(os._exit, 1), pool.submit(time.sleep, 0)]
        with pytest.raises(FewSegError) as error:
            collect_results(futures, 2)
    message = str(error.value)
    assert "\n" not in message
    assert "a task's process ended abruptly" in message
    assert "after 0 of 2 tasks finished" in message
    assert "the same command goes on from there" in message
