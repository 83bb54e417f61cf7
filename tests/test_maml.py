"""MAML / FOMAML / ANIL / Meta-SGD meta-gradients against hand-derived and finite-difference
values (Finn et al. 2017; Raghu et al. 2020; Li et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.learners import LEARNERS, build_learner
from fewseg.learners.inner_loop import adapt_parameters
from fewseg.learners.losses import foreground_bce
from fewseg.learners.maml import FOMAML, MAML, MAMLOptions, learning_rate_key

SIZE = 24
STEP = 1e-6
# (parameter name, index) entries perturbed for the finite-difference checks
ENTRIES = [
    ("model.encoder.blocks.0.0.weight", (0, 0, 1, 1)),
    ("model.encoder.blocks.2.1.weight", (5,)),
    ("model.encoder.blocks.3.0.bias", (7,)),
    ("model.head.layers.0.weight", (1, 2, 0, 0)),
    ("model.head.layers.4.bias", (3,)),
    ("model.head.layers.6.weight", (0, 5, 0, 0)),
    ("model.head.layers.6.bias", (0,)),
]

LearningRates = Callable[[str], torch.Tensor | float]


def make_task(seed: int, size: int = SIZE, shots: int = 1) -> EpisodeTensors:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def example(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        centres = torch.randint(size // 4, 3 * size // 4, (n, 2), generator=g)
        masks = torch.stack(
            [((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2).double() for cy, cx in centres]
        )
        images = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
        images = images + 1.5 * masks[:, None]
        ignore = torch.rand(n, size, size, generator=g) < 0.1
        return images, masks, ignore

    return EpisodeTensors(0, LabelledImages(*example(shots)), LabelledImages(*example(1)))


def make_learner(first_order: bool = False, **options: object) -> MAML:
    torch.manual_seed(0)
    defaults: dict[str, object] = {"backbone": "convnet", "hidden": 8, "inner_lr": 0.5}
    learner_class = FOMAML if first_order else MAML
    learner = learner_class(MAMLOptions(**{**defaults, **options}))  # type: ignore[arg-type]
    return learner.double().train()


def hand_adapted(
    learner: MAML, support: LabelledImages, lr: LearningRates, steps: int
) -> dict[str, torch.Tensor]:
    """θ_{s+1} = θ_s − α ∇L_support(θ_s) on the full model, values only."""
    params = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    names = [n for n in params if n.startswith("head.")] if learner.head_only else list(params)
    with torch.enable_grad():
        for _ in range(steps):
            current = {n: params[n].requires_grad_() for n in names}
            logits = functional_call(learner.model, params, (support.images,))
            loss = foreground_bce(logits, support.masks, support.ignore)
            grads = torch.autograd.grad(loss, list(current.values()))
            for n, g in zip(names, grads, strict=True):
                params[n] = (params[n] - lr(n) * g).detach()
    return params


def query_loss(learner: MAML, params: Mapping[str, torch.Tensor], task: EpisodeTensors):
    logits = functional_call(learner.model, dict(params), (task.query.images,))
    return foreground_bce(logits, task.query.masks, task.query.ignore)


def meta_objective(
    learner: MAML, tasks: list[EpisodeTensors], lr: LearningRates, steps: int
) -> float:
    """Mean over tasks of L_query(θ'(θ)): what the second-order meta-gradient differentiates."""
    losses = [query_loss(learner, hand_adapted(learner, t.support, lr, steps), t) for t in tasks]
    return float(sum(losses)) / len(tasks)


def central_difference(tensor: torch.Tensor, index: tuple[int, ...], f: Callable[[], float]):
    original = tensor[index].item()
    with torch.no_grad():
        tensor[index] = original + STEP
        plus = f()
        tensor[index] = original - STEP
        minus = f()
        tensor[index] = original
    return (plus - minus) / (2 * STEP)


def meta_gradient(learner: MAML, tasks: list[EpisodeTensors]) -> dict[str, torch.Tensor]:
    learner.zero_grad(set_to_none=True)
    learner.meta_gradients(tasks)
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("head_only", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_matches_finite_differences(head_only: bool, steps: int) -> None:
    learner = make_learner(inner_steps=steps, head_only=head_only)
    tasks = [make_task(1), make_task(2)]
    grads = meta_gradient(learner, tasks)
    params = dict(learner.named_parameters())
    lr = learner.options.inner_lr
    for name, index in ENTRIES:
        expected = central_difference(
            params[name], index, lambda: meta_objective(learner, tasks, lambda _: lr, steps)
        )
        assert grads[name][index].item() == pytest.approx(expected, rel=1e-4, abs=1e-9), name


@pytest.mark.parametrize("head_only", [False, True])
def test_first_order_is_query_gradient_at_adapted_parameters(head_only: bool) -> None:
    """FOMAML: ∇θ' L_query(θ') (Finn et al. 2017, §5.2) and, in general, not the true one."""
    steps, tasks = 2, [make_task(3), make_task(4)]
    learner = make_learner(inner_steps=steps, head_only=head_only, first_order=True)
    grads = meta_gradient(learner, tasks)
    lr = learner.options.inner_lr

    expected = {n: torch.zeros_like(p) for n, p in learner.model.named_parameters()}
    for task in tasks:
        adapted = {
            n: p.requires_grad_()
            for n, p in hand_adapted(learner, task.support, lambda _: lr, steps).items()
        }
        loss = query_loss(learner, adapted, task) / len(tasks)
        for n, g in zip(adapted, torch.autograd.grad(loss, list(adapted.values())), strict=True):
            expected[n] += g
    for name, g in expected.items():
        torch.testing.assert_close(grads[f"model.{name}"], g, rtol=1e-9, atol=1e-12)

    params = dict(learner.named_parameters())
    gaps = []
    for name, index in ENTRIES:
        true = central_difference(
            params[name], index, lambda: meta_objective(learner, tasks, lambda _: lr, steps)
        )
        gaps.append(abs(grads[name][index].item() - true) / max(abs(true), 1e-8))
    assert max(gaps) > 1e-2  # the dropped Hessian term is not negligible at α = 0.5


def test_no_inner_steps_first_and_second_order_agree_with_plain_gradient() -> None:
    tasks = [make_task(5), make_task(6)]
    second = meta_gradient(make_learner(inner_steps=0), tasks)
    first = meta_gradient(make_learner(inner_steps=0, first_order=True), tasks)
    assert second.keys() == first.keys()
    for name in second:
        assert torch.equal(second[name], first[name])

    plain = make_learner(inner_steps=0)
    loss = sum(query_loss(plain, dict(plain.model.named_parameters()), t) for t in tasks) / 2
    loss.backward()
    for name, p in plain.named_parameters():
        torch.testing.assert_close(second[name], p.grad, rtol=1e-12, atol=1e-15)


def test_metrics_are_task_means_of_query_and_support_losses() -> None:
    learner = make_learner(inner_steps=1)
    tasks = [make_task(7), make_task(8), make_task(9)]
    lr = learner.options.inner_lr
    expected_query = meta_objective(learner, tasks, lambda _: lr, 1)
    before = dict(learner.model.named_parameters())
    expected_support = np.mean(
        [
            foreground_bce(
                functional_call(learner.model, before, (t.support.images,)),
                t.support.masks,
                t.support.ignore,
            ).item()
            for t in tasks
        ]
    )
    metrics = learner.meta_gradients(tasks)
    assert metrics["loss"] == pytest.approx(expected_query, rel=1e-10)
    assert metrics["support_loss"] == pytest.approx(expected_support, rel=1e-10)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_scalar_quadratic_by_hand(steps: int) -> None:
    """L_s = ½aθ², so θ' = (1−αa)^S θ; L_q = ½bθ'². Second order: dL_q/dθ = b(1−αa)^{2S}θ;
    first order: ∇θ' L_q = bθ' = b(1−αa)^S θ."""
    a, alpha, b, theta0 = 2.0, 0.25, 3.0, 2.0  # 1 − αa = ½: every value is exact

    def meta_grad(first_order: bool) -> float:
        theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
        adapted = adapt_parameters(
            lambda p: 0.5 * a * p["w"] ** 2, {"w": theta}, alpha, steps, first_order
        )
        (0.5 * b * adapted["w"] ** 2).backward()
        assert theta.grad is not None
        return theta.grad.item()

    shrink = (1 - alpha * a) ** steps
    assert meta_grad(first_order=False) == b * shrink**2 * theta0
    assert meta_grad(first_order=True) == b * shrink * theta0


def test_scalar_linear_inner_loss_first_and_second_order_agree() -> None:
    """A linear support loss has no Hessian, so FOMAML is exact: θ' = θ − Sαc."""
    c, alpha, b, theta0, steps = 0.5, 0.25, 3.0, 2.0, 3

    def meta_grad(first_order: bool) -> float:
        theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
        adapted = adapt_parameters(lambda p: c * p["w"], {"w": theta}, alpha, steps, first_order)
        (0.5 * b * adapted["w"] ** 2).backward()
        assert theta.grad is not None
        return theta.grad.item()

    expected = b * (theta0 - steps * alpha * c)
    assert meta_grad(first_order=False) == meta_grad(first_order=True) == expected


@pytest.mark.parametrize("first_order", [False, True])
def test_scalar_meta_sgd_learning_rate_gradient_by_hand(first_order: bool) -> None:
    """θ' = θ − αaθ: dL_q/dα = bθ'·(−aθ) whether or not the inner gradient is detached."""
    a, b, theta0 = 2.0, 3.0, 2.0
    alpha = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    adapted = adapt_parameters(
        lambda p: 0.5 * a * p["w"] ** 2, {"w": theta}, {"w": alpha}, 1, first_order
    )
    (0.5 * b * adapted["w"] ** 2).backward()
    assert alpha.grad is not None
    assert alpha.grad.item() == b * (theta0 * (1 - 0.25 * a)) * (-a * theta0)


def meta_sgd_rates(learner: MAML) -> LearningRates:
    return lambda name: learner.learning_rates[learning_rate_key(name)].detach()


@pytest.mark.parametrize(("first_order", "steps"), [(False, 2), (True, 1)])
def test_meta_sgd_learning_rates_match_finite_differences(first_order: bool, steps: int) -> None:
    """With one inner step the inner gradient does not depend on α, so even the
    first-order learning-rate gradient is exact."""
    learner = make_learner(meta_sgd=True, inner_lr=0.3, inner_steps=steps, first_order=first_order)
    adapted = learner.adapted_names()
    assert sorted(learner.learning_rates) == sorted(learning_rate_key(n) for n in adapted)
    outer = {id(p) for p in learner.outer_parameters()}
    named = dict(learner.model.named_parameters())
    for name in adapted:
        rate = learner.learning_rates[learning_rate_key(name)]
        assert id(rate) in outer
        assert rate.shape == named[name].shape
        assert (rate - 0.3).abs().max() < 1e-7  # initialised to inner_lr (in float32)

    tasks = [make_task(10), make_task(11)]
    learner.meta_gradients(tasks)
    for rate in learner.learning_rates.values():
        assert rate.grad is not None and rate.grad.abs().sum() > 0
    for name, index in [("head.layers.0.weight", (2, 1, 0, 0)), ("head.layers.6.bias", (0,))]:
        rate = learner.learning_rates[learning_rate_key(name)]
        expected = central_difference(
            rate, index, lambda: meta_objective(learner, tasks, meta_sgd_rates(learner), steps)
        )
        assert rate.grad[index].item() == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_meta_sgd_rates_are_used_at_test_time() -> None:
    learner = make_learner(meta_sgd=True, inner_lr=0.3, inner_steps=2).eval()
    task = make_task(12)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rate in learner.learning_rates.values():
            rate.copy_(torch.rand(rate.shape, generator=g, dtype=torch.float64))
    predicted = learner.adapt(task.support)(task.query.images)
    params = hand_adapted(learner, task.support, meta_sgd_rates(learner), 2)
    expected = functional_call(learner.model, params, (task.query.images,))
    torch.testing.assert_close(predicted, expected, rtol=1e-9, atol=1e-12)

    with torch.no_grad():
        for rate in learner.learning_rates.values():
            rate.zero_()
        unadapted = learner.model(task.query.images)
    predicted = learner.adapt(task.support)(task.query.images)
    torch.testing.assert_close(predicted, unadapted, rtol=0, atol=0)


def test_registry_and_anil_parameters() -> None:
    options = {"backbone": "convnet", "hidden": 8}
    fomaml = build_learner("fomaml", options)
    assert isinstance(fomaml, MAML) and fomaml.first_order
    assert fomaml.settings()["learner"] == "fomaml"
    maml = build_learner("maml", options)
    assert not maml.first_order
    assert maml.settings()["learner"] == "maml"
    assert LEARNERS.get("fomaml").Options is LEARNERS.get("maml").Options

    anil = make_learner(head_only=True, inner_steps=1)
    head = [n for n, _ in anil.model.named_parameters() if n.startswith("head.")]
    assert anil.adapted_names() == head
    assert set(anil.initial_parameters()) == set(head)
    grads = meta_gradient(anil, [make_task(13)])
    # the trainable encoder still learns through the features (outer gradient)
    assert grads["model.encoder.blocks.0.0.weight"].abs().sum() > 0


def test_frozen_batchnorm_statistics_never_change() -> None:
    torch.manual_seed(0)
    learner = MAML(MAMLOptions(backbone="mobilenet_v2", pretrained=False, hidden=8, inner_steps=2))
    learner.model.encoder.freeze()
    batchnorms = [m for m in learner.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms
    before = {n: b.clone() for n, b in learner.named_buffers()}
    learner.train()
    assert not learner.model.encoder.training
    assert not any(m.training for m in batchnorms)
    assert learner.model.head.training

    tasks = [make_task(14, size=64), make_task(15, size=64)]
    learner.float()
    tasks = [
        EpisodeTensors(
            t.class_index,
            LabelledImages(t.support.images.float(), t.support.masks.float(), t.support.ignore),
            LabelledImages(t.query.images.float(), t.query.masks.float(), t.query.ignore),
        )
        for t in tasks
    ]
    learner.meta_gradients(tasks)
    learner.adapt(tasks[0].support)(tasks[0].query.images)

    after = dict(learner.named_buffers())
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(n.startswith("head.") for n in learner.adapted_names())
    assert all(p.grad is None for p in learner.model.encoder.parameters())
    assert not learner.model.encoder.training


def test_meta_training_reduces_query_loss_on_synthetic_batch(
    synthetic_batch: list[EpisodeTensors],
) -> None:
    tasks = synthetic_batch

    torch.manual_seed(0)
    learner = MAML(
        MAMLOptions(backbone="convnet", hidden=16, inner_steps=1, inner_lr=0.1, outer_lr=3e-3)
    ).train()
    optimizer = learner.make_optimizer()
    losses = []
    for _ in range(31):
        optimizer.zero_grad()
        losses.append(learner.meta_gradients(tasks)["loss"])
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(("meta_sgd", "loss_size"), [(False, 0), (True, 0), (False, 10)])
def test_frozen_encoder_tasks_adapted_together_equal_tasks_one_by_one(
    first_order: bool, meta_sgd: bool, loss_size: int
) -> None:
    # two shapes (1 and 2 shots): two vmapped groups
    tasks = [make_task(11), make_task(12, shots=2), make_task(13), make_task(14, shots=2)]
    learner = make_learner(
        inner_steps=2, first_order=first_order, meta_sgd=meta_sgd, loss_size=loss_size
    )
    learner.model.encoder.freeze()
    batches: list[int] = []

    def record(_module: nn.Module, args: tuple) -> None:
        batches.append(len(args[0]))

    learner.model.encoder.register_forward_pre_hook(record)
    together = meta_gradient(learner, tasks)
    assert batches == [2 + 2, 4 + 2]  # one encoder batch per shape (1 and 2 shots)
    learner.options.batch_tasks = False
    batches.clear()
    one_by_one = meta_gradient(learner, tasks)
    assert batches == [1, 1, 2, 1] * 2  # each task's support images, then its query
    assert together.keys() == one_by_one.keys()
    assert all(n.startswith(("model.head.", "learning_rates.")) for n in together)
    for name in together:
        torch.testing.assert_close(together[name], one_by_one[name], rtol=1e-10, atol=1e-13)


def test_frozen_encoder_second_order_matches_finite_differences() -> None:
    tasks = [make_task(15), make_task(16)]
    learner = make_learner(inner_steps=2)
    learner.model.encoder.freeze()
    grads = meta_gradient(learner, tasks)
    lr = learner.options.inner_lr
    named = dict(learner.named_parameters())
    for name, index in ENTRIES:
        if not name.startswith("model.head."):
            continue
        expected = central_difference(
            named[name].data, index, lambda: meta_objective(learner, tasks, lambda _: lr, 2)
        )
        assert grads[name][index].item() == pytest.approx(expected, rel=1e-5, abs=1e-8)
