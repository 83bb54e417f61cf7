"""Reptile's outer update against hand-computed inner loops on copies of the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from rectangle_episodes import rectangle_episode
from torch import nn

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.errors import FewSegError
from fewseg.learners import LEARNERS
from fewseg.learners.losses import foreground_bce
from fewseg.learners.reptile import Reptile, ReptileOptions

SIZE = 16


def make_episode(seed: int, shots: int = 1) -> EpisodeTensors:
    return rectangle_episode(seed, shots, SIZE, (8, 8), np.s_[0, :])


def config(**overrides: object) -> ReptileOptions:
    values: dict[str, object] = {"backbone": "convnet", "hidden": 8, "inner_steps": 3}
    return ReptileOptions(**{**values, **overrides})  # type: ignore[arg-type]


def manual_adapt(
    model: nn.Module, examples: LabelledImages, cfg: ReptileOptions, head_only: bool = False
) -> nn.Module:
    """``inner_steps`` steps of torch.optim on a deepcopy, loss through the module itself."""
    adapted = copy.deepcopy(model)
    params = list((adapted.head if head_only else adapted).parameters())
    optimizer_class = torch.optim.Adam if cfg.reptile_optimizer == "adam" else torch.optim.SGD
    optimizer = optimizer_class(params, lr=cfg.inner_lr)
    for _ in range(cfg.inner_steps):
        optimizer.zero_grad()
        foreground_bce(adapted(examples.images), examples.masks, examples.ignore).backward()
        optimizer.step()
    return adapted


def bce(model: nn.Module, examples: LabelledImages) -> float:
    with torch.no_grad():
        return foreground_bce(model(examples.images), examples.masks, examples.ignore).item()


@pytest.mark.parametrize(("optimizer", "inner_lr"), [("sgd", 0.05), ("adam", 0.01)])
def test_outer_step_moves_towards_the_mean_adapted_weights(optimizer: str, inner_lr: float) -> None:
    torch.manual_seed(0)
    cfg = config(reptile_optimizer=optimizer, inner_lr=inner_lr, reptile_epsilon=0.3)
    learner = Reptile(cfg)
    episodes = [make_episode(1), make_episode(2)]
    tasks = [e.labelled_images() for e in episodes]
    theta = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    adapted = [manual_adapt(learner.model, t, cfg) for t in tasks]
    adapted_params = [dict(a.named_parameters()) for a in adapted]

    optimizer_ = learner.make_optimizer()
    learner.zero_grad(set_to_none=True)
    metrics = learner.meta_gradients(episodes)
    optimizer_.step()

    for name, p in learner.model.named_parameters():
        mean = (adapted_params[0][name] + adapted_params[1][name]).detach() / 2
        expected = theta[name] + 0.3 * (mean - theta[name])
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    moved = max((p - theta[n]).abs().max().item() for n, p in learner.model.named_parameters())
    assert moved > 1e-3
    initial = copy.deepcopy(learner.model)
    initial.load_state_dict(theta)
    manual_before = sum(bce(initial, t) for t in tasks) / 2
    manual_after = sum(bce(a, t) for a, t in zip(adapted, tasks, strict=True)) / 2
    assert metrics["loss"] == pytest.approx(manual_before, abs=1e-6)
    assert metrics["adapted_loss"] == pytest.approx(manual_after, abs=1e-6)
    assert metrics["adapted_loss"] < metrics["loss"]


def test_one_sgd_step_meta_gradient_is_inner_lr_times_the_task_gradient() -> None:
    # θ − θ' = θ − (θ − α∇L(θ)) = α∇L(θ)
    torch.manual_seed(0)
    learner = Reptile(config(inner_steps=1, inner_lr=0.1))
    episode = make_episode(3, shots=2)
    task = episode.labelled_images()
    model = copy.deepcopy(learner.model)
    loss = foreground_bce(model(task.images), task.masks, task.ignore)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    learner.zero_grad(set_to_none=True)
    learner.meta_gradients([episode])

    for p, g in zip(learner.model.parameters(), grads, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, 0.1 * g, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("optimizer", "inner_lr"), [("sgd", 0.3), ("adam", 0.003)])
def test_adapt_runs_the_inner_optimizer_on_the_support_set(optimizer: str, inner_lr: float) -> None:
    torch.manual_seed(0)
    cfg = config(reptile_optimizer=optimizer, inner_lr=inner_lr, inner_steps=5)
    learner = Reptile(cfg)
    episode = make_episode(4, shots=2)
    support = episode.support
    reference = manual_adapt(learner.model, support, cfg)

    predict = learner.adapt(support)

    query = episode.query.images
    with torch.no_grad():
        expected = reference(query)
    torch.testing.assert_close(predict(query), expected, rtol=0, atol=1e-5)
    adapted_loss = foreground_bce(predict(support.images), support.masks, support.ignore)
    assert adapted_loss.item() < bce(learner.model, support) - 0.01


def test_head_only_outer_step_leaves_the_encoder_untouched() -> None:
    torch.manual_seed(0)
    cfg = config(head_only=True, inner_lr=0.1, reptile_epsilon=0.5)
    learner = Reptile(cfg)
    episodes = [make_episode(5), make_episode(6)]
    encoder = {n: p.detach().clone() for n, p in learner.model.encoder.named_parameters()}
    head = {n: p.detach().clone() for n, p in learner.model.head.named_parameters()}
    adapted = [
        dict(
            manual_adapt(
                learner.model, e.labelled_images(), cfg, head_only=True
            ).head.named_parameters()
        )
        for e in episodes
    ]
    assert {id(p) for p in learner.outer_parameters()} == {
        id(p) for p in learner.model.head.parameters()
    }

    optimizer = learner.make_optimizer()
    learner.zero_grad(set_to_none=True)
    learner.meta_gradients(episodes)
    optimizer.step()

    for name, p in learner.model.encoder.named_parameters():
        assert p.grad is None
        assert torch.equal(p.detach(), encoder[name])
    for name, p in learner.model.head.named_parameters():
        mean = (adapted[0][name] + adapted[1][name]).detach() / 2
        expected = head[name] + 0.5 * (mean - head[name])
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_registered_and_rejects_an_unknown_inner_optimizer() -> None:
    assert LEARNERS.get("reptile") is Reptile
    with pytest.raises(FewSegError, match="reptile_optimizer"):
        Reptile(config(reptile_optimizer="rmsprop"))
