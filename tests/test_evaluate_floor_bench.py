"""benchmarks/evaluate_floor.py runs end to end on the synthetic source and reports, with
``--repeats``, each learner's median ratio over its runs."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "evaluate_floor.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("evaluate_floor_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_repeats_give_the_median_of_the_runs(bench, capsys) -> None:
    bench.main(
        [
            "--dataset",
            "synthetic",
            "--episodes",
            "6",
            "--size",
            "64",
            "--learners",
            "baseline",
            "--threads",
            "1",
            "--repeats",
            "3",
            "--malloc-defaults",
        ]
    )
    out = capsys.readouterr().out
    runs = [
        float(r)
        for r in re.findall(r"^baseline +evaluate .*ratio evaluate/floor = ([\d.]+)", out, re.M)
    ]
    assert len(runs) == 3
    summary = re.search(r"median ratio evaluate/floor = ([\d.]+) over 3 runs \((.*)\)", out)
    assert summary is not None
    assert [float(r) for r in summary.group(2).split(", ")] == [round(r, 2) for r in runs]
    assert float(summary.group(1)) == sorted(round(r, 2) for r in runs)[1]
    assert "mIoU" in out


def test_repeats_must_be_positive(bench) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--dataset", "synthetic", "--repeats", "0"])
