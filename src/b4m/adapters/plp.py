"""Partly learnable projections (PLP), B4M paper Sec. 4.1, Eq. 4-11. Pure torch.

A LoRA on a linear layer ``y = W0 x`` (``W0`` is ``m x n``, out x in) adds ``dW = U V`` with up projection
``U`` (``m x r``) and down projection ``V`` (``r x n``). PLP splits both along the *feature* dimensions:

    U = [A; B]      A: d_out x r  (frozen)     B: (m - d_out) x r  (learnable, "content", Eq. 5)
    V = [C, D]      C: r x d_in   (frozen)     D: r x (n - d_in)   (learnable, "style", Eq. 7)

    dW = U V = [[A C, A D], [B C, B D]]                                            (Eq. 8-9)

with ``d_out = round(rho * m)`` and ``d_in = round(rho * n)``. With the orthogonal prior ``A C = 0`` (Eq. 10)
the top-left block vanishes, the top-right block depends on ``D`` only, the bottom-left on ``B`` only, and the
bottom-right holds their interaction (Eq. 11). ``B`` and ``D`` start at zero, so ``dW = 0`` at step 0; both
still receive gradients through the non-zero frozen ``A`` and ``C``.

The frozen parts come from a recorded *basis seed*; every adapter carries a *basis id* (seed, construction,
rank, rho, layer names and shapes, and a hash of the frozen tensors). A content adapter and a style adapter can
only be fused when their basis ids match.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ORTH_CONSTRUCTIONS",
    "PLPDown",
    "PLPSpec",
    "PLPUp",
    "assemble",
    "basis_id",
    "delta_blocks",
    "frozen_parts",
    "mcp_routing",
    "scale_parts",
    "split_dims",
    "split_factors",
]


@dataclass(frozen=True)
class PLPSpec:
    """What determines a PLP basis: rank ``r``, split ratio ``rho``, frozen-part construction and seed."""

    rank: int = 64
    rho: float = 0.5
    orth: str = "exact"
    basis_seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 2:
            problems.append(f"rank must be >= 2, got {self.rank}")
        if not 0.0 < self.rho < 1.0:
            problems.append(
                f"rho must lie strictly between 0 and 1 (the frozen fraction of each projection), got {self.rho}; "
                "rho=0 leaves nothing frozen (B=D=0 would never receive a gradient), rho=1 nothing learnable"
            )
        if self.orth not in ORTH_CONSTRUCTIONS:
            problems.append(f"orth must be one of {sorted(ORTH_CONSTRUCTIONS)}, got {self.orth!r}")
        if problems:
            raise ValueError("invalid PLP settings: " + "; ".join(problems))


def split_dims(m: int, n: int, rho: float) -> tuple[int, int]:
    """``(d_out, d_in) = (round(rho m), round(rho n))``, clamped so each side keeps >= 1 frozen and learnable row."""
    d_out = min(max(round(rho * m), 1), m - 1)
    d_in = min(max(round(rho * n), 1), n - 1)
    return d_out, d_in


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A ``rows x cols`` float64 matrix with orthonormal columns (or rows, when ``rows < cols``)."""
    g = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    # Fix the sign ambiguity of QR so the result is a deterministic function of the seed.
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q if rows >= cols else q.T


def _exact(d_out: int, d_in: int, r: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``A C = 0`` exactly (Eq. 10): rows of A and columns of C span complementary subspaces of the rank space.

    Take an orthogonal ``r x r`` matrix ``Q = [Q_a | Q_c]``; ``A = G_a Q_a^T`` and ``C = Q_c G_c^T`` with
    ``G_a``, ``G_c`` of orthonormal columns, so ``A C = G_a (Q_a^T Q_c) G_c^T = 0``. The rank space is split in
    proportion to ``d_out : d_in`` (an even split for square layers), so rank(A) + rank(C) <= r.
    """
    q = _orthonormal(r, r, gen)
    r_a = min(max(round(r * d_out / (d_out + d_in)), 1), r - 1)
    r_a = min(r_a, d_out)
    r_c = min(r - r_a, d_in)
    a = _orthonormal(d_out, r_a, gen) @ q[:, :r_a].T
    c = q[:, r_a : r_a + r_c] @ _orthonormal(d_in, r_c, gen).T
    return a, c


def _approx(d_out: int, d_in: int, r: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The official code's construction: disjoint row blocks of one matrix ``O`` with orthonormal columns.

    ``O`` is ``(d_out + d_in) x r``; ``A = O[:d_out]``, ``C = O[d_out:]^T``. Then ``A^T A + C C^T = I`` but
    ``A C != 0`` (a frozen, non-zero top-left block, and ``dW != 0`` at step 0).
    """
    o = _orthonormal(d_out + d_in, r, gen)  # orthonormal rows instead when d_out + d_in < r
    return o[:d_out], o[d_out:].T


def _random(d_out: int, d_in: int, r: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's "w/o Orth" arm: i.i.d. Gaussian frozen parts, scaled like the orthonormal ones."""
    std = (d_out + d_in) ** -0.5
    a = torch.randn(d_out, r, generator=gen, dtype=torch.float64) * std
    c = torch.randn(r, d_in, generator=gen, dtype=torch.float64) * std
    return a, c


# Registry of frozen-part constructions (dispatch by name, no if/elif chain).
ORTH_CONSTRUCTIONS: dict[
    str, Callable[[int, int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
] = {
    "exact": _exact,
    "approx": _approx,
    "none": _random,
}


def _layer_seed(basis_seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{basis_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def frozen_parts(spec: PLPSpec, name: str, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen ``A`` (``d_out x r``) and ``C`` (``r x d_in``) of layer ``name`` (out ``m``, in ``n``), float32.

    Generated on the CPU in float64 from ``(basis_seed, name)`` and rounded to float32, so they do not depend on
    the device, the dtype of training, or the order in which layers are visited.
    """
    d_out, d_in = split_dims(m, n, spec.rho)
    gen = torch.Generator().manual_seed(_layer_seed(spec.basis_seed, name))
    a, c = ORTH_CONSTRUCTIONS[spec.orth](d_out, d_in, spec.rank, gen)
    return a.float().contiguous(), c.float().contiguous()


def basis_id(spec: PLPSpec, frozen: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """Identify a basis: seed, construction, rank, rho, and a hash over layer names, shapes and frozen tensors."""
    h = hashlib.sha256()
    for name in sorted(frozen):
        a, c = frozen[name]
        h.update(f"{name}|{tuple(a.shape)}|{tuple(c.shape)}|".encode())
        h.update(a.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        h.update(c.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"seed{spec.basis_seed}-{spec.orth}-r{spec.rank}-rho{spec.rho:g}-{h.hexdigest()[:16]}"


def assemble(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``U = [A; B]`` (Eq. 4-5) and ``V = [C, D]`` (Eq. 6-7)."""
    return torch.cat([a, b], dim=0), torch.cat([c, d], dim=1)


def split_factors(
    u: torch.Tensor, v: torch.Tensor, d_out: int, d_in: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`assemble`: ``(A, B, C, D)`` from ``U`` (``m x r``) and ``V`` (``r x n``)."""
    return u[:d_out], u[d_out:], v[:, :d_in], v[:, d_in:]


def delta_blocks(u: torch.Tensor, v: torch.Tensor, d_out: int, d_in: int) -> dict[str, torch.Tensor]:
    """The four blocks of ``dW = U V`` (Eq. 9): ``AC`` (top-left), ``AD`` (top-right, style),
    ``BC`` (bottom-left, content), ``BD`` (bottom-right, interaction)."""
    a, b, c, d = split_factors(u, v, d_out, d_in)
    return {"AC": a @ c, "AD": a @ d, "BC": b @ c, "BD": b @ d}


def scale_parts(
    u: torch.Tensor, v: torch.Tensor, d_out: int, d_in: int, content_scale: float, style_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale the content part ``B`` and the style part ``D`` separately (paper Sec. 4.1; method notes Sec. 4).

    ``dW' = [[AC, s AD], [c BC, c s BD]]`` for content scale ``c`` and style scale ``s``; the result is again an
    ordinary rank-r LoRA.
    """
    a, b, c, d = split_factors(u, v, d_out, d_in)
    return assemble(a, b * content_scale, c, d * style_scale)


def row_fusion(
    content: tuple[torch.Tensor, torch.Tensor],
    style: tuple[torch.Tensor, torch.Tensor],
    d_out: int,
    d_in: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fusion **beyond the paper** (issue 27, H1): each stage-1 adapter keeps the rows it trained.

    The paper's ``LoRA_f = [A; B_c] x [C, D_s]`` gives the content rows ``[B_c C, B_c D_s]``: the content's
    interaction block ``B_c D_aux`` -- where much of the subject's identity lives after stage 1 -- is replaced by
    ``B_c D_s``. Here the content rows stay the content adapter's and the style rows the style adapter's::

        dW = [[A C, A D_s], [B_c C, B_c D_aux]] = [A; 0] [C, D_s] + [0; B_c] [C, D_aux]

    an ordinary LoRA of rank ``2 r`` (``U = [[A, 0], [0, B_c]]``, ``V = [[C, D_s], [C, D_aux]]``). Both adapters
    must share the frozen basis (``A``, ``C``)."""
    a, b_c, c, d_aux = split_factors(*content, d_out, d_in)
    a_s, _, c_s, d_s = split_factors(*style, d_out, d_in)
    if not (torch.equal(a, a_s) and torch.equal(c, c_s)):
        raise ValueError("row_fusion needs the two adapters' frozen parts A, C to be the same basis")
    up = torch.cat(
        [torch.cat([a, torch.zeros_like(a)], dim=1), torch.cat([torch.zeros_like(b_c), b_c], dim=1)], dim=0
    )
    down = torch.cat([torch.cat([c, d_s], dim=1), torch.cat([c, d_aux], dim=1)], dim=0)
    return up, down


# --- Modules -------------------------------------------------------------------------------------------------
#
# peft's LoRA layer computes ``lora_B(lora_A(x)) * scaling`` and reads ``lora_A.weight`` / ``lora_B.weight`` for
# merging. peft has no notion of a partly frozen factor, so b4m replaces those two ``nn.Linear`` factors with the
# modules below: the frozen part is a *buffer* (never a parameter, so no optimizer, weight decay, or peft's
# ``set_adapter`` -- which flips ``requires_grad`` back on for every adapter parameter -- can touch it), the
# learnable part is the module's only parameter, and ``weight`` is their concatenation.

_ROUTE: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar("b4m_mcp_route", default=None)


@contextlib.contextmanager
def mcp_routing(n_target: int, target_part: str) -> Iterator[None]:
    """Strict gradient routing for multi-correspondence projection learning (Eq. 12), in one batched forward.

    Inside this context, the first ``n_target`` samples of every batch that passes through a PLP factor are the
    *target* samples: their outputs depend on ``target_part`` (``"B"`` for the content stage, ``"D"`` for the
    style stage) and only on a detached copy of the other part. The remaining (auxiliary) samples see the mirror
    image. So ``L_target`` only ever updates ``target_part`` and ``L_aux`` only the other part, whatever the loss
    weights are, with a single forward and backward pass and no ``retain_graph``.
    """
    if target_part not in ("B", "D"):
        raise ValueError(f"target_part must be 'B' (content stage) or 'D' (style stage), got {target_part!r}")
    token = _ROUTE.set((n_target, target_part))
    try:
        yield
    finally:
        _ROUTE.reset(token)


class _PLPFactor(nn.Module):
    part: str  # "B" (up projection) or "D" (down projection)
    cat_dim: int

    def __init__(self, frozen: torch.Tensor, learnable: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("frozen", frozen.detach().clone())
        self.learnable = nn.Parameter(learnable.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.frozen.to(self.learnable.dtype), self.learnable], dim=self.cat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = _ROUTE.get()
        if route is None or not torch.is_grad_enabled():
            return F.linear(x, self.weight)
        n_target, target_part = route
        live = self.weight
        dead = torch.cat([self.frozen.to(self.learnable.dtype), self.learnable.detach()], dim=self.cat_dim)
        w_target, w_aux = (live, dead) if self.part == target_part else (dead, live)
        return torch.cat([F.linear(x[:n_target], w_target), F.linear(x[n_target:], w_aux)], dim=0)


class PLPUp(_PLPFactor):
    """Up projection ``U = [A; B]`` (``m x r``): frozen ``A`` (first ``d_out`` rows), learnable ``B``."""

    part = "B"
    cat_dim = 0

    @property
    def in_features(self) -> int:
        return self.frozen.shape[1]

    @property
    def out_features(self) -> int:
        return self.frozen.shape[0] + self.learnable.shape[0]


class PLPDown(_PLPFactor):
    """Down projection ``V = [C, D]`` (``r x n``): frozen ``C`` (first ``d_in`` columns), learnable ``D``."""

    part = "D"
    cat_dim = 1

    @property
    def in_features(self) -> int:
        return self.frozen.shape[1] + self.learnable.shape[1]

    @property
    def out_features(self) -> int:
        return self.frozen.shape[0]
