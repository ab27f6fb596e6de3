"""Every method's config dataclass and description (:class:`~b4m.methods.base.MethodInfo`), in one light module.

Importing it loads no torch or diffusers: the command line builds ``b4m run --help`` and ``b4m run ID --help``
from :data:`CATALOGUE` alone. The maths lives in one module per method (``b4m.methods.<id>``), which registers
``Method.of(CATALOGUE[id], fit)``; each of those modules re-exports its config class, so
``b4m.methods.lora.LoRAOptions`` and ``b4m.methods.catalogue.LoRAOptions`` are the same class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from b4m.config import opt
from b4m.methods.base import LORA_SOURCES, MethodInfo, MethodOptions
from b4m.options import (
    MIXED_PRECISION,
    ORTH_CHOICES,
    ROUTINGS,
    STAGE2_OPTIMIZERS,
    B4MStage1Options,
    B4MStage2Options,
    DataOptions,
    MemoryOptions,
    SaveOptions,
    TrainingRecipeOptions,
    WatchOptions,
)
from b4m.options import PRESETS as B4M_PRESETS

__all__ = [
    "CATALOGUE",
    "TRAIN_PRESETS",
    "B4MOfficialOptions",
    "B4MOptions",
    "DirectMergeOptions",
    "DuoLoRAOptions",
    "JointOptions",
    "KLoRAOptions",
    "LoRAOptions",
    "NPLoRAOptions",
    "QRLoRAOptions",
    "TrainedOptions",
    "ZipLoRAOptions",
]

# The stage-1 budget of B4M on each base (options.PRESETS), so the baselines train as long as B4M's stage 1.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    key: {k: B4M_PRESETS[key][k] for k in ("steps", "lr", "rank", "resolution")} for key in ("sd", "builtin")
}


@dataclasses.dataclass(frozen=True)
class TrainedOptions(WatchOptions, MemoryOptions, DataOptions, TrainingRecipeOptions, MethodOptions):
    """Options of every trained baseline (``lora``, ``joint``, ``ziplora``, ``qrlora``, ``duolora``): they
    checkpoint like B4M's stages, and the same command run again on an unfinished run resumes it."""

    checkpoint_every: int = opt(
        100, "save a resumable checkpoint every N steps in <out>/checkpoints (0: never)"
    )
    mixed_precision: str = opt(
        "no", "autocast dtype on a GPU: no, bf16, fp16 (the frozen base loads in it)", choices=MIXED_PRECISION
    )


@dataclasses.dataclass(frozen=True)
class B4MAuxSets:
    """The auxiliary folders of B4M's two stage-1 runs (multi-correspondence learning, Eq. 12)."""

    aux_styles: list[str] = opt([], "auxiliary style folders of the content stage (train D, MCP)")
    aux_contents: list[str] = opt([], "auxiliary content folders of the style stage (train B, MCP)")
    aux_style_prompts: list[str] = opt([], "one prompt per auxiliary style folder (default: .txt captions)")
    aux_content_prompts: list[str] = opt(
        [], "one prompt per auxiliary content folder (default: .txt captions)"
    )


@dataclasses.dataclass(frozen=True)
class B4MOptions(
    WatchOptions,
    MemoryOptions,
    DataOptions,
    B4MStage2Options,
    TrainingRecipeOptions,
    B4MStage1Options,
    B4MAuxSets,
    MethodOptions,
):
    """``b4m run b4m``: stage 1 content + stage 1 style + stage 2, with B4M's presets per base model.

    B4M's own options are the stage configs' groups (:class:`~b4m.config.B4MStage1Options`,
    :class:`~b4m.config.B4MStage2Options`), declared once in :mod:`b4m.config`; here they show their ``run_help``.
    """

    mixed_precision: str = opt(
        "no", "autocast dtype on a GPU: no, bf16, fp16 (the frozen base loads in it)", choices=MIXED_PRECISION
    )


@dataclasses.dataclass(frozen=True)
class B4MOfficialOptions(B4MOptions):
    """``b4m run b4m-official``: B4M with the official code's known behaviour, each part a flag to turn off.

    Approximate frozen basis (``--orth approx``: ``A C != 0``), leaky MCP routing with its 10:1 learning-rate ratio
    (``--routing leaky --aux-lr-scale 0.1``), half the fused layers re-initialised before stage 2
    (``--reinit-every 2``) and an inactive preconditioner (its gradients are zeroed before it runs, so stage 2 is
    plain AdamW: ``--optimizer adamw``).
    """

    orth: str = opt("approx", "frozen parts (official: approx)", choices=ORTH_CHOICES)
    routing: str = opt("leaky", "stage-1 gradient routing (official: leaky)", choices=ROUTINGS)
    aux_lr_scale: float = opt(0.1, "stage 1: auxiliary part's learning rate relative to --lr (official: 0.1)")
    reinit_every: int = opt(2, "stage 2: reset B and D of every k-th fused layer first (official: 2, half)")
    optimizer: str = opt(
        "adamw",
        "stage 2 optimizer (official: adamw, its preconditioner being inactive)",
        choices=STAGE2_OPTIMIZERS,
    )


@dataclasses.dataclass(frozen=True)
class LoRAOptions(TrainedOptions):
    """``b4m run lora``: one LoRA on the content images (``--concept content``) or the style images."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = TRAIN_PRESETS

    concept: str = opt("content", "which images to learn: content or style", choices=["content", "style"])
    weight_decay: float = opt(1e-2, "AdamW weight decay")


@dataclasses.dataclass(frozen=True)
class JointOptions(TrainedOptions):
    """``b4m run joint``: one LoRA on content + style images (JTtrain)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = TRAIN_PRESETS

    weight_decay: float = opt(1e-2, "AdamW weight decay")


@dataclasses.dataclass(frozen=True)
class DirectMergeOptions(SaveOptions, MethodOptions):
    """``b4m run direct-merge``: the weighted sum of a content and a style LoRA."""

    lambda_c: float = opt(1.0, "content strength l_c (Eq. 3)")
    lambda_s: float = opt(1.0, "style strength l_s (Eq. 3)")


@dataclasses.dataclass(frozen=True)
class ZipLoRAOptions(TrainedOptions):
    """``b4m run ziplora``: learn column-wise merger coefficients for a content and a style LoRA."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "sd": {"steps": 100, "lr": 1e-2, "resolution": 512},
        "builtin": {"steps": 100, "lr": 1e-2, "resolution": 32},
    }

    lambda_merge: float = opt(0.01, "weight of the coefficient-overlap term sum |m_c . m_s|")


@dataclasses.dataclass(frozen=True)
class NPLoRAOptions(SaveOptions, MethodOptions):
    """``b4m run nplora``: project the content LoRA away from the style LoRA's input subspace."""

    mu: float = opt(
        0.5,
        "projection strength mu: the content keeps 1/(1+mu) of its part in the style subspace (inf: none)",
    )


@dataclasses.dataclass(frozen=True)
class QRLoRAOptions(TrainedOptions):
    """``b4m run qrlora``: a content and a style QR-LoRA on the base's shared basis, merged by adding dR."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = TRAIN_PRESETS

    alpha: float | None = opt(None, "LoRA alpha; scale s = alpha / r (default: alpha = r, s = 1)")
    lambda_c: float = opt(1.0, "content weight b of dR_c in the merge")
    lambda_s: float = opt(1.0, "style weight a of dR_s in the merge")


@dataclasses.dataclass(frozen=True)
class KLoRAOptions(MethodOptions):
    """``b4m run klora``: package a content and a style LoRA with K-LoRA's selection settings."""

    k: int = opt(64, "K: how many of the largest |dW| entries score each layer")
    alpha: float = opt(1.5, "slope of the time schedule s(t) = alpha (1 - t/T) + beta")
    beta: float = opt(0.5, "offset of the time schedule")


@dataclasses.dataclass(frozen=True)
class DuoLoRAOptions(TrainedOptions):
    """``b4m run duolora``: learn rank masks for a content and a style LoRA with layer priors and cycle loss."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "sd": {"steps": 100, "lr": 1e-2, "resolution": 512},
        "builtin": {"steps": 100, "lr": 1e-2, "resolution": 32},
    }

    combined_prompt: str | None = opt(
        None,
        "prompt of content in the style, for the Constyle cycle (default: '<content prompt>, <style prompt>')",
    )
    lambda_cycle: float = opt(0.01, "weight of the Constyle (cycle) loss")
    lambda_prior: float = opt(0.1, "weight of the rank loss of the layer priors")
    lambda_hinge: float = opt(1.0, "weight of the hinge inside the rank loss")
    prior_init: float = opt(
        0.5, "initial mask of the non-dominant concept in a layer (the dominant one starts at 1)"
    )
    prune_tol: float = opt(1e-3, "drop rank components whose |mask| is at most this on export")


#: Every method, in the order the registry lists them (``b4m methods``, ``b4m run --help``).
CATALOGUE: dict[str, MethodInfo] = {
    info.id: info
    for info in (
        MethodInfo(
            id="b4m",
            config=B4MOptions,
            summary="B4M: PLP + MCP stage 1 (content, style), fusion + Riemannian stage 2 (the default)",
            trains="B (content) and D (style) of partly frozen projections, then both",
            needs=("content_images", "style_images", "aux_sets"),
            writes="rank-r LoRA (PLP), plus the two stage-1 adapters",
            parts=("content", "style"),
        ),
        MethodInfo(
            id="b4m-official",
            config=B4MOfficialOptions,
            summary="B4M as the official code behaves (approx basis, leaky 10:1 routing, re-init, no RP)",
            trains="as b4m, with the official code's defects as flags",
            needs=("content_images", "style_images", "aux_sets"),
            writes="rank-r LoRA (PLP), plus the two stage-1 adapters",
            parts=("content", "style"),
        ),
        MethodInfo(
            id="lora",
            config=LoRAOptions,
            summary="plain one-concept DreamBooth LoRA (the merging methods' source adapters)",
            trains="U, V of every target layer on one concept's images",
            needs=("content_images|style_images",),
            writes="rank-r LoRA",
            concept_option="concept",
        ),
        MethodInfo(
            id="joint",
            config=JointOptions,
            summary="JTtrain: one LoRA on content and style images together (Eq. 2)",
            trains="U, V of every target layer on both image sets",
            needs=("content_images", "style_images"),
            writes="rank-r LoRA",
        ),
        MethodInfo(
            id="direct-merge",
            config=DirectMergeOptions,
            summary="W0 + l_c dW_c + l_s dW_s (Eq. 3), training-free",
            trains="nothing",
            needs=("content_lora", "style_lora"),
            writes="rank r_c + r_s LoRA (exact)",
            sources=LORA_SOURCES,
            budget=None,
        ),
        MethodInfo(
            id="ziplora",
            config=ZipLoRAOptions,
            summary="ZipLoRA: column-wise merger coefficients, <= 100 steps",
            trains="m_c, m_s (one per input feature of every layer)",
            needs=("content_lora", "style_lora", "content_images", "style_images"),
            writes="rank r_c + r_s LoRA (exact)",
            sources=LORA_SOURCES,
            budget="merge",
        ),
        MethodInfo(
            id="nplora",
            config=NPLoRAOptions,
            summary="NP-LoRA: content projected off the style's input subspace, training-free",
            trains="nothing",
            needs=("content_lora", "style_lora"),
            writes="rank r_s + r_c LoRA (exact)",
            sources=LORA_SOURCES,
            budget=None,
        ),
        MethodInfo(
            id="qrlora",
            config=QRLoRAOptions,
            summary="QR-LoRA: frozen Q, R from the base's top-r SVD; dR_c + dR_s merged in the shared basis",
            trains="dR (r x n per layer), once on content, once on style",
            needs=("content_images", "style_images"),
            writes="rank-r LoRA (exact), plus content/style QR-LoRAs",
        ),
        MethodInfo(
            id="klora",
            config=KLoRAOptions,
            summary="K-LoRA: per-layer, per-step top-K choice of content or style, training-free, at generation",
            trains="nothing",
            needs=("content_lora", "style_lora"),
            writes="both sources + settings (generation-time; not one LoRA)",
            sources=LORA_SOURCES,
            budget=None,
        ),
        MethodInfo(
            id="duolora",
            config=DuoLoRAOptions,
            summary="DuoLoRA: ZipRank rank masks, layer priors from the UNet's structure, Constyle cycle loss",
            trains="m_c, m_s (one per rank component of every layer)",
            needs=("content_lora", "style_lora", "content_images", "style_images"),
            writes="LoRA of rank <= r_c + r_s (exact; near-zero components pruned)",
            sources=LORA_SOURCES,
            budget="merge",
        ),
    )
}
