"""What every registered learner must do, checked over the registry: a new learner is
covered by these tests as soon as it is registered."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from tiny_training import tiny_options

from fewseg.data.spec import open_source
from fewseg.engine.checkpoint import read_checkpoint, restore_learner, save_checkpoint
from fewseg.engine.config import TrainConfig
from fewseg.engine.features import FeatureStore, attached, evaluation_stores
from fewseg.engine.train import training_batch
from fewseg.episodes.sampler import episode_plan
from fewseg.episodes.tensors import EpisodeTensors, load_resized_episode
from fewseg.errors import FewSegError
from fewseg.learners import LEARNERS, Learner, build_learner
from fewseg.models.encoder import Encoder
from fewseg.options import (
    as_dict,
    field_names,
    option_help,
    options_from,
    prediction_only_names,
)

NAMES = [entry.name for entry in LEARNERS]
TRAINABLE = [entry.name for entry in LEARNERS if entry.factory.trainable]
# each learner, and each on the class-agnostic correlation model where it can run on it
CORRELATION = [n for n in NAMES if "model" in field_names(LEARNERS.get(n).Options)]
VARIANTS = NAMES + [f"{n}+correlation" for n in CORRELATION]
TRAINABLE_VARIANTS = [v for v in VARIANTS if v.partition("+")[0] in TRAINABLE]
SOURCE = "synthetic:images=6,size=64"


def tiny(variant: str, seed: int = 0, **overrides: object) -> Learner:
    """The learner ``variant`` names (``NAME`` or ``NAME+MODEL``), small."""
    name, _, model = variant.partition("+")
    if model:  # the correlation model taps MobileNetV2's own blocks
        overrides = {"model": model, "backbone": "mobilenet_v2", **overrides}
    torch.manual_seed(seed)
    return build_learner(name, tiny_options(name, **{"backbone": "mobilenet_v2_s8", **overrides}))


@pytest.fixture(scope="module")
def episodes() -> list[EpisodeTensors]:
    source = open_source(SOURCE)
    plan = episode_plan(source, source.fold_split("0").test, 2, 3, seed=0)
    return [load_resized_episode(source, e, 48) for e in plan.episodes]


@pytest.fixture(scope="module")
def training_episodes() -> list[EpisodeTensors]:
    source = open_source(SOURCE)
    config = TrainConfig(meta_batch=2, shots=1)
    return training_batch(source, source.fold_split("0").train, config, 48, 0)


def predictions(learner: Learner, episode: EpisodeTensors) -> torch.Tensor:
    learner.eval()
    queries = torch.cat([episode.query.images, episode.support.images[:1]])
    with torch.no_grad():
        return learner.adapt(episode.support)(queries)


@pytest.mark.parametrize("name", NAMES)
def test_options_are_declared_with_help_and_checked(name: str) -> None:
    options_class = LEARNERS.get(name).Options
    for declared in fields(options_class):
        assert option_help(declared), f"{name}: option {declared.name} has no help text"
    defaults = options_class()
    assert options_from(options_class, as_dict(defaults), "test") == defaults
    with pytest.raises(FewSegError, match=f"unknown option\\(s\\) of learner {name}: colour"):
        build_learner(name, {"colour": "red"})
    settings = tiny(name).settings()
    assert settings["learner"] == name
    assert {f.name for f in fields(options_class)} <= set(settings)


@pytest.mark.parametrize("name", VARIANTS)
def test_adapt_gives_logits_at_input_resolution(name: str, episodes: list) -> None:
    logits = predictions(tiny(name), episodes[0])
    assert logits.shape[0] == 2 and logits.shape[1] in (1, 2) and logits.shape[2:] == (48, 48)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_the_same_seed_gives_the_same_learner_and_predictions(name: str, episodes: list) -> None:
    first, second = tiny(name), tiny(name)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert torch.equal(predictions(first, episodes[0]), predictions(second, episodes[0]))
    assert torch.equal(predictions(first, episodes[0]), predictions(first, episodes[0]))


@pytest.mark.parametrize("name", VARIANTS)
def test_the_encoder_is_support_independent(name: str, episodes: list) -> None:
    """The engine may answer the encoder's calls from features computed before."""
    learner = tiny(name)
    if learner.encoder is None:
        pytest.skip(f"{name}: adaptation changes the whole network")
    assert isinstance(learner.encoder, Encoder)
    plain = [predictions(learner, e) for e in episodes]
    stores = evaluation_stores(learner)
    with attached(stores):
        stored = [predictions(learner, e) for e in episodes]
    store = next(iter(stores.values()))
    assert isinstance(store, FeatureStore) and len(store) > 0
    for a, b in zip(plain, stored, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# a value other than the default of every prediction-only option in the registry
PREDICTION_VALUES = {
    "transductive": 1,
    "support_views": "mirror",
    "view_shots": 5,
    "centre_decay": 0.25,
}
PREDICTING = [n for n in TRAINABLE if prediction_only_names(LEARNERS.get(n).Options)]


def test_every_prediction_only_option_has_a_value_to_test() -> None:
    declared = {o for n in NAMES for o in prediction_only_names(LEARNERS.get(n).Options)}
    assert declared == set(PREDICTION_VALUES)


@pytest.mark.parametrize("name", PREDICTING)
def test_training_reads_no_prediction_only_option(
    name: str, training_episodes: list, episodes: list
) -> None:
    """Meta-gradients are the same whatever the prediction-only options' values (so a
    trained learner may take others); predictions are not. The outer parameters are moved
    off their initial values first (imaml's θ₀ = 0 leaves centre_decay nothing to act on)."""
    changed = {k: PREDICTION_VALUES[k] for k in prediction_only_names(LEARNERS.get(name).Options)}
    gradients, predicted = [], []
    for overrides in ({}, changed):
        learner = tiny(name, **overrides)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in learner.outer_parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator))
        learner.train().zero_grad(set_to_none=True)
        learner.meta_gradients(training_episodes)
        gradients.append([p.grad for p in learner.outer_parameters()])
        predicted.append(predictions(learner, episodes[0]))
    for plain, other in zip(*gradients, strict=True):
        assert (plain is None and other is None) or torch.equal(plain, other)
    assert not torch.equal(*predicted)


@pytest.mark.parametrize("name", TRAINABLE_VARIANTS)
def test_a_training_step_moves_the_outer_parameters(name: str, training_episodes: list) -> None:
    learner = tiny(name).train()
    optimizer = learner.make_optimizer()
    before = [p.detach().clone() for p in learner.outer_parameters()]
    optimizer.zero_grad(set_to_none=True)
    metrics = learner.meta_gradients(training_episodes)
    assert "loss" in metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    optimizer.step()
    moved = [
        not torch.equal(a, p.detach())
        for a, p in zip(before, learner.outer_parameters(), strict=True)
    ]
    assert any(moved)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in TRAINABLE])
def test_a_training_free_learner_refuses_to_train(name: str, training_episodes: list) -> None:
    learner = tiny(name)
    with pytest.raises(FewSegError, match="training-free"):
        learner.meta_gradients(training_episodes)
    with pytest.raises(FewSegError, match="training-free"):
        learner.make_optimizer()


@pytest.mark.parametrize("name", TRAINABLE_VARIANTS)
def test_a_saved_learner_loads_with_the_same_predictions(
    name: str, episodes: list, training_episodes: list, tmp_path
) -> None:
    learner = tiny(name).train()
    optimizer = learner.make_optimizer()
    learner.meta_gradients(training_episodes)
    optimizer.step()
    config = TrainConfig(learner=name.partition("+")[0], dataset=SOURCE, steps=1)
    save_checkpoint(tmp_path, 1, config, learner, optimizer, {"size": 48})
    state = read_checkpoint(tmp_path)
    assert state["learner_name"] == config.learner and state["learner_options"] == as_dict(
        learner.options
    )
    restored = restore_learner(state, tmp_path)
    assert type(restored) is type(learner) and restored.options == learner.options
    assert torch.equal(predictions(restored, episodes[1]), predictions(learner, episodes[1]))


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("name", VARIANTS)
def test_no_batchnorm_running_statistic_ever_changes(
    name: str, freeze: bool, training_episodes: list, episodes: list
) -> None:
    trainable = name.partition("+")[0] in TRAINABLE
    overrides = {"freeze_backbone": freeze} if trainable else {}
    if not freeze and not trainable:
        pytest.skip("a training-free learner's backbone is always frozen")
    learner = tiny(name, **overrides)
    before = {k: v.clone() for k, v in learner.state_dict().items() if "running" in k}
    assert before, "the MobileNetV2 backbone has BatchNorm buffers"
    learner.train()
    if learner.trainable:
        learner.meta_gradients(training_episodes)
    predictions(learner, episodes[0])
    after = learner.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    learner.train()
    batchnorms = [m for m in learner.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
