"""Riemannian preconditioning of PLP stage 2 (B4M paper Sec. 4.3, Eq. 13-14; Zhang & Pilanci, ICML 2024).

With ``M`` the learnable style part ``D`` (``r x n'``) and ``N`` the learnable content part ``B`` (``m' x r``):

    M <- M - lr (N^T N + delta I)^-1 grad_M                                       (Eq. 13)
    N <- N - lr grad_N (M M^T + delta I)^-1                                       (Eq. 14)

Both preconditioners are ``r x r`` and are computed from ``M_t``, ``N_t`` before either moves. Two forms:

- ``riemannian-sgd``: Eq. 13-14 literally (plain SGD on the preconditioned gradients);
- ``riemannian-adamw``: Zhang & Pilanci's scaled AdamW: precondition the gradient, then AdamW's moments.

Operands. Eq. 13-14 precondition the learnable parts with each other (``operands="learnable"``, the default,
following the paper). Zhang & Pilanci -- and peft's ``create_riemannian_optimizer`` -- use the full factors,
``U^T U = A^T A + B^T B`` and ``V V^T = C C^T + D D^T`` (``operands="full"``, offered for comparison). peft's
optimizer cannot be used as is: it looks for full ``lora_A``/``lora_B`` weight parameters, while a PLP layer's
parameters are only ``B`` and ``D`` (``A`` and ``C`` are buffers).

Conditioning guard. After stage 1, ``B`` and ``D`` are small (they start at zero), so ``N^T N`` can be tiny or
near singular, and with a fixed ``delta = 1e-6`` its inverse would multiply the gradient by up to 1e6. b4m uses
a ridge relative to the Gram matrix's scale, ``delta_eff = max(delta, delta_rel * tr(G) / r)``, which bounds
the preconditioner's condition number by about ``1 + 1/delta_rel`` whatever the scale of ``B`` and ``D``; and
normalises the preconditioner by ``tr(G + delta_eff I) / r``, so it redistributes the step across the rank
directions without changing its overall size (the learning rate keeps its meaning). With ``delta_rel = 0`` and
``normalize=False`` the update is Eq. 13-14 exactly (tested against an independent computation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from b4m.options import OPERANDS, STAGE2_OPTIMIZERS

__all__ = ["RiemannianPreconditioner", "make_stage2_optimizer"]


@dataclass
class _Pair:
    n: nn.Parameter  # content part B, (m' x r)
    m: nn.Parameter  # style part D, (r x n')
    a: torch.Tensor  # frozen A, (d_out x r)
    c: torch.Tensor  # frozen C, (r x d_in)


class RiemannianPreconditioner:
    """Rewrites ``.grad`` of every (``B``, ``D``) pair in place; call :meth:`apply` between backward and step."""

    def __init__(
        self,
        pairs: Sequence[tuple[nn.Parameter, nn.Parameter, torch.Tensor, torch.Tensor]],
        operands: str = "learnable",
        delta: float = 1e-6,
        delta_rel: float = 1e-2,
        normalize: bool = True,
    ) -> None:
        if operands not in OPERANDS:
            raise ValueError(
                f"operands must be 'learnable' (Eq. 13-14) or 'full' (Zhang & Pilanci), got {operands!r}"
            )
        if not pairs:
            raise ValueError("no (B, D) pairs to precondition; is a PLP adapter injected?")
        self.pairs = [_Pair(n, m, a, c) for n, m, a, c in pairs]
        self.operands = operands
        self.delta = delta
        self.delta_rel = delta_rel
        self.normalize = normalize

    def _inverse(self, gram: torch.Tensor) -> torch.Tensor:
        """``(G + delta_eff I)^-1`` for a batch of ``r x r`` Gram matrices, in float32 or better."""
        r = gram.shape[-1]
        eye = torch.eye(r, dtype=gram.dtype, device=gram.device)
        scale = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1) / r  # tr(G) / r
        ridge = torch.clamp(self.delta_rel * scale, min=self.delta)
        reg = gram + ridge[..., None, None] * eye
        inv = torch.linalg.inv(reg)
        if self.normalize:
            inv = inv * (scale + ridge)[..., None, None]
        return inv

    @torch.no_grad()
    def grams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``r x r`` operands of Eq. 13 (from ``N``) and Eq. 14 (from ``M``), stacked over layers."""
        gn, gm = [], []
        for p in self.pairs:
            n, m = p.n.detach().float(), p.m.detach().float()
            g_n, g_m = n.T @ n, m @ m.T
            if self.operands == "full":
                a, c = p.a.float(), p.c.float()
                g_n, g_m = g_n + a.T @ a, g_m + c @ c.T
            gn.append(g_n)
            gm.append(g_m)
        return torch.stack(gn), torch.stack(gm)

    @torch.no_grad()
    def apply(self) -> None:
        """``grad_M <- P_N grad_M`` and ``grad_N <- grad_N P_M`` with ``P = (G + delta I)^-1``, for all layers."""
        g_n, g_m = self.grams()  # both from the parameters before this step
        p_n, p_m = self._inverse(g_n), self._inverse(g_m)  # one batched inverse each: all layers share r
        for i, p in enumerate(self.pairs):
            if p.m.grad is not None:
                p.m.grad.copy_((p_n[i] @ p.m.grad.float()).to(p.m.grad.dtype))
            if p.n.grad is not None:
                p.n.grad.copy_((p.n.grad.float() @ p_m[i]).to(p.n.grad.dtype))


class _PreconditionedOptimizer:
    """A torch optimizer whose :meth:`step` first preconditions the gradients (refuses closures)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, preconditioner: RiemannianPreconditioner | None
    ) -> None:
        self.optimizer = optimizer
        self.preconditioner = preconditioner

    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        if closure is not None:
            raise ValueError(
                "the Riemannian preconditioner needs the gradients of one backward pass; closure-based "
                "optimizers (LBFGS) re-evaluate them -- call backward() yourself, then step()"
            )
        if self.preconditioner is not None:
            self.preconditioner.apply()
        return self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


OPTIMIZERS = STAGE2_OPTIMIZERS  # the names the CLI offers (b4m.config, which loads no torch)


def make_stage2_optimizer(
    pairs: Sequence[tuple[nn.Parameter, nn.Parameter, torch.Tensor, torch.Tensor]],
    name: str = "riemannian-adamw",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    operands: str = "learnable",
    delta: float = 1e-6,
    delta_rel: float = 1e-2,
    normalize: bool = True,
) -> _PreconditionedOptimizer:
    """The stage-2 optimizer by name: ``riemannian-adamw``, ``riemannian-sgd`` (Eq. 13-14), or ``adamw``
    (the paper's "w/o RP" arm)."""
    params = [p for pair in pairs for p in pair[:2]]
    if name == "riemannian-sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr)
    elif name in ("riemannian-adamw", "adamw"):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    pre = None
    if name.startswith("riemannian"):
        pre = RiemannianPreconditioner(
            pairs, operands=operands, delta=delta, delta_rel=delta_rel, normalize=normalize
        )
    return _PreconditionedOptimizer(opt, pre)
