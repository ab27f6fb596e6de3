"""B4M's arms in ``b4m bench``, without torch: the named ablation arms, the option arms, their labels.

The arms are the paper's Table 1 ablations (B4M, Xu et al., ACM TOG 2025, Sec. 5.3) and its rho study (Fig. 11):

======================  ===================================================================================
arm                     B4M options it changes
======================  ===================================================================================
``full``                none (B4M as ``b4m run b4m`` runs it; every other method's row is also ``full``)
``no-mcp``              ``mcp=False``: stage 1 on the target images only (w/o MCP, Eq. 12)
``no-orth``             ``orth="none"``: random frozen parts, ``A C != 0`` (w/o Orth)
``approx-orth``         ``orth="approx"``: the official code's approximate orthogonal construction
``no-rp``               ``optimizer="adamw"``: plain AdamW in stage 2 (w/o RP, Eq. 13-14)
``rp-sgd``              ``optimizer="riemannian-sgd"``: Eq. 13-14's SGD form with b4m's conditioning guard (relative
                        ridge, trace normalisation), at its own learning rate: ``--sgd-lr``, or by default the
                        value of :data:`SGD_LR_GRID` with the lowest stage-2 training loss on the pair (the arm's
                        own objective; no judge sees the candidates)
``rp-literal``          as ``rp-sgd`` with ``delta_rel=0, normalize=False``: Eq. 13-14 literally
``fusion-only``         ``stage2_steps=0``: the fused stage-1 adapters, no fine-tuning
``paper``               the paper's stage-2 recipe in the built-in world's proportions: stage 2 at stage 1's learning
                        rate, 40 steps ("a few dozen"), the official code's clipping 1.0 and weight decay 1e-2
``content-alone``       ``full``'s stage-1 content adapter ``[A;B_c][C,D_aux]`` sampled alone (where identity goes)
``content-block``       its content block alone, ``[A;B_c][C,0]`` (``D_aux`` scaled to 0)
``style-alone``         ``full``'s stage-1 style adapter ``[A;B_aux][C,D_s]`` sampled alone
``fusion-rows``         beyond the paper: the stage-1 adapters' own rows, ``[A;0][C,D_s] + [0;B_c][C,D_aux]``
``rho=k/8``             ``rho=k/8`` (``--rho``): the frozen fraction of each projection (Fig. 11)
======================  ===================================================================================

Every other method has option arms too, ``METHOD:key=value[+key=value]`` (``lora:lr=1e-3``,
``direct-merge:lambda_s=0.7+lambda_c=1.2``): the same small tuning budget for the baselines; the overrides go to
the method's own fit, never to its source LoRAs.

Arms that change only stage-2 knobs (``no-rp``, ``rp-sgd``, ``fusion-only``) share the stage-1 adapters of
``full``; every merging method shares the same two source LoRAs (``lora`` on the content, ``lora`` on the style).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

from b4m.options import PRESETS, STAGE2_OPTIONS

__all__ = [
    "ARMS",
    "ARMS_OF",
    "BASE_LABEL",
    "DEFAULT_ARMS",
    "PART",
    "PART_STYLE_SCALE",
    "ROWS",
    "SGD_LR_GRID",
    "STAGE2_KNOBS",
    "TUNED",
    "arm_options",
    "option_arm",
    "run_label",
    "split_arm",
]

#: Candidate stage-2 learning rates of the ``rp-sgd`` arm (plain SGD steps are not scale-free like Adam's,
#: so its rate is searched per pair instead of borrowed from RP-AdamW).
SGD_LR_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
#: The ``stage2_lr`` of a run spec whose rate the bench tunes on the pair (:data:`SGD_LR_GRID`).
TUNED = "tuned"

PART = "part"
"""An arm's key naming the part of B4M's fit it samples (:attr:`b4m.methods.base.Fitted.parts`) instead of the
fused adapter; the fit itself is ``full``'s (the same cached sub-fits), so such an arm costs only its sampling."""
ROWS = "rows"
"""The part value of the ``fusion-rows`` arm: the row fusion of B4M's two stage-1 adapters."""
PART_STYLE_SCALE = "part_style_scale"
"""An arm's key: that part sampled with ``D`` scaled by this (0: the content block ``[A;B][C,0]`` alone)."""

#: arm -> (what it is, B4M option overrides; ``None`` values are filled by the bench: ``rp-sgd``'s lr).
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("B4M (exact orth, MCP, RP-AdamW)", {}),
    "no-mcp": ("w/o MCP", {"mcp": False}),
    "no-orth": ("w/o Orth (random frozen parts)", {"orth": "none"}),
    "approx-orth": ("approx orth (official construction)", {"orth": "approx"}),
    "no-rp": ("w/o RP (plain AdamW in stage 2)", {"optimizer": "adamw"}),
    "rp-sgd": (
        "RP, SGD form (ridge-regularised, trace-normalised)",
        {"optimizer": "riemannian-sgd", "stage2_lr": None},
    ),
    "rp-literal": (
        "RP, Eq. 13-14 literally (SGD, delta 1e-6 only, no normalisation)",
        {"optimizer": "riemannian-sgd", "stage2_lr": None, "delta_rel": 0.0, "normalize": False},
    ),
    "fusion-only": ("no stage 2 (fusion only)", {"stage2_steps": 0}),
    # The paper's recipe in the built-in world's proportions: stage 2 at stage 1's rate (paper: 1e-4 both; the
    # built-in preset's stage-1 rate is 2e-3) for "a few dozen" steps, with the official clipping and decay.
    "paper": (
        "the paper's recipe in proportion (stage-2 lr = stage-1 lr, 40 steps, clip 1.0, weight decay 1e-2)",
        {
            "stage2_lr": PRESETS["builtin"]["lr"],
            "stage2_steps": 40,
            "stage2_max_grad_norm": 1.0,
            "stage2_weight_decay": 1e-2,
        },
    ),  # fmt: skip
    # Where identity goes (issue H1): B4M's own fit, sampled through one of its parts; sampling only.
    "content-alone": ("stage-1 content adapter alone [A;B_c][C,D_aux]", {PART: "content"}),
    "content-block": ("content block alone [A;B_c][C,0]", {PART: "content", PART_STYLE_SCALE: 0.0}),
    "style-alone": ("stage-1 style adapter alone [A;B_aux][C,D_s]", {PART: "style"}),
    # Beyond the paper: each stage-1 adapter keeps the rows it trained (b4m.adapters.plp.row_fusion).
    "fusion-rows": (
        "row fusion [A;0][C,D_s] + [0;B_c][C,D_aux], no stage 2 (beyond the paper)",
        {PART: ROWS},
    ),
}
DEFAULT_ARMS: tuple[str, ...] = tuple(ARMS)
ARMS_OF = "b4m"
"""The method the ablation arms are arms of (B4M as ``b4m run b4m`` runs it)."""
BASE_LABEL = "base model (prompt only)"
"""The display label of the base model's row (method ``base``)."""


def run_label(method: str, arm: str) -> str:
    """The one display label of a ``(method, arm)`` row: results are keyed by the pair, labels only shown."""
    if method == "base":
        return BASE_LABEL
    if arm == "full":
        return method
    return f"{method}: {ARMS[arm][0] if arm in ARMS else arm}"


STAGE2_KNOBS = STAGE2_OPTIONS
"""Options that stage 1 never reads (B4M's stage-2 group, :class:`b4m.config.B4MStage2Options`): arms changing
only these reuse the stage-1 adapters of ``full``."""


_NOT_ARM_OPTIONS = frozenset(
    {"out", "overwrite", "base", "seed", "checkpoint_every", "mixed_precision", "concept"}
)


def split_arm(arm: str) -> tuple[str, str]:
    """``(method, arm)`` of an ``--arms`` entry: ``lora:lr=1e-3`` -> ``("lora", "lr=1e-3")``; an entry without a
    ``METHOD:`` prefix (``no-rp``, ``aux_lr_scale=0.1``, ``rho=3/8``) is B4M's (:data:`ARMS_OF`)."""
    head, sep, rest = arm.partition(":")
    if sep and "=" not in head and "+" not in head:
        return head.strip(), rest.strip()
    return ARMS_OF, arm


def _config(method: str) -> type:
    from b4m.methods.catalogue import CATALOGUE

    return CATALOGUE[method].config


def _option_value(config: type, key: str, text: str, who: str = "B4M") -> Any:
    """``text`` as the type of option ``key`` of the method config ``config`` (``who``: the method's name in
    messages; ValueError: not a training option, or not of its type)."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    inputs = (
        key.endswith(("_images", "_prompt", "_prompts", "_lora"))
        or key.startswith("aux_")
        and key != "aux_lr_scale"
    )
    if key not in fields or key in _NOT_ARM_OPTIONS or inputs:
        raise ValueError(f"{key} is not a {who} training option")
    kind, choices = str(fields[key].type), fields[key].metadata.get("choices")
    if "bool" in kind:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{key} takes true or false")
        return text.lower() == "true"
    if "int" in kind:
        return int(text)
    if "float" in kind:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{key} takes a finite number")
        return value
    if choices and text not in choices:
        raise ValueError(f"{key} takes one of {', '.join(choices)}")
    return text


def option_arm(arm: str, method: str = ARMS_OF) -> dict[str, Any]:
    """The overrides of an option arm of ``method`` (default B4M), ``key=value`` or several joined by ``+``
    (``aux_lr_scale=0.1``, ``stage2_lr=1e-3+stage2_steps=50``; ``lr=1e-3`` of ``lora:lr=1e-3``): any training
    option of the method (``b4m run METHOD --help``; dashes or underscores), for the dev suite's experiments; for
    B4M a named arm among them adds its own overrides, applied in order (``paper+aux_lr_scale=0.1``; a part arm
    samples that part of this fit: ``content-alone+aux_lr_scale=0.1``; ``rp-literal+...`` keeps its tuned
    rate). ValueError names what is wrong."""
    config = _config(method)
    b4m_like = any(f.name == "stage2_steps" for f in dataclasses.fields(config))  # B4M's named arms apply
    who = "B4M" if method == ARMS_OF else method
    out: dict[str, Any] = {}
    for part in arm.split("+"):
        if part in ARMS and b4m_like:  # content-alone+aux_lr_scale=0.1: that part; paper+...: its recipe
            out |= ARMS[part][1]
            continue
        key, sep, text = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not text.strip():
            raise ValueError(f"write {part!r} as key=value")
        try:
            out[key] = _option_value(config, key, text.strip(), who)
        except ValueError as err:
            raise ValueError(str(err) if key in str(err) else f"{key}={text.strip()}: {err}") from None
    return out


def arm_options(arm: str, sgd_lr: float | None, method: str = ARMS_OF) -> dict[str, Any]:
    """B4M option overrides of ``arm`` (``"rho=3/8"`` and option arms ``key=value`` included), or those of
    another ``method``'s option arm; ``sgd_lr=None`` marks ``rp-sgd``'s rate as :data:`TUNED` (the grid goes into
    the spec, so a different grid is a different run)."""
    if arm == "full":
        return {}
    if (
        arm.startswith("rho=") and "+" not in arm and method == ARMS_OF
    ):  # --rho's 3/8 (Fraction reads 0.25 too)
        return {"rho": float(Fraction(arm[4:]))}
    over = option_arm(arm, method) if "=" in arm or "+" in arm else dict(ARMS[arm][1])
    if "stage2_lr" in over and over["stage2_lr"] is None:  # the rp-sgd arms' rate: tuned, or --sgd-lr
        over["stage2_lr"] = TUNED if sgd_lr is None else sgd_lr
        if sgd_lr is None:
            over["sgd_lr_grid"] = list(SGD_LR_GRID)
    return over
