"""The exact folds of adapters/compose.py against dense computations."""

import pytest
import torch

from b4m.adapters.compose import concat, fold_columns, fold_ranks, pad_ranks


def _pair(m, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(
        r, n, generator=g, dtype=torch.float64
    )


def test_concat_is_the_weighted_sum():
    (u1, v1), (u2, v2) = _pair(6, 5, 2, 0), _pair(6, 5, 3, 1)
    u, v = concat([(0.7, u1, v1), (-1.3, u2, v2)])
    assert u.shape == (6, 5) and v.shape == (5, 5)
    torch.testing.assert_close(u @ v, 0.7 * u1 @ v1 - 1.3 * u2 @ v2)


def test_fold_columns_scales_each_column_of_dw():
    u, v = _pair(4, 7, 3, 2)
    m = torch.linspace(-1, 2, 7, dtype=torch.float64)
    fu, fv = fold_columns(u, v, m)
    dense = u @ v
    for j in range(7):
        torch.testing.assert_close((fu @ fv)[:, j], m[j] * dense[:, j])


def test_fold_ranks_is_exact_and_prunes_only_below_tol():
    u, v = _pair(5, 4, 4, 3)
    m = torch.tensor([1.5, 0.0, 1e-9, -0.5], dtype=torch.float64)
    fu, fv = fold_ranks(u, v, m)  # tol 0: the exact zero goes, the tiny one stays
    assert fu.shape[1] == 3
    torch.testing.assert_close(fu @ fv, u @ torch.diag(m) @ v)
    pu, pv = fold_ranks(u, v, m, tol=1e-6)
    assert pu.shape[1] == 2
    assert (pu @ pv - u @ torch.diag(m) @ v).abs().max() < 1e-8


def test_pad_ranks_keeps_dw_and_gives_one_rank():
    factors = {"a": _pair(3, 4, 2, 4), "b": _pair(5, 2, 4, 5), "c": (torch.zeros(2, 0), torch.zeros(0, 3))}
    padded = pad_ranks(factors)
    assert {u.shape[1] for u, _ in padded.values()} == {4}
    for k in ("a", "b"):
        torch.testing.assert_close(padded[k][0] @ padded[k][1], factors[k][0] @ factors[k][1])
    assert padded["c"][0].abs().sum() == 0
    with pytest.raises(ValueError):
        pad_ranks(factors, rank=3)
