"""Stage 1 of B4M: a content PLP or a style PLP with multi-correspondence projection learning (Eq. 12).

Content stage: the target images (content prompt) train ``B`` only; ``n`` auxiliary styles (own prompts) train
``D`` only; ``L = L_target + (1/n) sum_i L_aux_i``. Style stage: the mirror (target trains ``D``, auxiliary
contents train ``B``). Target and auxiliary samples share one noise and one timestep and go through the UNet as
**one batched forward**; routing is strict (``mcp_routing``: per-sample detach inside every PLP factor), where
the official code runs four passes and leaks gradients between the groups (compensated by a 10:1 lr ratio).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from b4m import threads
from b4m.adapters.files import save_plp
from b4m.adapters.inject import inject_plp
from b4m.adapters.plp import PLPSpec, mcp_routing
from b4m.config import Stage1Config, resolve_preset, to_dict
from b4m.data.folders import read_image_folder
from b4m.diffusion.pipeline import base_model_name, freeze, load_pipeline, per_sample_loss, training_scheduler
from b4m.errors import B4MError
from b4m.train.checkpoint import latest_checkpoint, load_checkpoint, recorded_threads, save_checkpoint
from b4m.train.loop import TrainLog, cache_set, make_accelerator, maybe, sample_batch, trigger_words_of

__all__ = ["ROLES", "train_stage1"]

# role -> (the part the target images train, the CLI option naming the auxiliary folders)
ROLES: dict[str, tuple[str, str]] = {"content": ("B", "--aux-styles"), "style": ("D", "--aux-contents")}


def _check(cfg: Stage1Config, role: str) -> None:
    if role not in ROLES:
        raise B4MError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    aux_opt = ROLES[role][1]
    problems = []
    if cfg.images is None:
        problems.append("--images: give the folder of target images")
    if cfg.mcp and not cfg.aux:
        problems.append(f"{aux_opt}: give at least one auxiliary folder, or pass --no-mcp")
    if cfg.aux_prompts and len(cfg.aux_prompts) != len(cfg.aux):
        problems.append(
            f"--aux-prompts: give one prompt per auxiliary folder ({len(cfg.aux)}), got {len(cfg.aux_prompts)}"
        )
    if problems:
        raise B4MError("; ".join(problems))
    # Check every folder before the (slow) model load, so a typo fails in a second.
    read_image_folder(cfg.images, "--images")
    for folder in cfg.aux if cfg.mcp else []:
        read_image_folder(folder, aux_opt)


def _claim_output(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse to clobber earlier work; ``True`` if ``out`` already holds the finished result of a resumed run."""
    adapter, ckpts = out / "adapter.safetensors", latest_checkpoint(out / "checkpoints")
    if resume:
        return ckpts is None and adapter.is_file()
    if overwrite:
        return False
    if adapter.is_file():
        raise B4MError(f"--out {out}: holds a finished adapter; choose another --out, or pass --overwrite")
    if ckpts is not None:
        raise B4MError(f"--out {out}: holds checkpoints of an unfinished run; pass --resume or --overwrite")
    return False


def train_stage1(
    cfg: Stage1Config,
    role: str,
    pipe: Any = None,
    progress: bool = True,
    routing: str = "strict",
    aux_lr_scale: float = 1.0,
) -> Path:
    """Train a content (``role="content"``) or style PLP adapter; returns the adapter file's path.

    ``routing="leaky"`` and ``aux_lr_scale`` reproduce the official code (``b4m run b4m-official``): both losses
    reach both parts, and the auxiliary part learns at ``aux_lr_scale`` times the rate (official: 0.1).
    """
    if routing not in ("strict", "leaky"):
        raise B4MError(f"routing must be 'strict' (Eq. 12) or 'leaky' (official code), got {routing!r}")
    _check(cfg, role)
    cfg = resolve_preset(cfg)
    out = Path(cfg.out or Path("runs") / role)
    if _claim_output(out, cfg.resume, cfg.overwrite):
        return out / "adapter.safetensors"
    target_part, aux_opt = ROLES[role]
    other_part = "D" if target_part == "B" else "B"

    n_threads = threads.apply(recorded=recorded_threads(out / "checkpoints") if cfg.resume else None)
    accelerator = make_accelerator(cfg.mixed_precision)
    pipe = pipe if pipe is not None else load_pipeline(cfg.base)
    freeze(pipe)
    pipe.to(accelerator.device)
    target = cache_set(pipe, cfg.images, cfg.prompt, cfg.resolution, "--images")
    aux = []
    if cfg.mcp:
        for i, folder in enumerate(cfg.aux):
            prompt = cfg.aux_prompts[i] if cfg.aux_prompts else None
            aux.append(cache_set(pipe, folder, prompt, cfg.resolution, aux_opt))

    spec = PLPSpec(rank=cfg.rank, rho=cfg.rho, orth=cfg.orth, basis_seed=cfg.basis_seed)
    adapter = inject_plp(pipe.unet, spec, cfg.targets, name="b4m")
    train_parts = target_part + (other_part if cfg.mcp else "")
    trained = adapter.parameters(train_parts)
    for p in adapter.parameters("BD"):  # untrained parts must not reach DDP's reducer
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    params: Any = trained
    if (
        aux_lr_scale != 1.0 and cfg.mcp
    ):  # official code: one rate for the target part, a lower one for the other
        params = [
            {"params": adapter.parameters(target_part), "lr": cfg.lr},
            {"params": adapter.parameters(other_part), "lr": cfg.lr * aux_lr_scale},
        ]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    scheduler = training_scheduler(pipe)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index)
    named = {
        f"{layer}.{part}": p
        for layer in adapter.module_names
        for part, p in (("B", adapter.up(layer).learnable), ("D", adapter.down(layer).learnable))
    }

    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    start = 0
    if cfg.resume and (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        start = load_checkpoint(ckpt, named, optimizer, gen)["step"]
    elif not cfg.resume:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # _claim_output allowed it: --overwrite, or nothing there
        (out / "train_log.jsonl").unlink(missing_ok=True)
    log = TrainLog(out / "train_log.jsonl", enabled=accelerator.is_main_process)

    sets = [target, *aux]
    counts = [1] + [1] * len(aux)  # batch 1 per set, as the paper (batch 1) and official scripts
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"stage 1 ({role})",
        disable=not progress or not accelerator.is_main_process,
        initial=start,
        total=cfg.steps,
    )
    unet.train()
    for step in bar:
        latents, cond, noise, timesteps = sample_batch(sets, counts, gen, scheduler)
        with accelerator.autocast(), maybe(cfg.mcp and routing == "strict", mcp_routing(1, target_part)):
            losses = per_sample_loss(unet, scheduler, latents, cond, noise, timesteps)
        loss_target = losses[:1].mean()
        loss = (loss_target + losses[1:].mean()) if cfg.mcp else loss_target  # Eq. 12
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 10 == 0 or step + 1 == cfg.steps:  # .item() syncs the device: not every step
            record = {"step": step + 1, "loss": loss.item(), "loss_target": loss_target.item()}
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            log.write(**record)
        last = step + 1 == cfg.steps
        if (
            cfg.checkpoint_every
            and (step + 1) % cfg.checkpoint_every == 0
            and not last
            and accelerator.is_main_process
        ):
            save_checkpoint(ckpt_dir, step + 1, named, optimizer, gen, extra={"threads": n_threads})
    unet.eval()

    path = out / "adapter.safetensors"
    if accelerator.is_main_process:
        save_plp(
            adapter,
            path,
            method="b4m",
            stage=1,
            role=role,
            prompt=cfg.prompt,
            images=str(Path(cfg.images).resolve()),
            aux=[str(Path(a).resolve()) for a in cfg.aux],
            trigger_words=cfg.trigger_words
            or trigger_words_of(cfg.prompt or target.prompts[0], pipe.tokenizer),
            base_model=base_model_name(cfg.base),
            config=to_dict(cfg),
            **(
                {"routing": routing, "aux_lr_scale": aux_lr_scale}
                if (routing, aux_lr_scale) != ("strict", 1.0)
                else {}
            ),
        )
    accelerator.wait_for_everyone()
    return path
