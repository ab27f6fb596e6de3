"""Low-rank updates whose factors are *computed* (from coefficients, masks, frozen bases), attached to linear layers.

peft's LoRA layer holds two ``nn.Linear`` factors. The baselines of :mod:`b4m.methods` parameterise their update
differently (ZipLoRA: column coefficients on two frozen LoRAs; DuoLoRA: rank masks; QR-LoRA: a frozen ``Q`` and
a learnable ``dR``), so each writes a small :class:`Delta` module whose :meth:`Delta.factors` returns the
current ``(U, V)`` with ``dW = U V``; :class:`DeltaLinear` computes ``W0 x + U (V x)``. The same ``factors()``
is what the method exports, so the file is the trained model by construction.

A :func:`delta_mode` context lets one module answer for several models in one training step (ZipLoRA's and
DuoLoRA's teachers: ``"content"``, ``"style"``; the merged model when no mode is set).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from b4m.adapters.compose import concat
from b4m.errors import B4MError

__all__ = [
    "MergedPairDelta",
    "Delta",
    "DeltaLinear",
    "LoRADelta",
    "attach",
    "current_mode",
    "delta_mode",
    "detach",
    "factors_of",
    "target_linears",
]

_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("b4m_delta_mode", default=None)


@contextlib.contextmanager
def delta_mode(mode: str | None) -> Iterator[None]:
    """Inside this context every :class:`Delta` returns the factors of model ``mode`` (``None``: the merged one)."""
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def current_mode() -> str | None:
    return _MODE.get()


class Delta(nn.Module):
    """One layer's update: subclasses return ``(U, V)`` (``m x r``, ``r x n``) or ``None`` for no update."""

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:  # pragma: no cover - interface
        raise NotImplementedError


class LoRADelta(Delta):
    """A plain LoRA ``dW = U V`` (Hu et al. 2021): ``U`` zero-initialised, ``V`` as peft initialises ``lora_A``
    (Kaiming-uniform with ``a = sqrt(5)``: uniform in ``+-1/sqrt(n)``), so ``dW = 0`` at step 0."""

    def __init__(self, m: int, n: int, rank: int, gen: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(n)
        self.up = nn.Parameter(torch.zeros(m, rank))
        self.down = nn.Parameter((torch.rand(rank, n, generator=gen) * 2 - 1) * bound)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.up, self.down


class MergedPairDelta(Delta):
    """Two frozen source LoRAs of one layer (buffers ``u_c, v_c, u_s, v_s``) merged through learnable
    coefficients ``m_c``, ``m_s``: ``dW = fold(U_c, V_c, m_c) + fold(U_s, V_s, m_s)`` as one exact pair. The
    merging methods (ZipLoRA: per input column, DuoLoRA: per rank component) differ in ``fold`` and in how
    they start the coefficients; under :func:`delta_mode` ``"content"`` / ``"style"`` a layer is its source
    alone (the merge losses compare against those)."""

    fold: staticmethod  # (U, V, m) -> (U', V') with U' V' the masked dW; set by subclasses

    def __init__(
        self, content: tuple[torch.Tensor, torch.Tensor], style: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        super().__init__()
        for key, t in zip(("u_c", "v_c", "u_s", "v_s"), (*content, *style), strict=True):
            self.register_buffer(key, t.detach().clone().float())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        mode = current_mode()
        if mode == "content":
            return self.u_c, self.v_c
        if mode == "style":
            return self.u_s, self.v_s
        return concat(
            [(1.0, *self.fold(self.u_c, self.v_c, self.m_c)), (1.0, *self.fold(self.u_s, self.v_s, self.m_s))]
        )


class DeltaLinear(nn.Module):
    """``y = W0 x + U (V x)``, with ``(U, V) = delta.factors()`` and the frozen base layer ``W0``."""

    def __init__(self, base_layer: nn.Linear, delta: Delta) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = delta

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        pair = self.delta.factors()
        if pair is None:
            return y
        u, v = pair
        return y + F.linear(F.linear(x, v.to(x.dtype)), u.to(x.dtype))


def _matches(name: str, targets: Sequence[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_linears(
    model: nn.Module, targets: Sequence[str] | str, blocks: Sequence[str] = ()
) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of ``model`` that ``targets`` selects, by peft's rule (module-name suffixes, or
    one regex over full names), inside ``blocks`` (:func:`~b4m.adapters.blocks.in_blocks`; empty: anywhere).
    Raises :class:`B4MError` when nothing matches."""
    from b4m.adapters.blocks import in_blocks

    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, targets)
    }
    if not found:
        raise B4MError(f"no linear layer of the model matches target modules {targets!r}")
    return {name: found[name] for name in in_blocks(found, blocks)}


def attach(model: nn.Module, deltas: Mapping[str, Delta]) -> dict[str, DeltaLinear]:
    """Replace each layer ``name`` of ``model`` by ``DeltaLinear(layer, deltas[name])``; returns the wrappers."""
    wrappers = {}
    for name, delta in deltas.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if isinstance(base, DeltaLinear):
            raise B4MError(f"{name}: already carries a method's update; start from a fresh pipeline")
        ref = base.weight
        wrapper = DeltaLinear(base, delta.to(device=ref.device))
        setattr(parent, child, wrapper)
        wrappers[name] = wrapper
    return wrappers


def detach(model: nn.Module) -> None:
    """Undo :func:`attach`: put every wrapped base layer back."""
    for name, module in list(model.named_modules()):
        if isinstance(module, DeltaLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.base_layer)


@torch.no_grad()
def factors_of(deltas: Mapping[str, Delta]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The current ``(U, V)`` of every layer, detached, float32, on the CPU (what a method exports)."""
    with delta_mode(None):
        out = {}
        for name, delta in deltas.items():
            pair = delta.factors()
            if pair is not None:
                out[name] = (pair[0].detach().float().cpu(), pair[1].detach().float().cpu())
        return out
