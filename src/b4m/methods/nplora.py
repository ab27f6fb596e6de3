"""``nplora``: training-free null-space projection merge (NP-LoRA; method notes Sec. 5).

Per layer ``dW_m = dW_s + dW_c (I - mu/(1+mu) Q Q^T)`` where ``Q`` (``n x k``) is an orthonormal basis of the row
space of the style down projection ``V_s`` (the input directions the style reads), ``mu = 0.5`` by default. The
content update keeps its component orthogonal to those directions and keeps ``1/(1+mu)`` of the component inside
them (``mu -> inf``: a hard projection onto the null space of ``V_s``). Exported exactly as a rank ``r_s + r_c``
LoRA: ``U = [U_s | U_c]``, ``V = [V_s; V_c (I - mu/(1+mu) Q Q^T)]``.

Where the method notes are silent we choose: ``Q`` from an SVD of ``V_s`` in float64, keeping singular values
above ``1e-6`` times the largest (the numerical rank); each file's ``lora_alpha / r`` folded in first.
"""

from __future__ import annotations

from typing import Any

import torch

from b4m.adapters.compose import concat
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, NPLoRAOptions
from b4m.methods.common import MERGE_SOURCES, Session, align_sources, read_source, reused, save_adapter
from b4m.methods.direct_merge import _words, check_same_base

__all__ = ["NPLoRAOptions", "fit_nplora", "project_content", "strength", "style_row_basis"]


def style_row_basis(v_s: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """``Q`` (``n x k``): orthonormal basis of the row space of ``V_s`` (``r x n``), float64."""
    _, s, vh = torch.linalg.svd(v_s.double(), full_matrices=False)
    k = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    return vh[:k].T


def strength(mu: float) -> float:
    """``mu / (1 + mu)`` (1 for ``mu = inf``: the hard null-space projection)."""
    return 1.0 if mu == float("inf") else mu / (1.0 + mu)


def project_content(v_c: torch.Tensor, q: torch.Tensor, mu: float) -> torch.Tensor:
    """``V_c (I - mu/(1+mu) Q Q^T)``, computed as ``V_c - c (V_c Q) Q^T`` in float64."""
    c = strength(mu)
    v = v_c.double()
    return (v - c * (v @ q) @ q.T).to(v_c.dtype)


def fit_nplora(cfg: NPLoRAOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    check_same_base(cfg)
    session = Session(cfg, "nplora", inputs=MERGE_SOURCES)
    if session.finished is not None:
        return reused(session.finished)
    session.begin()
    content = read_source(cfg.content_lora, "--content-lora")
    style = read_source(cfg.style_lora, "--style-lora")
    names, content, style = align_sources(content, style)
    factors = {}
    bases = {}
    for n in names:
        (u_c, v_c), (u_s, v_s) = content[n], style[n]
        bases[n] = q = style_row_basis(v_s)
        factors[n] = concat([(1.0, u_s, v_s), (1.0, u_c, project_content(v_c, q, cfg.mu))])

    def merged() -> dict[str, Any]:  # dW_s + dW_c (I - mu/(1+mu) Q Q^T), densely in float64
        c = strength(cfg.mu)
        result = {}
        for n in names:
            (u_c, v_c), (u_s, v_s) = content[n], style[n]
            q = bases[n]
            proj = torch.eye(q.shape[0], dtype=torch.float64) - c * q @ q.T
            result[n] = (u_s.double() @ v_s.double() + u_c.double() @ v_c.double() @ proj).float()
        return result

    path = save_adapter(
        session,
        factors,
        "nplora",
        cfg,
        role="fused",
        sources={"content": str(cfg.content_lora), "style": str(cfg.style_lora)},
        trigger_words=_words(cfg),
    )
    return Fitted(path, merged_delta=merged, info={"bases": bases})


register(Method.of(CATALOGUE["nplora"], fit_nplora))
