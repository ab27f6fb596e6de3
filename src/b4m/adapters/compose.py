"""Exact folds of merged low-rank updates into one plain LoRA ``{module: (U, V)}``. Pure torch.

Every merging method in :mod:`b4m.methods` computes its merged update ``dW_m`` from source factors; the functions
here rewrite ``dW_m`` as one ``U V`` (up ``m x R``, down ``R x n``) without approximation, so the file a method
writes is an ordinary LoRA that ``load_lora_weights`` reads (method notes Sec. 5):

- :func:`concat`: ``sum_i l_i U_i V_i = [l_1 U_1 | ... | l_k U_k] [V_1; ...; V_k]`` (direct merge, Eq. 3);
- :func:`fold_columns`: ``(U V) diag(m) = U (V diag(m))`` (ZipLoRA's column-wise coefficients);
- :func:`fold_ranks`: ``U diag(m) V = (U diag(m)) V``, dropping rank components whose mask is below a tolerance
  (DuoLoRA's ZipRank masks);
- :func:`pad_ranks`: zero columns/rows so that every layer of a file has the same rank (``U V`` is unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["Factors", "concat", "dense", "fold_columns", "fold_ranks", "pad_ranks"]

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def dense(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``dW = U V`` (``m x n``)."""
    return u @ v


def concat(
    terms: Sequence[tuple[float | torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i l_i U_i V_i`` as one pair: ``U = [l_1 U_1 | l_2 U_2 | ...]``, ``V = [V_1; V_2; ...]`` (rank ``sum r_i``)."""
    us = [u * weight for weight, u, _ in terms]
    vs = [v for _, _, v in terms]
    return torch.cat(us, dim=1), torch.cat(vs, dim=0)


def fold_columns(u: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U V) diag(m) = U (V diag(m))``: one coefficient per column (input feature) of ``dW``."""
    return u, v * m.unsqueeze(0)


def fold_ranks(
    u: torch.Tensor, v: torch.Tensor, m: torch.Tensor, tol: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``U diag(m) V = (U diag(m)) V``, keeping only rank components with ``|m_i| > tol``.

    With ``tol = 0`` the fold is exact; a pruned component changes ``dW`` by ``m_i U[:, i] V[i]``, so the error of
    pruning is at most ``tol * sum_i |U[:, i]| |V[i]|`` over the pruned ``i`` (reported by the caller).
    """
    keep = m.abs() > tol
    return u[:, keep] * m[keep].unsqueeze(0), v[keep]


def pad_ranks(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], rank: int | None = None) -> Factors:
    """Give every layer rank ``rank`` (default: the largest) by appending zero columns to ``U``, zero rows to ``V``.

    ``U V`` is unchanged; one rank per file keeps the ``LoraConfig`` header that diffusers reads valid.
    A layer with rank 0 (everything pruned) gets a zero pair of rank ``rank``.
    """
    target = max(1, rank if rank is not None else max(u.shape[1] for u, _ in factors.values()))
    out: Factors = {}
    for name, (u, v) in factors.items():
        extra = target - u.shape[1]
        if extra < 0:
            raise ValueError(f"{name}: rank {u.shape[1]} exceeds the requested rank {target}")
        if extra:
            u = torch.cat([u, u.new_zeros(u.shape[0], extra)], dim=1)
            v = torch.cat([v, v.new_zeros(extra, v.shape[1])], dim=0)
        out[name] = (u, v)
    return out
