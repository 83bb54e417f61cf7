"""Bilinear resizing and adaptive average pooling by matrices equal torch's (and gradients)."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from fewseg.models.upsample import (
    adaptive_average_pool,
    average_pooling_matrix,
    bilinear_resize,
    interpolation_matrix,
)


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((3, 5), (12, 20)), ((25, 25), (400, 400)), ((7, 4), (5, 9)), ((6, 6), (6, 6))],
)
def test_equals_f_interpolate(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, *size_out, dtype=torch.float64)
    ours = bilinear_resize(x, size_out)
    theirs = F.interpolate(x, size_out, mode="bilinear")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-12)


def test_rows_of_the_matrix_are_interpolation_weights() -> None:
    # 2 → 4 with half-pixel centres: outputs at input coordinates -0.25, 0.25, 0.75, 1.25
    matrix = interpolation_matrix(2, 4, torch.float64, torch.device("cpu"))
    expected = torch.tensor(
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(matrix, expected)


def test_composes_with_vmap_and_grad() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 1, 3, 3)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return bilinear_resize(t, (8, 8)).pow(2).sum()

    batched = vmap(grad(loss))(x)
    looped = torch.stack([grad(loss)(t) for t in x])
    torch.testing.assert_close(batched, looped)


@pytest.mark.parametrize(("size_in", "size_out"), [(400, 25), (401, 26), (97, 13), (5, 3), (3, 5)])
def test_adaptive_average_pool_equals_torchs(size_in: int, size_out: int) -> None:
    x = torch.rand(2, 3, size_in, size_in + 2, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, (size_out, size_out + 1))
    pooled = adaptive_average_pool(x, (size_out, size_out + 1))
    torch.testing.assert_close(pooled, expected, rtol=1e-12, atol=1e-12)


def test_average_pooling_windows_by_hand() -> None:
    # 5 → 3: windows [0, 2), [1, 4), [3, 5)
    matrix = average_pooling_matrix(5, 3, torch.float64, torch.device("cpu"))
    expected = [[0.5, 0.5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 0.5, 0.5]]
    torch.testing.assert_close(matrix, torch.tensor(expected, dtype=torch.float64))


def test_second_order_grad_twice_with_matrices_built_inside_the_transforms() -> None:
    # The matrices are first built inside the inner grad; the second call reuses them.
    interpolation_matrix.cache_clear()
    average_pooling_matrix.cache_clear()

    def loss(t: torch.Tensor) -> torch.Tensor:
        return adaptive_average_pool(bilinear_resize(t, (9, 9)), (2, 2)).pow(2).sum()

    def after_one_step(t: torch.Tensor) -> torch.Tensor:
        return loss(t - 0.1 * grad(loss)(t))

    x = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    first, second = grad(after_one_step)(x), grad(after_one_step)(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    matrix = interpolation_matrix(3, 9, torch.float64, torch.device("cpu"))
    assert not torch._C._functorch.is_functorch_wrapped_tensor(matrix)
    expected = F.interpolate(x, (9, 9), mode="bilinear")
    torch.testing.assert_close(bilinear_resize(x, (9, 9)), expected, rtol=0, atol=1e-12)


def test_pooling_equal_blocks_of_a_mask_gives_the_matrix_products_bits() -> None:
    from fewseg.models.upsample import adaptive_average_pool, average_pooling_matrix

    g = torch.Generator().manual_seed(0)
    for (height, width), size in [((400, 400), (25, 25)), ((96, 80), (12, 10))]:
        mask = (torch.rand(2, height, width, generator=g) > 0.5).float()
        rows = average_pooling_matrix(height, size[0], mask.dtype, mask.device)
        columns = average_pooling_matrix(width, size[1], mask.dtype, mask.device)
        assert torch.equal(adaptive_average_pool(mask, size), rows @ mask @ columns.T)
