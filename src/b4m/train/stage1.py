"""Stage 1 of B4M: a content PLP or a style PLP with multi-correspondence projection learning (Eq. 12).

Content stage: the target images (content prompt) train ``B`` only; ``n`` auxiliary styles (own prompts) train
``D`` only; ``L = L_target + (1/n) sum_i L_aux_i``. Style stage: the mirror (target trains ``D``, auxiliary
contents train ``B``). Target and auxiliary samples share one noise and one timestep and go through the UNet as
**one batched forward**; routing is strict (``mcp_routing``: per-sample detach inside every PLP factor), where
the official code runs four passes and leaks gradients between the groups (compensated by a 10:1 lr ratio).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from b4m.adapters.blocks import parse_blocks
from b4m.adapters.files import save_plp
from b4m.adapters.inject import inject_plp
from b4m.adapters.plp import PLPSpec, mcp_routing
from b4m.checks import (
    check_base,
    check_out_folder,
    check_rank,
    check_resolution,
    finite,
    integer_at_least,
    raise_problems,
)
from b4m.config import to_dict
from b4m.data.folders import ImageSet, check_images, read_image_folder
from b4m.data.repeats import check_repeats
from b4m.diffusion.pipeline import (
    base_family,
    base_model_name,
    default_targets,
    denoiser,
    family_of_base,
    per_sample_loss,
    training_scheduler,
)
from b4m.errors import B4MError
from b4m.options import ROUTINGS, Stage1Config, resolve_preset, split_deviations
from b4m.paths import portable, portable_config
from b4m.train.datasets import cache_all
from b4m.train.identity import data_fingerprint, run_settings
from b4m.train.loop import (
    CachedSet,
    StepFn,
    maybe,
    run_steps,
    sample_batch,
    trigger_words_of,
)
from b4m.train.previews import stage1_plan
from b4m.train.recipe import Objective, check_family, check_recipe, loop_options, make_optimizer, save_dtype
from b4m.train.session import Session
from b4m.train.watch import check_options

__all__ = ["ROLES", "train_stage1"]

# role -> (the part the target images train, the CLI option naming the auxiliary folders)
ROLES: dict[str, tuple[str, str]] = {"content": ("B", "--aux-styles"), "style": ("D", "--aux-contents")}


def _check(cfg: Stage1Config, role: str, out: Path, pipe: Any = None) -> list[tuple[ImageSet, list[str]]]:
    """Every option, the output folder and every image and caption, before the (slow) model load; returns the
    training sets' files and prompts (target first)."""
    if role not in ROLES:
        raise B4MError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    aux_opt = ROLES[role][1]
    problems: list[str] = []
    if cfg.images is None:
        problems.append("--images: give the folder of target images")
    if cfg.mcp and not cfg.aux:
        problems.append(f"{aux_opt}: give at least one auxiliary folder, or pass --no-mcp")
    if cfg.aux_prompts and len(cfg.aux_prompts) != len(cfg.aux):
        problems.append(
            f"--aux-prompts: give one prompt per auxiliary folder ({len(cfg.aux)}), got {len(cfg.aux_prompts)}"
        )
    check_rank(cfg.rank, cfg.rho, problems)
    if cfg.routing not in ROUTINGS:
        problems.append(f"--routing {cfg.routing}: give strict (Eq. 12) or leaky (the official code)")
    finite(cfg.aux_lr_scale, "--aux-lr-scale", problems)
    check_repeats(cfg.repeats, problems)
    integer_at_least(cfg.steps, "--steps", 1, problems, " (a run of 0 steps would save an untrained adapter)")
    finite(cfg.lr, "--lr", problems, positive=True)
    finite(cfg.weight_decay, "--weight-decay", problems)
    integer_at_least(cfg.checkpoint_every, "--checkpoint-every", 0, problems, " (0: no checkpoints)")
    check_recipe(cfg, problems)
    check_options(cfg, problems)
    if pipe is None:
        check_base(cfg.base, problems)
    if not problems or not problems[-1].startswith("--base"):  # a missing base has no size to check against
        check_resolution(cfg.resolution, cfg.base, "--resolution", problems, pipe=pipe)
    if not cfg.targets:
        problems.append("--targets: give at least one module-name suffix, e.g. to_q to_k to_v to_out.0")
    try:
        parse_blocks(cfg.blocks)
    except B4MError as err:
        problems.append(str(err))
    raise_problems(problems)
    check_family(cfg, base_family(pipe, cfg.base) if pipe is not None else family_of_base(cfg.base))
    check_out_folder(out)
    target = read_image_folder(cfg.images, "--images")
    sets = [(target, target.prompts(cfg.prompt, "--images"))]
    for i, folder in enumerate(cfg.aux if cfg.mcp else []):
        images = read_image_folder(folder, aux_opt)
        sets.append((images, images.prompts(cfg.aux_prompts[i] if cfg.aux_prompts else None, aux_opt)))
    for images, _ in sets:
        check_images(images, masks=cfg.masks)
    return sets


def _step_fn(
    unet: torch.nn.Module,
    scheduler: Any,
    sets: list[CachedSet],
    gen: torch.Generator,
    mcp: bool,
    strict: bool,
    target_part: str,
    objective: Objective | None = None,
) -> StepFn:
    """Eq. 12 on one sample of every set (target first), batched into one forward: the paper (batch 1) and the
    official scripts."""

    def step(_: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = sample_batch(sets, [1] * len(sets), gen, scheduler, objective)
        with maybe(strict, mcp_routing(1, target_part)):
            losses = per_sample_loss(unet, scheduler, *batch, mask=batch.mask, objective=objective)
        loss_target = losses[:1].mean()
        loss = (loss_target + losses[1:].mean()) if mcp else loss_target
        return loss, {"loss_target": loss_target.detach()}

    return step


def train_stage1(
    cfg: Stage1Config,
    role: str,
    pipe: Any = None,
    progress: bool = True,
    policy: str | None = None,
) -> Path:
    """Train a content (``role="content"``) or style PLP adapter; returns the adapter file's path.

    ``cfg.routing="leaky"`` and ``cfg.aux_lr_scale`` reproduce the official code (``b4m run b4m-official``): both
    losses reach both parts, and the auxiliary part learns at ``aux_lr_scale`` times the rate (official: 0.1).
    ``policy``: what to do with an earlier run in ``cfg.out`` (:class:`~b4m.train.session.Session`; default
    from ``cfg.overwrite``).
    """
    cfg = resolve_preset(cfg)
    out = Path(cfg.out or Path("runs") / role)
    files = _check(cfg, role, out, pipe)
    session = Session(
        out,
        run_settings(to_dict(cfg) | {"role": role}),
        data_fingerprint((s.paths, prompts) for s, prompts in files),
        policy=policy or ("overwrite" if cfg.overwrite else "continue"),
        checkpoint_every=cfg.checkpoint_every,
        options=cfg,
    )
    if session.finished is not None:
        return session.finished
    target_part, aux_opt = ROLES[role]
    other_part = "D" if target_part == "B" else "B"

    pipe = session.start(cfg.base, pipe, cfg.mixed_precision)
    accelerator = session.accelerator
    entries = [(cfg.images, cfg.prompt, "--images")]
    if cfg.mcp:
        for i, folder in enumerate(cfg.aux):
            entries.append((folder, cfg.aux_prompts[i] if cfg.aux_prompts else None, aux_opt))
    target, *aux = cache_all(pipe, entries, cfg.resolution, cfg)  # one bucket a step: the target's

    spec = PLPSpec(rank=cfg.rank, rho=cfg.rho, orth=cfg.orth, basis_seed=cfg.basis_seed)
    model = denoiser(pipe)
    adapter = inject_plp(model, spec, default_targets(pipe, cfg.targets), name="b4m", blocks=cfg.blocks)
    train_parts = target_part + (other_part if cfg.mcp else "")
    trained = adapter.parameters(train_parts)
    for p in adapter.parameters("BD"):  # untrained parts must not reach DDP's reducer
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    params: Any = trained
    if cfg.aux_lr_scale != 1.0 and cfg.mcp:  # official code: a lower rate for the auxiliary part
        params = [
            {"params": adapter.parameters(target_part), "lr": cfg.lr},
            {"params": adapter.parameters(other_part), "lr": cfg.lr * cfg.aux_lr_scale},
        ]
    optimizer = make_optimizer(cfg.train_optimizer, params, cfg.lr, cfg.weight_decay)
    unet, optimizer = accelerator.prepare(model, optimizer)
    scheduler = training_scheduler(pipe)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index)
    checkpoints = session.checkpoints(adapter.named_parts(), gen)

    strict = cfg.mcp and cfg.routing == "strict"
    step_fn = _step_fn(unet, scheduler, [target, *aux], gen, cfg.mcp, strict, target_part, Objective.of(cfg))
    run_steps(
        step_fn,
        steps=cfg.steps,
        accelerator=accelerator,
        model=unet,
        optimizer=optimizer,
        log=session.log,
        name=f"stage 1 ({role})",
        progress=progress,
        checkpoints=checkpoints,
        **loop_options(cfg, optimizer, cfg.steps),
        watch=session.watch(
            f"stage 1 ({role})",
            stage1_plan(role, cfg.prompt or target.prompts[0], [a.prompts[0] for a in aux]),
            cfg.resolution,
        ),
    )

    settings, deviations = split_deviations(cfg)  # a run as the paper describes it records no deviation

    def write(path: Path, hint: str) -> Path:
        return save_plp(
            adapter,
            path,
            hint=hint,
            dtype=save_dtype(cfg),
            method="b4m",
            stage=1,
            role=role,
            prompt=cfg.prompt,
            images=portable(cfg.images, out),
            aux=[portable(a, out) for a in cfg.aux],
            trigger_words=cfg.trigger_words
            or trigger_words_of(cfg.prompt or target.prompts[0], pipe.tokenizer),
            base_model=base_model_name(cfg.base),
            base_family=base_family(pipe, cfg.base),
            config=portable_config(settings, out),
            **deviations,
        )

    return session.finish(write, checkpoints)
