"""The functional inner loop batches over tasks with torch.func.vmap."""

import torch
from torch.func import functional_call, vmap

from fewseg.learners.inner_loop import adapt_parameters


def test_vmap_over_tasks_equals_a_loop_over_tasks() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    inputs, targets = torch.randn(5, 6, 3), torch.randn(5, 6, 1)  # 5 tasks x 6 examples

    def adapted_query_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return ((functional_call(model, p, (x,)) - y) ** 2).mean()

        adapted = adapt_parameters(loss, params, 0.1, steps=3)
        return loss(adapted)

    batched = vmap(adapted_query_loss)(inputs, targets)
    looped = torch.stack([adapted_query_loss(x, y) for x, y in zip(inputs, targets, strict=True)])
    torch.testing.assert_close(batched, looped)
    assert (
        looped
        < torch.stack([((model(x) - y) ** 2).mean() for x, y in zip(inputs, targets, strict=True)])
    ).all()
