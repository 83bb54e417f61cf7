"""The fine-tuning control: plain BCE training gradients and SGD test-time adaptation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from rectangle_episodes import rectangle_episode

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.learners import LEARNERS
from fewseg.learners.finetune import FineTune, FineTuneOptions
from fewseg.learners.losses import foreground_bce

SIZE = 24


def make_episode(seed: int, shots: int = 1) -> EpisodeTensors:
    return rectangle_episode(seed, shots, SIZE, (10, 7), np.s_[:, -2:])


def config(**overrides: object) -> FineTuneOptions:
    values: dict[str, object] = {"backbone": "convnet", "hidden": 8, "inner_steps": 4}
    return FineTuneOptions(**{**values, **overrides})  # type: ignore[arg-type]


def all_images(episodes: list[EpisodeTensors]) -> LabelledImages:
    """Every image of the episodes (hand-stacked, query after the shots of its episode)."""
    images, masks, ignore = [], [], []
    for e in episodes:
        images += [*e.support.images, *e.query.images]
        masks += [*e.support.masks, *e.query.masks]
        ignore += [*e.support.ignore, *e.query.ignore]
    return LabelledImages(torch.stack(images), torch.stack(masks), torch.stack(ignore))


@pytest.mark.parametrize("frozen_encoder", [False, True])
def test_gradient_is_that_of_the_mean_bce_over_all_images(frozen_encoder: bool) -> None:
    torch.manual_seed(0)
    learner = FineTune(config())
    if frozen_encoder:
        learner.model.encoder.freeze()
    episodes = [make_episode(1, shots=2), make_episode(2, shots=2)]
    batch = all_images(episodes)
    model = copy.deepcopy(learner.model)
    loss = foreground_bce(model(batch.images), batch.masks, batch.ignore)
    loss.backward()

    learner.zero_grad(set_to_none=True)
    metrics = learner.meta_gradients(episodes)

    assert metrics["loss"] == pytest.approx(loss.item(), abs=1e-6)
    for p, reference in zip(learner.model.parameters(), model.parameters(), strict=True):
        if frozen_encoder and reference.grad is None:
            assert p.grad is None
            continue
        assert p.grad is not None
        torch.testing.assert_close(p.grad, reference.grad, rtol=0, atol=1e-6)
    assert any(p.grad is not None for p in learner.model.head.parameters())


@pytest.mark.parametrize("head_only", [False, True])
def test_adapt_is_inner_steps_sgd_steps_at_inner_lr(head_only: bool) -> None:
    torch.manual_seed(0)
    cfg = config(head_only=head_only, inner_lr=0.1, inner_steps=4)
    learner = FineTune(cfg)
    episode = make_episode(3, shots=2)
    support = episode.support
    initial = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    reference = copy.deepcopy(learner.model)
    optimizer = torch.optim.SGD(
        (reference.head if head_only else reference).parameters(), lr=cfg.inner_lr
    )
    for _ in range(cfg.inner_steps):
        optimizer.zero_grad()
        foreground_bce(reference(support.images), support.masks, support.ignore).backward()
        optimizer.step()

    predict = learner.adapt(support)
    adapted = learner.adapt_with(learner.support_loss(support), first_order=True)

    expected = dict(reference.named_parameters())
    assert set(adapted) == {n for n in expected if n.startswith("head.") or not head_only}
    for name, value in adapted.items():
        torch.testing.assert_close(value.detach(), expected[name].detach(), rtol=0, atol=1e-6)
    query = episode.query.images
    with torch.no_grad():
        torch.testing.assert_close(predict(query), reference(query), rtol=0, atol=1e-5)
    for name, p in learner.model.named_parameters():
        assert torch.equal(p.detach(), initial[name])


def test_a_few_adam_steps_reduce_the_loss_of_a_fixed_synthetic_batch(
    synthetic_batch: list[EpisodeTensors],
) -> None:
    torch.manual_seed(0)
    episodes = synthetic_batch
    learner = FineTune(config(outer_lr=1e-2))
    optimizer = learner.make_optimizer()
    assert isinstance(optimizer, torch.optim.Adam)
    losses = []
    for _ in range(6):
        optimizer.zero_grad(set_to_none=True)
        losses.append(learner.meta_gradients(episodes)["loss"])
        optimizer.step()
    batch = all_images(episodes)
    with torch.no_grad():
        final = foreground_bce(learner.model(batch.images), batch.masks, batch.ignore).item()
    assert final < losses[0] - 0.05


def test_registered() -> None:
    assert LEARNERS.get("finetune") is FineTune
