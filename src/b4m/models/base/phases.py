"""The two training phases of the base model: the autoencoder (phase 1), then the UNet and the text encoder
with caption dropout and an EMA of their weights (phase 2). Each resumes from its checkpoints in the run folder
(:mod:`b4m.train.checkpoint`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from b4m.models.base.build import noise_scheduler
from b4m.models.base.config import BaseModelConfig
from b4m.models.base.data import filler_hook, insert_fillers, to_model_range
from b4m.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = ["TrainLog", "lr_at", "train_diffusion", "train_vae"]


class TrainLog:
    """The run's ``train_log.jsonl``: ``log(phase=..., ...)`` appends one JSON record per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, **rec: Any) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


def lr_at(cfg: BaseModelConfig, step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``base_lr * cfg.lr_min_ratio`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _object_weight(x: torch.Tensor, extra: float, threshold: float = 0.15) -> torch.Tensor:
    """(B, 1, H, W) pixel weights ``1 + extra * m``, ``m`` = how far (saturating at ``threshold`` in [-1, 1]
    units) a pixel's colour is from the median colour of the image border."""
    if extra == 0:
        return torch.ones_like(x[:, :1])
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=-1)
    bg = border.median(dim=-1).values[:, :, None, None]
    m = ((x - bg).abs().amax(dim=1, keepdim=True) / threshold).clamp(max=1.0)
    return 1.0 + extra * m


def train_vae(
    vae: AutoencoderKL,
    images: np.ndarray,
    cfg: BaseModelConfig,
    work: Path,
    log: TrainLog,
    progress: bool = True,
) -> dict[str, float]:
    """Phase 1: autoencoder training (L1 + MSE reconstruction + tiny KL), resumable from ``work``."""
    ckpt_dir = work / "vae_ckpt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    state = dict(vae.state_dict())  # tensors share storage with the module: restored in place
    step = 0
    if (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        step = load_checkpoint(ckpt, state, opt, gen)["step"]
    vae.train()
    n = len(images)
    t0 = time.time()
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", disable=not progress, mininterval=2)
    while step < cfg.vae_steps:
        idx = torch.randint(0, n, (cfg.vae_batch_size,), generator=gen)
        x = to_model_range(images[idx.numpy()])
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, cfg.vae_steps, cfg.vae_lr, 100)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        err = rec - x
        w = _object_weight(x, cfg.vae_object_weight)
        rec_loss = ((err.abs() + err.pow(2)) * w).mean() / w.mean()
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = rec_loss + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            rec_mse = F.mse_loss(rec.detach(), x).item()
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", kl=f"{kl.item():.3f}")
            log(
                phase="vae",
                step=step,
                rec=rec_loss.item(),
                rec_mse=rec_mse,
                kl=kl.item(),
                t=time.time() - t0,
                threads=torch.get_num_threads(),
            )
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            save_checkpoint(ckpt_dir, step, state, opt, gen)
    bar.close()
    vae.eval()
    return {"steps": step}


def train_diffusion(
    components: dict[str, Any],
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    cfg: BaseModelConfig,
    work: Path,
    log: TrainLog,
    progress: bool = True,
) -> dict[str, Any]:
    """Phase 2: UNet + text encoder, ε (or v) loss with caption dropout, EMA; resumable from ``work``.

    ``latents``: (n, 2, C, h, w) posterior mean/std (unscaled); ``input_ids``: (n, L) caption token ids;
    ``input_ids`` of the empty prompt replace a caption with probability ``cfg.cfg_dropout``.
    On return the components hold the EMA weights.
    """
    unet, text_encoder, tokenizer, vae = (
        components["unet"],
        components["text_encoder"],
        components["tokenizer"],
        components["vae"],
    )
    noise_sched = noise_scheduler(cfg)
    scale = float(vae.config.scaling_factor)
    empty_ids = tokenizer(
        [""], padding="max_length", max_length=cfg.max_length, truncation=True, return_tensors="pt"
    ).input_ids[0]
    params = [p for p in unet.parameters()] + [p for p in text_encoder.parameters()]
    decay, no_decay = [], []
    for m in (unet, text_encoder):
        for name, p in m.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
    )
    # diffusers' EMA with its warm-up decay min(ema_decay, (1 + step) / (10 + step)) after optimizer step `step`
    ema = EMAModel(params, decay=cfg.ema_decay, update_after_step=-1, foreach=True)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    alphas_cumprod = noise_sched.alphas_cumprod
    step = 0
    ckpt_dir = work / "diffusion_ckpt"
    # Every tensor shares storage with the modules or the EMA list, so a checkpoint is restored in place.
    state = (
        {f"unet.{k}": v for k, v in unet.state_dict().items()}
        | {f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()}
        | {f"ema.{i}": e for i, e in enumerate(ema.shadow_params)}
    )
    if (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        step = load_checkpoint(ckpt, state, opt, gen)["step"]
        ema.optimization_step = step  # the decay schedule continues where the checkpoint left it
    unet.train()
    text_encoder.train()
    # BOS never occurs past position 0, so it marks the filler slots; they are filled in by the hook.
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    hook = filler_hook(text_encoder, bos, gen) if cfg.filler_prob > 0 else None
    n = len(latents)
    t0, t_last, step_last = time.time(), time.time(), step
    loss_acc, loss_n = 0.0, 0
    bar = tqdm(total=cfg.train_steps, initial=step, desc="unet+text", disable=not progress, mininterval=2)
    while step < cfg.train_steps:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        lat = latents[idx].float()
        x0 = (lat[:, 0] + lat[:, 1] * torch.randn(lat[:, 0].shape, generator=gen)) * scale
        ids = input_ids[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout
        ids[drop] = empty_ids
        if cfg.filler_prob > 0:
            ids[~drop] = insert_fillers(ids[~drop], cfg.filler_prob, cfg.filler_max, bos, eos, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if cfg.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, cfg.train_steps, cfg.lr, cfg.lr_warmup_steps)
        enc = text_encoder(ids)[0]
        pred = unet(xt, t, encoder_hidden_states=enc).sample
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            snr = compute_snr(
                noise_sched, t
            )  # Hang et al.'s min-SNR weights, as diffusers' scripts compute them
            w = snr.clamp(max=cfg.snr_gamma) / (snr if cfg.prediction_type == "epsilon" else snr + 1)
            per_sample = per_sample * w
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        ema.step(params)
        loss_acc += loss.item()
        loss_n += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.train_steps:
            now = time.time()
            sps = (step - step_last) * cfg.batch_size / max(1e-9, now - t_last)
            t_last, step_last = now, step
            bar.set_postfix(loss=f"{loss_acc / loss_n:.4f}", sps=f"{sps:.0f}")
            log(phase="diffusion", step=step, loss=loss_acc / loss_n, lr=opt.param_groups[0]["lr"],
                samples_per_s=sps, threads=torch.get_num_threads(), t=now - t0)  # fmt: skip
            loss_acc, loss_n = 0.0, 0
        if step % cfg.checkpoint_every == 0 or step == cfg.train_steps:
            save_checkpoint(ckpt_dir, step, state, opt, gen)
    bar.close()
    if hook is not None:
        hook.remove()
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return {"steps": step, "wall_s": time.time() - t0}
