"""``lora``: a plain one-concept DreamBooth LoRA (Hu et al. 2021; Ruiz et al. 2023), the source adapters of the
merging methods (``direct-merge``, ``ziplora``, ``nplora``, ``klora``).

Per target layer ``dW = U V`` (rank ``r``, scale 1), ``U = 0`` at start; the denoising loss on the concept's images
with its prompt, ``L = E ||eps - eps_theta(z_t, t, c)||^2`` (B4M paper Eq. 1). DreamBooth's prior-preservation
term needs generated class images and is left out, as in the LoRA baselines of the B4M and ZipLoRA papers.
"""

from __future__ import annotations

from typing import Any

import torch

from b4m.adapters.deltas import LoRADelta, attach, factors_of, target_linears
from b4m.diffusion.pipeline import default_targets, per_sample_loss, training_scheduler
from b4m.errors import B4MError
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, LoRAOptions
from b4m.methods.common import Session, check_folders, named_params, reused, save_adapter, train_steps
from b4m.paths import portable
from b4m.train.loop import CachedSet, sample_batch

__all__ = ["LoRAOptions", "denoising_step", "fit_lora", "plain_deltas"]


def plain_deltas(
    unet: torch.nn.Module, targets: list[str] | str, rank: int, seed: int, blocks: list[str] | None = None
) -> dict[str, LoRADelta]:
    """A fresh :class:`LoRADelta` for every target layer (inside ``blocks``, if given), initialised from
    ``seed`` in sorted layer order."""
    gen = torch.Generator().manual_seed(seed)
    layers = target_linears(unet, targets, blocks or ())
    return {
        name: LoRADelta(layer.out_features, layer.in_features, rank, gen)
        for name, layer in sorted(layers.items())
    }


def denoising_step(
    session: Session, sets: list[CachedSet], gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One sample of each set, one noise and one timestep; ``L = mean_i L_i`` (Eq. 1; Eq. 2 for two sets)."""
    scheduler = training_scheduler(session.pipe)
    batch = sample_batch(sets, [1] * len(sets), gen, scheduler)
    losses = per_sample_loss(session.unet, scheduler, *batch, mask=batch.mask)
    return losses.mean(), {f"loss_{i}": x for i, x in enumerate(losses.detach())}


def fit_lora(cfg: LoRAOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    if getattr(cfg, f"{cfg.concept}_images") is None:
        raise B4MError(f"lora --concept {cfg.concept}: give --{cfg.concept}-images")
    check_folders(cfg, [cfg.concept])
    session = Session(cfg, "lora", inputs=[f"{cfg.concept}_images"])
    if session.finished is not None:
        return reused(session.finished)
    session.start(pipe=pipe)
    images = session.images(cfg.concept)
    deltas = plain_deltas(
        session.unet, default_targets(session.pipe, cfg.targets), cfg.rank, cfg.seed, cfg.blocks
    )
    attach(session.unet, deltas)
    gen = session.generator(1)
    params = named_params(deltas)
    checkpoints = session.checkpoints(params, gen)
    train_steps(
        session,
        list(params.values()),
        lambda step: denoising_step(session, [images], gen),
        cfg.steps,
        cfg.lr,
        f"lora ({cfg.concept})",
        progress,
        weight_decay=cfg.weight_decay,
        checkpoints=checkpoints,
    )
    factors = factors_of(deltas)
    path = save_adapter(
        session,
        factors,
        "lora",
        cfg,
        checkpoints=checkpoints,
        role=cfg.concept,
        prompt=images.prompts[0],
        images=portable(images.folder, session.out),  # no user folder names in a shared file
        trigger_words=session.trigger_words(images),
    )
    return Fitted(path, merged_delta=lambda: {n: u @ v for n, (u, v) in factors.items()})


register(Method.of(CATALOGUE["lora"], fit_lora))
