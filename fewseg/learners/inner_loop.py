"""Gradient-descent adaptation as a pure function of a parameter dict (torch.func).

``adapt_parameters`` never mutates a module: it maps parameters to adapted parameters, so
an outer loss on the result differentiates through it (second order), or through its
first-order approximation when the inner gradients are detached. It composes with
``torch.func.vmap`` over tasks and leaves distributed gradient averaging to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import grad

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


def adapt_parameters(
    loss: LossFunction,
    params: Mapping[str, torch.Tensor],
    learning_rates: Mapping[str, torch.Tensor | float] | float,
    steps: int,
    first_order: bool = False,
) -> Params:
    """``steps`` SGD steps on ``loss`` from ``params``.

    With ``first_order`` the inner gradients are treated as constants (FOMAML): the
    result still depends on ``params`` (dθ'/dθ = I), but not through the Hessian.
    """
    adapted = dict(params)
    for _ in range(steps):
        grads = grad(loss)(adapted)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        adapted = sgd_update(adapted, grads, learning_rates)
    return adapted
