"""``direct-merge``: ``W = W0 + l_c dW_c + l_s dW_s`` (B4M paper Eq. 3), exported exactly as one LoRA of rank
``r_c + r_s``: ``U = [l_c U_c | l_s U_s]``, ``V = [V_c; V_s]`` (:func:`b4m.adapters.compose.concat`).

Training-free; it reads two LoRA files and needs no model (each file's ``lora_alpha / r`` is folded in first).
"""

from __future__ import annotations

from typing import Any

from b4m.adapters.codec import load_lora
from b4m.adapters.compose import concat
from b4m.errors import B4MError
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, DirectMergeOptions
from b4m.methods.common import MERGE_SOURCES, Session, align_sources, read_source, reused, save_adapter

__all__ = ["DirectMergeOptions", "check_same_base", "fit_direct_merge"]


def check_same_base(cfg: Any) -> None:
    """Refuse sources trained on another base model than ``--base``, or on different ones (where the files
    record one)."""
    from b4m.diffusion.sampling import check_base_model

    for option, path in (("--content-lora", cfg.content_lora), ("--style-lora", cfg.style_lora)):
        if path is not None:
            check_base_model(load_lora(path), cfg.base, option)
    bases = {str(p): load_lora(p).meta.get("base_model") for p in (cfg.content_lora, cfg.style_lora)}
    known = {b for b in bases.values() if b is not None}
    if len(known) > 1:
        raise B4MError(
            f"--content-lora and --style-lora were trained on different base models ({', '.join(sorted(known))})"
        )


def fit_direct_merge(cfg: DirectMergeOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    check_same_base(cfg)
    session = Session(cfg, "direct-merge", inputs=MERGE_SOURCES)
    if session.finished is not None:
        return reused(session.finished)
    session.begin()
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
        session,
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


register(Method.of(CATALOGUE["direct-merge"], fit_direct_merge))
