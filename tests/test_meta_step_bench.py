"""benchmarks/meta_step.py: its peak-memory measurement, and (where the peers are installed,
``make bench-peers``) the agreement of the four MAML implementations it times."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from fewseg.data.spec import open_source
from fewseg.engine.config import TrainConfig
from fewseg.engine.train import training_batch
from fewseg.learners import build_learner

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "meta_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("meta_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_peak_memory_is_the_largest_running_total_of_allocations(bench):
    kept = []

    def allocate():
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(2000, dtype=torch.float64)  # 16000: 20000 in all
        del a  # 16000
        c = torch.empty(3000)  # 12000: 28000, the peak
        del b, c  # 0
        kept.append(torch.empty(100, dtype=torch.int16))  # 200, outlives the call

    assert bench.peak_memory_bytes(allocate) == 28000
    assert kept[0].nbytes == 200


def test_peak_memory_counts_only_memory_allocated_during_the_call(bench):
    """The profiler does not see a block allocated before it started being freed: the peak
    is that of the memory the call itself allocated (a step frees nothing older)."""
    before = [torch.empty(10_000)]  # 40000 bytes, allocated before the call

    def free_then_allocate():
        before.pop()  # not seen
        x = torch.empty(5000)  # 20000
        del x  # 0
        return torch.empty(2500, dtype=torch.float64)  # 20000

    assert bench.peak_memory_bytes(free_then_allocate) == 20000


@pytest.fixture(scope="module")
def episodes():
    source = open_source("synthetic")
    classes = source.fold_split("0").train
    return training_batch(source, classes, TrainConfig(meta_batch=2), 48, step=0)


def maml_learner(frozen_encoder: bool):
    torch.manual_seed(0)
    learner = build_learner("maml", {"backbone": "convnet", "hidden": 16})
    if frozen_encoder:
        learner.model.encoder.freeze()
    return learner.train()


def import_peers_or_skip(bench):
    for name in bench.PEERS:
        pytest.importorskip(name)


@pytest.mark.parametrize("frozen_encoder", [False, True], ids=["all-adapted", "head-only"])
def test_peers_meta_gradients_agree_with_fewseg(bench, episodes, frozen_encoder):
    import_peers_or_skip(bench)
    learner = maml_learner(frozen_encoder)
    setup = bench.Bench(learner)
    assert learner.head_only == frozen_encoder
    for first_order in (False, True):
        for inner_steps in (1, 2):
            setting = bench.Setting(inner_steps, len(episodes), first_order)
            agreement = bench.check_agreement(setup, setting, bench.PEERS, episodes)
            for differences in (agreement.float64, agreement.float32):
                assert set(differences) == {*bench.PEERS, bench.PER_TASK}
            # float64: the same mathematics, up to float64 rounding
            assert all(d <= 1e-12 for d in agreement.float64.values()), (setting, agreement)
            assert all(d <= bench.TOLERANCE for d in agreement.float32.values()), agreement
    # the meta-learned weights are as they were: every method ran from the same state
    for p, p0 in zip(setup.params, setup.initial, strict=True):
        assert torch.equal(p, p0)
    twin = setup.float64()
    assert all(p.dtype == torch.float64 for p in twin.learner.parameters())
    for p, p0 in zip(twin.params, setup.initial, strict=True):
        assert torch.equal(p, p0.double())


def test_only_the_float64_differences_decide(bench, episodes, monkeypatch):
    """A tolerance that float32 rounding exceeds but float64's does not passes; a method
    whose float64 meta-gradient is off fails."""
    import_peers_or_skip(bench)
    setup = bench.Bench(maml_learner(frozen_encoder=True))
    setting = bench.Setting(1, len(episodes), first_order=False)
    agreement = bench.check_agreement(setup, setting, ["higher"], episodes, tolerance=1e-11)
    assert max(agreement.float32.values()) > 1e-11
    assert max(agreement.float64.values()) <= 1e-11

    functions = bench.meta_gradient_functions

    def off_in_float64(learner, setting, peers):
        built = functions(learner, setting, peers)
        if next(learner.parameters()).dtype == torch.float64:
            higher = built["higher"]

            def wrong(episodes):
                higher(episodes)
                for p in learner.outer_parameters():
                    p.grad += 1e-4

            built["higher"] = wrong
        return built

    monkeypatch.setattr(bench, "meta_gradient_functions", off_in_float64)
    with pytest.raises(AssertionError, match=r"float64 meta-gradients disagree.*higher"):
        bench.check_agreement(setup, setting, ["higher"], episodes)
