"""Stage 2 of B4M: fuse ``LoRA_f = [A; B_content] x [C, D_style]`` and fine-tune it (Sec. 4.2 end, 4.3).

The fused adapter keeps ``B`` of the content adapter and ``D`` of the style adapter exactly. Fine-tuning then
updates both for a few dozen steps on content images (content prompt) and style images (style prompt), one of
each per step in one batched forward, with the Riemannian preconditioner of Eq. 13-14 (``riemannian.py``).
The official stage 2 zeroes its gradients before preconditioning (so never applies it) and re-initialises half
of the fused layers; b4m does neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from b4m import threads
from b4m.adapters.codec import LoraFile
from b4m.adapters.files import check_fusable, read_plp_file, save_plp
from b4m.adapters.inject import inject_plp
from b4m.adapters.plp import PLPSpec
from b4m.config import Stage2Config, resolve_preset, to_dict
from b4m.diffusion.pipeline import base_model_name, freeze, load_pipeline, per_sample_loss, training_scheduler
from b4m.errors import B4MError
from b4m.train.loop import TrainLog, cache_set, make_accelerator, sample_batch
from b4m.train.riemannian import make_stage2_optimizer

__all__ = ["fuse", "train_stage2"]


def fuse(content_path: str | Path, style_path: str | Path) -> tuple[LoraFile, PLPSpec]:
    """``LoRA_f``: for every layer, ``U = U_content = [A; B_content]`` and ``V = V_style = [C, D_style]``.

    Refuses adapters with different basis ids, ranks, rho, targets or base models (``check_fusable``), and
    a content/style pair given the wrong way round.
    """
    content, spec = read_plp_file(content_path)
    style, _ = read_plp_file(style_path)
    for lora, want, option in ((content, "content", "--content"), (style, "style", "--style")):
        role = lora.meta.get("role")
        if role is not None and role != want:
            raise B4MError(f"{option} {lora.path}: this is a {role} adapter; give the {want} adapter here")
    check_fusable(content, style)
    factors = {m: (content.factors[m][0], style.factors[m][1]) for m in content.factors}
    words = list(dict.fromkeys(content.meta.get("trigger_words", []) + style.meta.get("trigger_words", [])))
    meta = {
        k: content.meta[k]
        for k in ("rank", "rho", "orth", "basis_seed", "basis_id", "target_modules", "base_model")
        if k in content.meta
    }
    meta.update(
        method="b4m",
        role="fused",
        trigger_words=words,
        content={k: content.meta.get(k) for k in ("prompt", "images")} | {"file": str(content.path)},
        style={k: style.meta.get(k) for k in ("prompt", "images")} | {"file": str(style.path)},
    )
    return LoraFile(factors=factors, meta=meta), spec


def _recorded(value: Any, lora_meta: dict, key: str, option: str, required: bool = True) -> Any:
    """The option's value, else what the stage-1 adapter recorded (its images folder, its prompt)."""
    if value is not None:
        return value
    recorded = lora_meta.get(key)
    if required and not recorded:
        raise B4MError(f"{option}: not given, and the adapter file records no {key}; pass {option}")
    return recorded


def train_stage2(cfg: Stage2Config, pipe: Any = None, progress: bool = True, reinit_every: int = 0) -> Path:
    """Fuse ``cfg.content`` and ``cfg.style``, fine-tune ``cfg.stage2_steps`` steps, save; returns the file.

    ``reinit_every=k > 0`` reproduces the official code (``b4m run b4m-official``, k = 2: half the layers): ``B``
    and ``D`` of every k-th fused layer (sorted by name) are reset to their stage-1 start, zero, before fine-tuning.
    """
    if cfg.content is None or cfg.style is None:
        raise B4MError("give both --content and --style adapter files (from 'b4m train content/style')")
    cfg = resolve_preset(cfg)
    fused, spec = fuse(cfg.content, cfg.style)
    if fused.meta.get("base_model") not in (None, base_model_name(cfg.base)):
        raise B4MError(
            f"--base {cfg.base}: the adapters were trained on {fused.meta['base_model']}; use that base model"
        )
    out = Path(cfg.out or Path("runs") / "fused")
    if (out / "adapter.safetensors").is_file() and not cfg.overwrite:
        raise B4MError(f"--out {out}: holds a fused adapter; choose another --out, or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.jsonl").unlink(missing_ok=True)

    threads.apply()
    accelerator = make_accelerator(cfg.mixed_precision)
    pipe = pipe if pipe is not None else load_pipeline(cfg.base)
    freeze(pipe)
    pipe.to(accelerator.device)
    adapter = inject_plp(pipe.unet, spec, name="b4m", only=list(fused.factors))
    adapter.load_factors(fused.factors, source=f"{cfg.content} + {cfg.style}")
    if reinit_every > 0:
        with torch.no_grad():
            for i, module in enumerate(sorted(adapter.module_names)):
                if i % reinit_every == 0:
                    adapter.up(module).learnable.zero_()
                    adapter.down(module).learnable.zero_()

    if cfg.stage2_steps > 0:
        c_meta, s_meta = fused.meta["content"], fused.meta["style"]
        sets = [
            cache_set(
                pipe,
                _recorded(cfg.content_images, c_meta, "images", "--content-images"),
                _recorded(cfg.content_prompt, c_meta, "prompt", "--content-prompt", required=False),
                cfg.resolution,
                "--content-images",
            ),
            cache_set(
                pipe,
                _recorded(cfg.style_images, s_meta, "images", "--style-images"),
                _recorded(cfg.style_prompt, s_meta, "prompt", "--style-prompt", required=False),
                cfg.resolution,
                "--style-images",
            ),
        ]
        pairs = [
            (adapter.up(m).learnable, adapter.down(m).learnable, adapter.up(m).frozen, adapter.down(m).frozen)
            for m in adapter.module_names
        ]
        for p in adapter.parameters("BD"):
            p.requires_grad_(True)
        optimizer = make_stage2_optimizer(
            pairs,
            cfg.optimizer,
            lr=cfg.stage2_lr,
            operands=cfg.operands,
            delta=cfg.delta,
            delta_rel=cfg.delta_rel,
        )
        unet = accelerator.prepare(pipe.unet)
        scheduler = training_scheduler(pipe)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + accelerator.process_index)
        log = TrainLog(out / "train_log.jsonl", enabled=accelerator.is_main_process)
        bar = tqdm(
            range(cfg.stage2_steps),
            desc="stage 2 (fuse + RP)",
            disable=not progress or not accelerator.is_main_process,
        )
        unet.train()
        for step in bar:
            latents, cond, noise, timesteps = sample_batch(sets, [1, 1], gen, scheduler)
            with accelerator.autocast():
                losses = per_sample_loss(unet, scheduler, latents, cond, noise, timesteps)
            loss = losses.sum()  # L_content + L_style
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % 10 == 0 or step + 1 == cfg.stage2_steps:
                log.write(
                    step=step + 1,
                    loss=loss.item(),
                    loss_content=losses[0].item(),
                    loss_style=losses[1].item(),
                )
                bar.set_postfix(loss=f"{loss.item():.4f}")
        unet.eval()

    path = out / "adapter.safetensors"
    if accelerator.is_main_process:
        extra = {
            k: v
            for k, v in fused.meta.items()
            if k not in ("rank", "rho", "orth", "basis_seed", "basis_id", "target_modules")
        }
        if reinit_every > 0:
            extra["reinit_every"] = reinit_every
        save_plp(adapter, path, stage=2, config=to_dict(cfg), **extra)
    accelerator.wait_for_everyone()
    return path
