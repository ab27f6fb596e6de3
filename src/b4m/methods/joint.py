"""``joint``: JTtrain, one LoRA trained on the content images and the style images together (B4M paper Eq. 2):
``L = E ||eps - eps_theta(z_c,t, t, p_c)||^2 + E ||eps - eps_theta(z_s,t, t, p_s)||^2`` (here their mean), one
content and one style sample per step, sharing noise and timestep, in one batched forward.
"""

from __future__ import annotations

from typing import Any

from b4m.adapters.deltas import attach, factors_of
from b4m.diffusion.pipeline import default_targets
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, JointOptions
from b4m.methods.common import Session, check_folders, named_params, reused, save_adapter, train_steps
from b4m.methods.lora import denoising_step, plain_deltas
from b4m.paths import portable

__all__ = ["JointOptions", "fit_joint"]


def fit_joint(cfg: JointOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    check_folders(cfg, ["content", "style"])
    session = Session(cfg, "joint", inputs=["content_images", "style_images"])
    if session.finished is not None:
        return reused(session.finished)
    session.start(pipe=pipe)
    sets = session.image_sets("content", "style")
    deltas = plain_deltas(
        session.unet, default_targets(session.pipe, cfg.targets), cfg.rank, cfg.seed, cfg.blocks
    )
    attach(session.unet, deltas)
    gen = session.generator(2)
    params = named_params(deltas)
    checkpoints = session.checkpoints(params, gen)
    train_steps(
        session,
        list(params.values()),
        lambda step: denoising_step(session, sets, gen),
        cfg.steps,
        cfg.lr,
        "joint (content + style)",
        progress,
        weight_decay=cfg.weight_decay,
        checkpoints=checkpoints,
    )
    factors = factors_of(deltas)
    path = save_adapter(
        session,
        factors,
        "joint",
        cfg,
        checkpoints=checkpoints,
        role="fused",
        content={"prompt": sets[0].prompts[0], "images": portable(sets[0].folder, session.out)},
        style={"prompt": sets[1].prompts[0], "images": portable(sets[1].folder, session.out)},
        trigger_words=session.trigger_words(*sets),
    )
    return Fitted(path, merged_delta=lambda: {n: u @ v for n, (u, v) in factors.items()})


register(Method.of(CATALOGUE["joint"], fit_joint))
