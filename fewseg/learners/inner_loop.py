"""Gradient-descent adaptation as a pure function of a parameter dict.

``adapt_parameters`` never mutates a module: it maps parameters to adapted parameters, so
an outer loss on the result differentiates through it (second order), or through its
first-order approximation when the inner gradients are treated as constants. Inside a
``torch.func`` transform (``vmap`` over tasks, an outer ``grad``) it takes its gradients
with ``torch.func.grad``; outside one it uses ``torch.autograd.grad`` on the same
function, which builds the second-order graph only when it is needed and costs less per
step. Both give the same values; distributed gradient averaging is left to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import grad_and_value

Params = dict[str, torch.Tensor]
LossFunction = Callable[[Params], torch.Tensor]


def sgd_update(
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    learning_rates: Mapping[str, torch.Tensor | float] | float,
) -> Params:
    """θ' = θ − α ⊙ ∇θ, with one α for all parameters or one per parameter (Meta-SGD)."""
    if isinstance(learning_rates, float | int):
        return {k: p - learning_rates * grads[k] for k, p in params.items()}
    return {k: p - learning_rates[k] * grads[k] for k, p in params.items()}


def inside_functorch_transform() -> bool:
    return torch._C._functorch.maybe_current_level() is not None


def _autograd_step(
    loss: LossFunction, params: Params, first_order: bool
) -> tuple[Params, torch.Tensor]:
    """(∇loss, loss) by ``torch.autograd.grad``; parameters that carry no graph (plain
    tensors at test time) are differentiated through a fresh leaf."""
    leaves = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
    value = loss(leaves)
    grads = torch.autograd.grad(
        value,
        list(leaves.values()),
        create_graph=not first_order,
        allow_unused=True,
        materialize_grads=True,  # an unused parameter gets zeros, as with torch.func.grad
    )
    return dict(zip(leaves, grads, strict=True)), value


def _functorch_step(
    loss: LossFunction, params: Params, first_order: bool
) -> tuple[Params, torch.Tensor]:
    grads, value = grad_and_value(loss)(params)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    return grads, value


def adapt_parameters(
    loss: LossFunction,
    params: Mapping[str, torch.Tensor],
    learning_rates: Mapping[str, torch.Tensor | float] | float,
    steps: int,
    first_order: bool = False,
    losses: list[torch.Tensor] | None = None,
) -> Params:
    """``steps`` SGD steps on ``loss`` from ``params``.

    With ``first_order`` the inner gradients are treated as constants (FOMAML): the
    result still depends on ``params`` (dθ'/dθ = I), but not through the Hessian.
    ``losses``, when given, receives the (detached) loss before each step: its first
    entry is the loss before adaptation, at no extra forward pass.
    """
    step = _functorch_step if inside_functorch_transform() else _autograd_step
    adapted = dict(params)
    for _ in range(steps):
        grads, value = step(loss, adapted, first_order)
        if losses is not None:
            losses.append(value.detach())
        adapted = sgd_update(adapted, grads, learning_rates)
    return adapted
