"""``b4m`` (the default): B4M, Break-for-Make (Xu et al., ACM TOG 2025), through the method contract.

A thin wrapper over the two stages, which stay where they are: stage 1 (:func:`b4m.train.stage1.train_stage1`, PLP
Eq. 4-11 with MCP Eq. 12) trains a content adapter (``B``) with auxiliary styles and a style adapter (``D``) with
auxiliary contents; stage 2 (:func:`b4m.train.stage2.train_stage2`) fuses ``[A; B_content] x [C, D_style]`` and
fine-tunes it with the Riemannian preconditioner (Eq. 13-14). Files: ``<out>/content/adapter.safetensors``,
``<out>/style/adapter.safetensors`` and the fused ``<out>/adapter.safetensors``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from b4m.adapters.codec import load_lora
from b4m.config import Stage1Config, Stage2Config, opt
from b4m.methods.base import Fitted, Method, MethodOptions, register
from b4m.methods.common import check_folders, claim_out

__all__ = ["B4MOfficialOptions", "B4MOptions", "fit_b4m", "stage_configs"]


@dataclasses.dataclass(frozen=True)
class B4MOptions(MethodOptions):
    """``b4m run b4m``: stage 1 content + stage 1 style + stage 2, with B4M's presets per base model."""

    aux_styles: list[str] = opt([], "auxiliary style folders of the content stage (train D, MCP)")
    aux_contents: list[str] = opt([], "auxiliary content folders of the style stage (train B, MCP)")
    aux_style_prompts: list[str] = opt([], "one prompt per auxiliary style folder (default: .txt captions)")
    aux_content_prompts: list[str] = opt(
        [], "one prompt per auxiliary content folder (default: .txt captions)"
    )
    rho: float = opt(0.5, "frozen fraction of each projection: d_out = round(rho m), d_in = round(rho n)")
    orth: str = opt(
        "exact",
        "frozen parts: exact (A C = 0), approx (official code), none (w/o Orth)",
        choices=["exact", "approx", "none"],
    )
    basis_seed: int = opt(0, "seed of the frozen orthogonal basis")
    mcp: bool = opt(True, "multi-correspondence learning; --no-mcp: target images only (w/o MCP)")
    weight_decay: float = opt(1e-2, "stage-1 AdamW weight decay")
    checkpoint_every: int = opt(100, "stage 1: save a resumable checkpoint every N steps (0: never)")
    stage2_steps: int | None = opt(None, "stage-2 fine-tuning steps (B4M preset; 0: fuse only)")
    stage2_lr: float | None = opt(None, "stage-2 learning rate (B4M preset)")
    optimizer: str = opt(
        "riemannian-adamw",
        "stage 2: riemannian-adamw, riemannian-sgd (Eq. 13-14) or adamw (w/o RP)",
        choices=["riemannian-adamw", "riemannian-sgd", "adamw"],
    )
    operands: str = opt(
        "learnable", "preconditioner operands: learnable or full", choices=["learnable", "full"]
    )
    delta: float = opt(1e-6, "absolute ridge of the r x r preconditioner inverse")
    delta_rel: float = opt(1e-2, "ridge relative to tr(G)/r")
    routing: str = opt(
        "strict",
        "stage-1 gradient routing: strict (Eq. 12) or leaky (official code: both losses reach both parts)",
        choices=["strict", "leaky"],
    )
    aux_lr_scale: float = opt(
        1.0, "stage 1: learning rate of the auxiliary part relative to --lr (official: 0.1)"
    )
    reinit_every: int = opt(0, "stage 2: reset B and D of every k-th fused layer to zero first (official: 2)")


@dataclasses.dataclass(frozen=True)
class B4MOfficialOptions(B4MOptions):
    """``b4m run b4m-official``: B4M with the official code's known behaviour, each part a flag to turn off.

    Approximate frozen basis (``--orth approx``: ``A C != 0``), leaky MCP routing with its 10:1 learning-rate ratio
    (``--routing leaky --aux-lr-scale 0.1``), half the fused layers re-initialised before stage 2
    (``--reinit-every 2``) and an inactive preconditioner (its gradients are zeroed before it runs, so stage 2 is
    plain AdamW: ``--optimizer adamw``).
    """

    orth: str = opt("approx", "frozen parts (official: approx)", choices=["exact", "approx", "none"])
    routing: str = opt("leaky", "stage-1 gradient routing (official: leaky)", choices=["strict", "leaky"])
    aux_lr_scale: float = opt(0.1, "stage 1: auxiliary part's learning rate relative to --lr (official: 0.1)")
    reinit_every: int = opt(2, "stage 2: reset B and D of every k-th fused layer first (official: 2, half)")
    optimizer: str = opt(
        "adamw",
        "stage 2 optimizer (official: adamw, its preconditioner being inactive)",
        choices=["riemannian-adamw", "riemannian-sgd", "adamw"],
    )


def stage_configs(cfg: B4MOptions, out: Path) -> tuple[Stage1Config, Stage1Config, Stage2Config]:
    """The stage configs a :class:`B4MOptions` stands for (``None`` fields stay ``None``: B4M's presets fill them)."""
    shared = dict(
        rank=cfg.rank,
        rho=cfg.rho,
        orth=cfg.orth,
        basis_seed=cfg.basis_seed,
        targets=list(cfg.targets),
        base=cfg.base,
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        resolution=cfg.resolution,
        mcp=cfg.mcp,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        overwrite=cfg.overwrite,
    )
    content = Stage1Config(
        images=cfg.content_images,
        prompt=cfg.content_prompt,
        aux=list(cfg.aux_styles) if cfg.mcp else [],
        aux_prompts=list(cfg.aux_style_prompts) if cfg.mcp else [],
        out=out / "content",
        **shared,
    )
    style = Stage1Config(
        images=cfg.style_images,
        prompt=cfg.style_prompt,
        aux=list(cfg.aux_contents) if cfg.mcp else [],
        aux_prompts=list(cfg.aux_content_prompts) if cfg.mcp else [],
        out=out / "style",
        **shared,
    )
    stage2 = Stage2Config(
        content=out / "content" / "adapter.safetensors",
        style=out / "style" / "adapter.safetensors",
        content_images=cfg.content_images,
        content_prompt=cfg.content_prompt,
        style_images=cfg.style_images,
        style_prompt=cfg.style_prompt,
        base=cfg.base,
        out=out,
        stage2_steps=cfg.stage2_steps,
        stage2_lr=cfg.stage2_lr,
        optimizer=cfg.optimizer,
        operands=cfg.operands,
        delta=cfg.delta,
        delta_rel=cfg.delta_rel,
        resolution=cfg.resolution,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
    )
    return content, style, stage2


def fit_b4m(cfg: B4MOptions, pipe: Any = None, progress: bool = True, method_id: str = "b4m") -> Fitted:
    from b4m.train.stage1 import train_stage1
    from b4m.train.stage2 import train_stage2

    out = claim_out(cfg, method_id)
    check_folders(cfg, ["content", "style"])
    content, style, stage2 = stage_configs(cfg, out)

    def fresh() -> Any:  # every stage injects its own adapter: give each a clean copy of a caller's pipeline
        return None if pipe is None else copy.deepcopy(pipe)

    official = {"routing": cfg.routing, "aux_lr_scale": cfg.aux_lr_scale}
    train_stage1(content, "content", pipe=fresh(), progress=progress, **official)
    train_stage1(style, "style", pipe=fresh(), progress=progress, **official)
    path = train_stage2(stage2, pipe=fresh(), progress=progress, reinit_every=cfg.reinit_every)
    lora = load_lora(path)
    return Fitted(path, merged_delta=lambda: {n: u @ v for n, (u, v) in lora.factors.items()})


register(
    Method(
        id="b4m",
        config=B4MOptions,
        fit=fit_b4m,
        summary="B4M: PLP + MCP stage 1 (content, style), fusion + Riemannian stage 2 (the default)",
        trains="B (content) and D (style) of partly frozen projections, then both",
        needs=("content_images", "style_images", "aux_sets"),
        writes="rank-r LoRA (PLP), plus the two stage-1 adapters",
    )
)


register(
    Method(
        id="b4m-official",
        config=B4MOfficialOptions,
        fit=lambda cfg, pipe=None, progress=True: fit_b4m(cfg, pipe, progress, method_id="b4m-official"),
        summary="B4M as the official code behaves (approx basis, leaky 10:1 routing, re-init, no RP)",
        trains="as b4m, with the official code's defects as flags",
        needs=("content_images", "style_images", "aux_sets"),
        writes="rank-r LoRA (PLP), plus the two stage-1 adapters",
    )
)
