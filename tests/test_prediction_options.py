"""A trained learner loaded with other values of its prediction-only options (``imaml``'s
``centre_decay``, ``transductive``, ``support_views``, ``view_shots``): the same weights,
the predictions of the checkpoint written with those values, and one-line errors for any
option training depends on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error, evaluate_args, read_report, run_cli
from test_imaml import support_and_query
from tiny_training import tiny_options

import fewseg
from fewseg.engine.checkpoint import read_checkpoint, restore_learner, save_checkpoint
from fewseg.engine.config import TrainConfig
from fewseg.engine.loading import load_learner
from fewseg.errors import FewSegError
from fewseg.learners import build_learner
from fewseg.learners.imaml import IMAMLOptions
from fewseg.options import prediction_only_names

CHANGED = {"centre_decay": 0.25, "transductive": 1, "support_views": "mirror"}


def saved_run(run: Path, learner_name: str) -> Path:
    """A one-step ``learner_name`` run on the convnet, written as ``fewseg train`` does;
    imaml's θ₀ is set away from zero so that ``centre_decay`` has a prior to act on."""
    torch.manual_seed(0)
    learner = build_learner(learner_name, tiny_options(learner_name))
    if learner_name == "imaml":
        with torch.no_grad():
            learner.initial_weights.normal_()
    config = TrainConfig(learner=learner_name, dataset="synthetic:images=8,size=64", steps=1)
    save_checkpoint(run, 1, config, learner, learner.make_optimizer(), {"size": 64})
    return run


@pytest.fixture(scope="module")
def imaml_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_run(tmp_path_factory.mktemp("imaml"), "imaml")


def predictions(learner: torch.nn.Module) -> torch.Tensor:
    support, query = support_and_query(1)
    with torch.no_grad():
        return learner.eval().adapt(support)(query.images)


def test_imaml_declares_its_prediction_only_options() -> None:
    assert prediction_only_names(IMAMLOptions) == [
        "transductive",
        "support_views",
        "view_shots",
        "centre_decay",
    ]


def test_prediction_options_predict_as_a_checkpoint_saved_with_them(imaml_run: Path) -> None:
    loaded = load_learner(imaml_run, options=CHANGED)
    state = read_checkpoint(imaml_run)
    assert all(getattr(loaded.learner.options, k) == v for k, v in CHANGED.items())
    assert loaded.trained["prediction_options"] == CHANGED
    for key, weights in state["learner"].items():
        assert torch.equal(loaded.learner.state_dict()[key], weights)
    written_so = {**state, "learner_options": {**state["learner_options"], **CHANGED}}
    reference = restore_learner(written_so, imaml_run).eval()
    assert torch.equal(predictions(loaded.learner), predictions(reference))
    as_trained = load_learner(imaml_run).learner
    assert not torch.equal(predictions(loaded.learner), predictions(as_trained))
    assert "prediction_options" not in load_learner(imaml_run).trained


def test_the_api_takes_prediction_options_of_a_trained_learner(imaml_run: Path) -> None:
    model = fewseg.load(imaml_run, device="cpu", options={"centre_decay": 0.5})
    assert model.learner.options.centre_decay == 0.5


@pytest.mark.parametrize(
    ("learner_name", "options", "message"),
    [
        (
            "imaml",
            {"enlarge": 1, "centre_decay": 0.5},
            "option(s) enlarge of imaml stay as trained (only transductive, support_views, "
            "view_shots, centre_decay may change at prediction)",
        ),
        ("imaml", {"centre_decay": 2}, "imaml: centre_decay must be in (0, 1], got 2.0"),
        ("imaml", {"transductive": "yes"}, "option transductive must be int, got 'yes'"),
        (
            "maml",
            {"inner_steps": 3},
            "option(s) inner_steps of maml stay as trained (none may change at prediction)",
        ),
    ],
)
def test_options_a_trained_learner_cannot_take_are_errors(
    tmp_path: Path, learner_name: str, options: dict, message: str
) -> None:
    run = saved_run(tmp_path, learner_name)
    with pytest.raises(FewSegError) as error:
        load_learner(run, options=options)
    assert message in str(error.value) and "\n" not in str(error.value)


def checkpoint_args(out: Path, run: Path, *extra: str) -> list[str]:
    argv = evaluate_args(out, *extra, episodes=4)
    argv[argv.index("--learner") : argv.index("--learner") + 2] = ["--checkpoint", str(run)]
    return argv


def test_evaluate_takes_a_prediction_option_on_a_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, imaml_run: Path
) -> None:
    argv = checkpoint_args(tmp_path / "ev", imaml_run, "--learner-option", "centre_decay=0.5")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    settings = read_report(tmp_path / "ev")["settings"]
    assert settings["learner"]["centre_decay"] == 0.5
    assert settings["trained"]["prediction_options"] == {"centre_decay": 0.5}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--learner-option", "enlarge=1"], "option(s) enlarge of imaml stay as trained"),
        (["--weights", "w.pth"], "--weights goes with --learner"),
    ],
)
def test_checkpoint_options_on_the_command_line_are_one_line_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    imaml_run: Path,
    extra: list[str],
    message: str,
) -> None:
    argv = checkpoint_args(tmp_path / "ev", imaml_run, *extra)
    assert_one_line_error(*run_cli(capsys, *argv), message)
