"""``direct-merge``: ``W = W0 + l_c dW_c + l_s dW_s`` (B4M paper Eq. 3), exported exactly as one LoRA of rank
``r_c + r_s``: ``U = [l_c U_c | l_s U_s]``, ``V = [V_c; V_s]`` (:func:`b4m.adapters.compose.concat`).

Training-free; it reads two LoRA files and needs no model (each file's ``lora_alpha / r`` is folded in first).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from b4m.adapters.codec import load_lora
from b4m.adapters.compose import concat
from b4m.config import opt
from b4m.errors import B4MError
from b4m.methods.base import Fitted, Method, MethodOptions, register
from b4m.methods.common import align_sources, claim_out, read_source, save_adapter

__all__ = ["DirectMergeOptions", "check_same_base", "fit_direct_merge"]


@dataclasses.dataclass(frozen=True)
class DirectMergeOptions(MethodOptions):
    """``b4m run direct-merge``: the weighted sum of a content and a style LoRA."""

    lambda_c: float = opt(1.0, "content strength l_c (Eq. 3)")
    lambda_s: float = opt(1.0, "style strength l_s (Eq. 3)")


def check_same_base(cfg: Any) -> None:
    """Refuse sources trained on different base models (where both files record one)."""
    bases = {str(p): load_lora(p).meta.get("base_model") for p in (cfg.content_lora, cfg.style_lora)}
    known = {b for b in bases.values() if b is not None}
    if len(known) > 1:
        raise B4MError(
            f"--content-lora and --style-lora were trained on different base models ({', '.join(sorted(known))})"
        )


def fit_direct_merge(cfg: DirectMergeOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    out = claim_out(cfg, "direct-merge")
    check_same_base(cfg)
    content = read_source(cfg.content_lora, "--content-lora")
    style = read_source(cfg.style_lora, "--style-lora")
    names, content, style = align_sources(content, style)
    factors = {n: concat([(cfg.lambda_c, *content[n]), (cfg.lambda_s, *style[n])]) for n in names}

    def merged() -> dict[str, Any]:  # Eq. 3, densely
        return {
            n: cfg.lambda_c * content[n][0] @ content[n][1] + cfg.lambda_s * style[n][0] @ style[n][1]
            for n in names
        }

    path = save_adapter(
        out,
        factors,
        "direct-merge",
        cfg,
        role="fused",
        sources={"content": str(cfg.content_lora), "style": str(cfg.style_lora)},
        trigger_words=_words(cfg),
    )
    return Fitted(path, merged_delta=merged)


def _words(cfg: Any) -> list[str]:
    words: list[str] = []
    for p in (cfg.content_lora, cfg.style_lora):
        words += load_lora(p).meta.get("trigger_words", [])
    return list(dict.fromkeys(words))


register(
    Method(
        id="direct-merge",
        config=DirectMergeOptions,
        fit=fit_direct_merge,
        summary="W0 + l_c dW_c + l_s dW_s (Eq. 3), training-free",
        trains="nothing",
        needs=("content_lora", "style_lora"),
        writes="rank r_c + r_s LoRA (exact)",
    )
)
