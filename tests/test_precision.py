"""``--precision``: autocast where asked (bf16 runs on the CPU, so the path is tested here;
fp16 is for CUDA), fp32 weights and fp32 outputs either way, one-line errors otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import tiny_options, tiny_values

from fewseg.api import Model
from fewseg.cli import main
from fewseg.data.spec import open_source
from fewseg.engine.checkpoint import read_checkpoint
from fewseg.engine.config import resolve_config
from fewseg.engine.evaluate import EvaluationSettings, evaluate
from fewseg.engine.loading import LoadedLearner, load_learner
from fewseg.engine.precision import autocast, check_precision
from fewseg.engine.protocol import score_plan_reference
from fewseg.engine.train import train
from fewseg.errors import FewSegError
from fewseg.learners import Learner, build_learner

SOURCE = "synthetic:images=4,size=64"


def convolution_dtypes(learner: Learner) -> set[torch.dtype]:
    """The dtypes the learner's convolutions put out, recorded from now on."""
    seen: set[torch.dtype] = set()
    for module in learner.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda _, __, out: seen.add(out.dtype))
    return seen


def tiny(name: str, backbone: str = "convnet") -> Learner:
    torch.manual_seed(0)
    return build_learner(name, tiny_options(name, backbone=backbone))


def test_autocast_contexts() -> None:
    assert autocast("fp32", "cuda").__class__.__name__ == "nullcontext"
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else _no_warning():
        context = autocast("fp16", "cuda:0")
    assert (context.device, context.fast_dtype) == ("cuda", torch.float16)
    context = autocast("bf16", torch.device("cpu"))
    assert (context.device, context.fast_dtype) == ("cpu", torch.bfloat16)


class _no_warning:
    def __enter__(self) -> None: ...
    def __exit__(self, *_: object) -> None: ...


@pytest.mark.parametrize(
    ("precision", "device", "training", "message"),
    [
        ("fp8", "cpu", False, "precision 'fp8': expected one of fp32, bf16, fp16"),
        ("fp16", "cpu", False, "precision fp16 needs a CUDA device (device is 'cpu')"),
        ("fp16", "cuda", True, "precision fp16: training would need loss scaling"),
    ],
)
def test_precisions_that_cannot_run_are_one_line_errors(
    precision: str, device: str, training: bool, message: str
) -> None:
    with pytest.raises(FewSegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_precision(precision, device, training)
    assert check_precision("bf16", "cpu", training=True) == "bf16"


@pytest.mark.parametrize(
    ("name", "backbone"), [("baseline", "convnet"), ("maml", "convnet"), ("maml", "mobilenet_v2")]
)
def test_bf16_evaluation_runs_under_autocast_and_both_loops_agree(name: str, backbone: str) -> None:
    """(A frozen pretrained encoder's features are stored; the head adapts in a vmap.)"""
    source = open_source(SOURCE)
    learner = tiny(name, backbone)
    dtypes = convolution_dtypes(learner)
    settings = EvaluationSettings("0", 1, 8, 64, progress=False, precision="bf16")
    fast = evaluate(learner, source, SOURCE, settings, [0])
    assert torch.bfloat16 in dtypes
    reference = evaluate(learner, source, SOURCE, settings, [0], scorer=score_plan_reference)
    assert (fast.per_class, fast.miou, fast.fbiou) == (
        reference.per_class,
        reference.miou,
        reference.fbiou,
    )
    assert fast.settings.precision == "bf16"
    dtypes.clear()
    plain = evaluate(
        learner, source, SOURCE, EvaluationSettings("0", 1, 8, 64, progress=False), [0]
    )
    assert dtypes == {torch.float32} and plain.settings.precision == "fp32"


def test_bf16_training_keeps_fp32_weights_and_resumes_in_fp32(tmp_path: Path) -> None:
    """A frozen pretrained encoder under autocast, its features float32 for the head's vmap
    (which autocast does not reach: bf16 features there failed against fp32 weights)."""
    values = tiny_values("maml", steps=1, size=64, precision="bf16", backbone="mobilenet_v2")
    config, options = resolve_config(values, {})
    train(config, options, tmp_path / "run", progress=False)
    state = read_checkpoint(tmp_path / "run")
    assert state["train_config"]["precision"] == "bf16"
    assert {t.dtype for t in state["learner"].values() if t.is_floating_point()} == {torch.float32}
    # like the device, the precision may change on resume
    values = tiny_values("maml", steps=2, size=64, backbone="mobilenet_v2")
    config, options = resolve_config(values, {})
    train(config, options, tmp_path / "run", resume=True, progress=False)
    assert read_checkpoint(tmp_path / "run")["step"] == 2


def test_bf16_segmentation_through_the_api_gives_fp32_maps() -> None:
    learner = tiny("baseline")
    dtypes = convolution_dtypes(learner)
    model = Model(LoadedLearner(learner, None, {}, "cpu", "bf16"), size=32)
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:15] = 1
    probabilities = model.adapt([image], [mask]).probabilities([image])
    assert dtypes == {torch.bfloat16}
    assert probabilities[0].shape == (20, 30) and probabilities[0].dtype == np.float32
    with pytest.raises(FewSegError, match="precision fp16 needs a CUDA device"):
        load_learner("baseline", "cpu", precision="fp16")


def test_cli_refuses_fp16_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--learner", "baseline", "--dataset", "synthetic", "--out", str(tmp_path / "e")]
    assert main(["evaluate", *args, "--precision", "fp16"]) == 2
    assert capsys.readouterr().err == (
        "fewseg: error: precision fp16 needs a CUDA device (device is 'cpu'); use bf16 or fp32\n"
    )
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_values("maml", steps=1).items()]
    assert main(["train", *flags, "--precision=fp16", "--out", str(tmp_path / "t")]) == 2
    assert "precision fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()
