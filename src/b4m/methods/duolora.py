"""``duolora``: DuoLoRA (Roy et al., ICCV 2025): ZipRank masks in the rank dimension, layer priors, Constyle loss.

Per layer, masks ``m_c in R^{r_c}``, ``m_s in R^{r_s}`` on a frozen content and style LoRA (ZipRank):

    dW_m = U_c diag(m_c) V_c + U_s diag(m_s) V_s

**Layer priors**, worked out from the UNet at hand (:func:`layer_priors`): every attention block is placed at its
resolution level (``down_blocks.i`` at level ``i``, ``up_blocks.j`` at ``L - 1 - j``, the ``mid_block`` half a
level below the deepest down block); the lower-resolution half of those levels is *content*, the rest *style*. On
SDXL that is content ``down_blocks.2``, ``mid_block``, ``up_blocks.0`` and style ``down_blocks.1``, ``up_blocks.1``
(the paper's split, on names that exist; the author's code names blocks that do not); on SD 1.x content
``down_blocks.2``, ``mid_block``, ``up_blocks.1`` and style ``down_blocks.0/1``, ``up_blocks.2/3``; on the built-in
base the same as SDXL. The prior initialises the masks (the layer's own concept 1, the other ``prior_init``) and
sets the **rank loss** (nuclear norm of ``diag(m)`` = ``||m||_1``), in a content layer

    L_rank = ||m_c||_1 / r_c + lambda_hinge max(0, ||m_s||_1 / r_s - ||m_c||_1 / r_c)

and the mirror in a style layer (norms divided by the rank: the paper does not fix their scale).

**Constyle loss** (cycle consistency): the content latent ``z_c`` noised at ``t`` is stylised by the style LoRA
under the combined prompt, mapped to its ``x0``, re-noised with the same noise, and de-stylised by the content
LoRA under the content prompt; the merged model's prediction for ``z_c`` must match it. The mirror cycle starts
from the style latent. Plus ZipLoRA's merge loss (merged vs content LoRA on content, vs style LoRA on style):

    L = L_merge + lambda_cycle (L_cyc,c + L_cyc,s) + lambda_prior sum_layers L_rank

Reported settings: 100 steps, Adam lr 1e-2, ``lambda_cycle = 0.01``, ``lambda_prior = 0.1``. Exported exactly as
one LoRA of rank up to ``r_c + r_s``: ``U = [U_c diag(m_c) | U_s diag(m_s)]``, ``V = [V_c; V_s]``, with rank
components whose ``|m|`` is at most ``prune_tol`` dropped (the largest change this causes is recorded).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from b4m.adapters.compose import concat, fold_ranks
from b4m.adapters.deltas import MergedPairDelta, attach, delta_mode, factors_of
from b4m.diffusion.pipeline import encode_prompts, masked_mse, training_scheduler
from b4m.errors import B4MError
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, DuoLoRAOptions
from b4m.methods.common import (
    MERGE_INPUTS,
    Session,
    align_sources,
    check_folders,
    named_params,
    predict,
    read_source,
    reused,
    save_adapter,
    train_steps,
)
from b4m.methods.direct_merge import _words, check_same_base
from b4m.train.loop import sample_batch

__all__ = ["DuoDelta", "DuoLoRAOptions", "block_level", "fit_duolora", "layer_priors", "predicted_x0"]


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


def block_level(name: str, n_down: int, n_up: int) -> float | None:
    """Resolution level of the block holding layer ``name`` (higher = lower resolution); ``None`` outside blocks."""
    match = _BLOCK.match(name)
    if match is None:
        return None
    if match.group(3):
        return n_down - 1 + 0.5
    index = int(match.group(2))
    return float(index) if match.group(1) == "down_blocks" else float(n_up - 1 - index)


def layer_priors(unet: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """``{layer: "content" | "style"}`` from the UNet's own structure (see the module docstring)."""
    n_down = len(unet.config.down_block_types)
    n_up = len(unet.config.up_block_types)
    levels = {n: block_level(n, n_down, n_up) for n in names}
    distinct = sorted({lv for lv in levels.values() if lv is not None}, reverse=True)
    if len(distinct) < 2:
        raise B4MError(
            "duolora: the UNet's adapted layers sit at one resolution level; no layer prior applies"
        )
    content_levels = set(distinct[: (len(distinct) + 1) // 2])
    return {n: ("content" if lv in content_levels else "style") for n, lv in levels.items() if lv is not None}


class DuoDelta(MergedPairDelta):
    """Frozen source factors and the learnable ZipRank masks of one layer: one per rank component, starting
    at 1 for the layer's own concept and at ``prior_init`` for the other."""

    fold = staticmethod(fold_ranks)

    def __init__(self, content: tuple, style: tuple, prior: str, prior_init: float) -> None:
        super().__init__(content, style)
        self.prior = prior
        c0, s0 = (1.0, prior_init) if prior == "content" else (prior_init, 1.0)
        self.m_c = torch.nn.Parameter(torch.full((self.u_c.shape[1],), c0))
        self.m_s = torch.nn.Parameter(torch.full((self.u_s.shape[1],), s0))

    def rank_loss(self, hinge: float) -> torch.Tensor:
        n_c, n_s = self.m_c.abs().mean(), self.m_s.abs().mean()  # ||m||_1 / r = ||diag m||_* / r
        own, other = (n_c, n_s) if self.prior == "content" else (n_s, n_c)
        return own + hinge * F.relu(other - own)

    def export(self, tol: float) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        """The folded, pruned pair and the largest entry of the change pruning causes."""
        with torch.no_grad():
            m_c, m_s = self.m_c.detach(), self.m_s.detach()
            pair = concat(
                [
                    (1.0, *fold_ranks(self.u_c, self.v_c, m_c, tol)),
                    (1.0, *fold_ranks(self.u_s, self.v_s, m_s, tol)),
                ]
            )
            dropped = torch.zeros(self.u_c.shape[0], self.v_c.shape[1], device=m_c.device)
            for u, v, m in ((self.u_c, self.v_c, m_c), (self.u_s, self.v_s, m_s)):
                cut = m.abs() <= tol
                if cut.any():
                    dropped += (u[:, cut] * m[cut]) @ v[cut]
        return (pair[0].cpu(), pair[1].cpu()), float(dropped.abs().max())

    def merged_delta(self) -> torch.Tensor:
        """``U_c diag(m_c) V_c + U_s diag(m_s) V_s``, densely (the definition, nothing pruned)."""
        m_c, m_s = self.m_c.detach().cpu(), self.m_s.detach().cpu()
        return (
            self.u_c.cpu() @ torch.diag(m_c) @ self.v_c.cpu()
            + self.u_s.cpu() @ torch.diag(m_s) @ self.v_s.cpu()
        )


def predicted_x0(scheduler: Any, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0`` implied by a prediction: ``(z_t - sqrt(1 - a) eps) / sqrt(a)``, or ``sqrt(a) z_t - sqrt(1 - a) v``."""
    a = scheduler.alphas_cumprod.to(noisy.device)[t].view(-1, 1, 1, 1).to(noisy.dtype)
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * noisy - (1 - a).sqrt() * pred
    return (noisy - (1 - a).sqrt() * pred) / a.sqrt()


def refuse_flux(cfg: Any, pipe: Any) -> None:
    """DuoLoRA's layer priors are the UNet's resolution levels; FLUX's transformer has no such levels."""
    from b4m.diffusion.flux import is_flux
    from b4m.diffusion.pipeline import family_of_base

    if (pipe is not None and is_flux(pipe)) or (pipe is None and family_of_base(cfg.base) == "flux"):
        raise B4MError(
            f"duolora: --base {cfg.base} is a FLUX model; DuoLoRA's layer priors are UNet resolution levels "
            "(down/mid/up blocks), which FLUX's transformer lacks, so b4m does not run it there "
            "(use ziplora, or b4m with --blocks)"
        )


def fit_duolora(cfg: DuoLoRAOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    refuse_flux(cfg, pipe)
    if cfg.steps > 100:
        raise B4MError(f"--steps {cfg.steps}: DuoLoRA merges in at most 100 steps")
    check_same_base(cfg)
    check_folders(cfg, ["content", "style"])
    session = Session(cfg, "duolora", inputs=MERGE_INPUTS)
    if session.finished is not None:
        return reused(session.finished)
    session.start(pipe=pipe)
    content = read_source(cfg.content_lora, "--content-lora", session.unet)
    style = read_source(cfg.style_lora, "--style-lora", session.unet)
    names, content, style = align_sources(content, style)
    priors = layer_priors(session.unet, names)
    outside = [n for n in names if n not in priors]
    if outside:
        raise B4MError(
            f"duolora: layer {outside[0]} is outside the UNet's down/mid/up blocks; no prior applies"
        )
    deltas = {n: DuoDelta(content[n], style[n], priors[n], cfg.prior_init) for n in names}
    attach(session.unet, deltas)
    sets = session.image_sets("content", "style")
    combined = cfg.combined_prompt or f"{sets[0].prompts[0]}, {sets[1].prompts[0]}"
    cond_cs = encode_prompts(session.pipe, [combined], cfg.resolution)
    scheduler = training_scheduler(session.pipe)
    gen = session.generator(5)

    def cycle_targets(latents: torch.Tensor, cond: Any, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Row 0: content -> +style (style LoRA, combined prompt) -> x0 -> re-noise -> -style (content LoRA, content
        prompt). Row 1: the mirror from the style latent. No gradient (the teachers are frozen)."""
        rows = []
        with torch.no_grad():
            for i, (add, remove) in enumerate((("style", "content"), ("content", "style"))):
                z, c, e, ti = latents[i : i + 1], cond.index([i]), noise[i : i + 1], t[i : i + 1]
                noisy = scheduler.add_noise(z, e, ti)
                with delta_mode(add):
                    p = predict(session.unet, scheduler, z, cond_cs.index([0]), e, ti)
                x0 = predicted_x0(scheduler, noisy, p, ti)
                with delta_mode(remove):
                    rows.append(predict(session.unet, scheduler, x0, c, e, ti))
        return torch.cat(rows)

    def step(_: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = sample_batch(sets, [1, 1], gen, scheduler)
        latents, cond, noise, t = batch
        with torch.no_grad():
            with delta_mode("content"):
                teach_c = predict(session.unet, scheduler, latents[:1], cond.index([0]), noise[:1], t[:1])
            with delta_mode("style"):
                teach_s = predict(session.unet, scheduler, latents[1:], cond.index([1]), noise[1:], t[1:])
        cyc = cycle_targets(latents, cond, noise, t)
        pred = predict(session.unet, scheduler, latents, cond, noise, t).float()
        if batch.mask is None:
            merge = F.mse_loss(pred, torch.cat([teach_c, teach_s]).float())
            cycle = F.mse_loss(pred, cyc.float())
        else:  # loss masks: each sample's masked mean, then their mean
            merge = masked_mse(pred, torch.cat([teach_c, teach_s]), batch.mask).mean()
            cycle = masked_mse(pred, cyc, batch.mask).mean()
        rank = sum(d.rank_loss(cfg.lambda_hinge) for d in deltas.values())
        loss = merge + cfg.lambda_cycle * cycle + cfg.lambda_prior * rank
        return loss, {
            "merge": merge.detach(),
            "cycle": cycle.detach(),
            "rank": rank.detach(),
        }

    params = named_params(deltas, ("m_c", "m_s"))
    checkpoints = session.checkpoints(params, gen)
    train_steps(
        session,
        list(params.values()),
        step,
        cfg.steps,
        cfg.lr,
        "duolora (rank masks)",
        progress,
        checkpoints=checkpoints,
    )
    exported, worst = {}, 0.0
    for n, d in deltas.items():
        exported[n], err = d.export(cfg.prune_tol)
        worst = max(worst, err)
    kept = sum(u.shape[1] for u, _ in exported.values())
    total = sum(d.u_c.shape[1] + d.u_s.shape[1] for d in deltas.values())
    path = save_adapter(
        session,
        exported,
        "duolora",
        cfg,
        checkpoints=checkpoints,
        role="fused",
        sources={"content": str(cfg.content_lora), "style": str(cfg.style_lora)},
        trigger_words=_words(cfg),
        pruned_components=total - kept,
        pruning_max_abs_change=worst,
    )
    return Fitted(
        path,
        merged_delta=lambda: {n: d.merged_delta() for n, d in deltas.items()},
        info={
            "priors": priors,
            "masks": {n: (d.m_c.detach().cpu(), d.m_s.detach().cpu()) for n, d in deltas.items()},
            "pruned": total - kept,
            "pruning_max_abs_change": worst,
            "factors": factors_of(deltas),
        },
    )


register(Method.of(CATALOGUE["duolora"], fit_duolora))
