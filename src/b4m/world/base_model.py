"""The built-in base text-to-image model of the world: b4m's small stand-in for SDXL.

It is an ordinary Stable Diffusion pipeline made of stock diffusers/transformers classes, only small:

- ``vae``: :class:`diffusers.AutoencoderKL`, 32×32×3 images ↔ 16×16×12 latents (f = 2), trained first as a
  plain autoencoder with a tiny KL term; ``scaling_factor`` makes the latents roughly unit-variance. Twelve
  channels (not SD's four) because the world's styles are pixel-scale textures: with four channels and the
  few thousand steps that fit the CPU budget the judges recognised only ~77 % of reconstructed styles
  (dots 48 %), a ceiling below the quality bar; 2×2×3 = 12 values per latent pixel leaves room for them.
- ``text_encoder``: :class:`transformers.CLIPTextModel` from a small :class:`CLIPTextConfig`, trained jointly
  with the UNet so that it learns the world's words.
- ``tokenizer``: a :class:`transformers.CLIPTokenizer` built offline by :mod:`b4m.world.tokenizer`: one token
  per caption word, and characters for anything else (trigger words such as ``snq``).
- ``unet``: :class:`diffusers.UNet2DConditionModel` with the SDXL block layout
  (``DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D``), so its attention layers expose
  ``to_q, to_k, to_v, to_out.0`` like SD/SDXL.
- ``scheduler``: DDPM noise schedule for training (ε-prediction, ``linear`` betas, whose terminal SNR is close
  to zero and so avoids the colour drift of a leaky schedule on small images); the folder ships an Euler
  sampler with ``trailing`` timestep spacing.

The folder written by :func:`train_base_model` loads with ``DiffusionPipeline.from_pretrained(path)`` with no
custom code, and ``load_lora_weights`` works on it as on any SD 1.x pipeline. Training follows DDPM (Ho et al.
2020, Eq. 14, the simple ε loss) in the latent space of LDM (Rombach et al. 2022), with classifier-free
guidance dropout of the caption (Ho & Salimans 2022, §3.2) and an exponential moving average of the weights.
Only held-in contents and styles are rendered for training; held-out ones never are (checked with asserts).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from b4m import threads
from b4m.adapters.codec import atomic_save_safetensors
from b4m.diffusion.builtin_base import (  # the built-in base as sampling sees it; re-exported here
    BASE_INFO,
    INFO_FILE,
    BaseModelInfo,
    default_base_path,  # noqa: F401 (re-exported: b4m.world.base_model.default_base_path)
    load_base_pipeline,
    read_base_info,
)
from b4m.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from b4m.world.base_config import BaseModelConfig
from b4m.world.tokenizer import build_tokenizer, save_tokenizer

FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------- world glue


def _world():
    from b4m.world import concepts, render

    return concepts, render


_WORD = re.compile(r"[a-z0-9]+")


def world_words(n_random: int = 3000, seed: int = 0) -> list[str]:
    """Every word the world's captions use (all contents and styles, held-out ones too, and attributes),
    plus the rare identifier words (:data:`~b4m.world.concepts.IDENTIFIERS`).

    Held-out words and identifiers get tokens as well (as a real encoder knows words it cannot draw); they
    are never trained on, so their embeddings stay at their random initialisation.
    """
    concepts, render = _world()
    words: set[str] = set()
    texts = [*concepts.CONTENTS, *concepts.STYLES, *concepts.IDENTIFIERS]
    for values in concepts.ATTRIBUTES.values():
        texts.extend(str(v) for v in values)
    texts.extend(str(k) for k in concepts.ATTRIBUTES)
    rng = np.random.default_rng(seed)
    for i in range(n_random):
        scene = render.random_scene(
            rng, contents=concepts.CONTENTS, styles=concepts.STYLES, attribute_prob=1.0 if i % 2 else 0.0
        )
        texts.append(render.caption(scene))
    for text in texts:
        words.update(_WORD.findall(str(text).lower().replace("_", " ")))
    return sorted(words)


# -------------------------------------------------------------------------------------------- components


def _noise_scheduler(cfg: BaseModelConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def _sampling_scheduler(cfg: BaseModelConfig) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        timestep_spacing="trailing",
        steps_offset=1,
    )


def build_components(cfg: BaseModelConfig, words: Sequence[str] | None = None) -> dict[str, Any]:
    """Untrained ``vae, text_encoder, tokenizer, unet, scheduler`` from ``cfg``, offline and seeded.

    ``words`` is the tokenizer vocabulary; ``None`` reads it from the world (:func:`world_words`).
    """
    if words is None:
        words = world_words()
    tokenizer = build_tokenizer(words, max_length=cfg.max_length)
    torch.manual_seed(cfg.seed)
    f_levels = len(cfg.vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * f_levels,
        up_block_types=("UpDecoderBlock2D",) * f_levels,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.vae_latent_channels,
        norm_num_groups=cfg.vae_norm_num_groups,
        sample_size=cfg.resolution,
        scaling_factor=1.0,
        force_upcast=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden_size,
            intermediate_size=cfg.text_intermediate_size,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            projection_dim=cfg.text_hidden_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.vae_latent_channels,
        out_channels=cfg.vae_latent_channels,
        down_block_types=cfg.unet_down_block_types,
        up_block_types=cfg.unet_up_block_types,
        block_out_channels=cfg.unet_block_out_channels,
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.unet_attention_heads,
        norm_num_groups=cfg.unet_norm_num_groups,
        use_linear_projection=True,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": _sampling_scheduler(cfg),
    }


def _assemble(components: dict[str, Any]) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_pipeline(cfg: BaseModelConfig, words: Sequence[str] | None = None) -> StableDiffusionPipeline:
    """An untrained :class:`StableDiffusionPipeline` built from ``cfg`` with no download (tests use it)."""
    return _assemble(build_components(cfg, words))


def save_pipeline(
    pipe: StableDiffusionPipeline,
    path: str | Path,
    info: BaseModelInfo = BASE_INFO,
    extra: dict[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) plus ``b4m_base.json``, written to a temporary folder then renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
    meta = {"format_version": FORMAT_VERSION, **dataclasses.asdict(info), **(extra or {})}
    (tmp / INFO_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------- data


def _scene_names(scene: Any) -> tuple[str, str]:
    return scene.content, scene.style


def render_pool(
    cfg: BaseModelConfig, n: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, list[str]]:
    """``n`` random held-in scenes rendered to uint8 (n, H, W, 3), with their captions; random *public*
    instances of each class (``cfg.exclude_unseen_pairs``: no pair of ``UNSEEN_PAIRS``).

    Never renders a held-out content or style, an unseen pair or a personal instance (asserted per scene).
    """
    from b4m.world.instances import INSTANCE_CONTENTS, INSTANCE_STYLES, personal_codes

    concepts, render = _world()
    held_out_c, held_out_s = set(concepts.HELD_OUT_CONTENTS), set(concepts.HELD_OUT_STYLES)
    excluded = concepts.UNSEEN_PAIRS if cfg.exclude_unseen_pairs else frozenset()
    rng = np.random.default_rng(seed)
    images = np.empty((n, cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(n), desc="render pool", disable=not progress, mininterval=2):
        focus_c, focus_s = rng.random() < cfg.instance_share, rng.random() < cfg.instance_share
        scene = render.random_scene(
            rng,
            contents=INSTANCE_CONTENTS if focus_c else concepts.HELD_IN_CONTENTS,
            styles=INSTANCE_STYLES if focus_s and not focus_c else concepts.HELD_IN_STYLES,
            attribute_prob=cfg.attribute_prob,
            exclude_pairs=excluded,
        )
        c, s = _scene_names(scene)
        assert c not in held_out_c and s not in held_out_s and (c, s) not in excluded, (
            f"held-out concept or unseen pair in base training data: {c}, {s}"
        )
        seed_i = int(rng.integers(2**31))
        c_code, s_code = scene.codes(seed_i)
        assert c_code not in personal_codes("content", c) and s_code not in personal_codes("style", s)
        images[i] = render.render(scene, seed=seed_i, resolution=cfg.resolution)
        captions.append(render.caption(scene))
    return images, captions


def _init_from(components: dict[str, Any], path: str | Path, lift_words: Sequence[str] | None = None) -> None:
    """Load an earlier base pipeline's weights into freshly built ``components`` (see ``init_from``);
    ``lift_words``: the caption words whose weak embeddings to scale up (see ``lift_weak_words``)."""
    old = load_base_pipeline(path)
    components["vae"].load_state_dict(old.vae.state_dict())
    components["vae"].register_to_config(scaling_factor=float(old.vae.config.scaling_factor))
    components["unet"].load_state_dict(old.unet.state_dict())
    new_te, old_te = components["text_encoder"], old.text_encoder
    state = {k: v for k, v in old_te.state_dict().items() if "token_embedding" not in k}
    missing, _ = new_te.load_state_dict(state, strict=False)
    assert all("token_embedding" in k for k in missing), missing
    old_vocab, new_vocab = old.tokenizer.get_vocab(), components["tokenizer"].get_vocab()
    with torch.no_grad():
        emb_new = new_te.get_input_embeddings().weight
        emb_old = old_te.get_input_embeddings().weight
        for token, i in new_vocab.items():
            if token in old_vocab:
                emb_new[i] = emb_old[old_vocab[token]]
        if lift_words:
            rows = torch.tensor([new_vocab[w + "</w>"] for w in sorted(set(lift_words))])
            norms = emb_new[rows].norm(dim=1)
            target = norms.median()
            weak = norms < 0.5 * target
            emb_new[rows[weak]] *= (target / norms[weak])[:, None]


def insert_fillers(
    ids: torch.Tensor, prob: float, max_fillers: int, placeholder: int, eos: int, gen: torch.Generator
) -> torch.Tensor:
    """Caption token ids (B, L) with 1 to ``max_fillers`` ``placeholder`` ids inserted at random positions
    between BOS and EOS in a share ``prob`` of the rows (later tokens shift right; rows without room for
    them are left as they are). See ``BaseModelConfig.filler_prob``."""
    out = ids.clone()
    length = ids.shape[1]
    chosen = torch.rand(len(ids), generator=gen) < prob
    counts = torch.randint(1, max_fillers + 1, (len(ids),), generator=gen)
    for r in torch.nonzero(chosen).flatten().tolist():
        row = ids[r].tolist()
        end = row.index(eos)  # the first EOS closes the caption (padding repeats it)
        k = int(counts[r])
        if end + k >= length:
            continue
        words = row[1:end]
        for _ in range(k):
            at = int(torch.randint(0, len(words) + 1, (1,), generator=gen))
            words.insert(at, placeholder)
        new = [row[0], *words, eos]
        out[r] = torch.tensor(new + [eos] * (length - len(new)))
    return out


def _filler_hook(text_encoder: CLIPTextModel, placeholder: int, gen: torch.Generator) -> Any:
    """Replace the embedding of every ``placeholder`` id past position 0 by a fresh draw from the encoder's
    initial token-embedding distribution; returns the hook handle (``.remove()`` it)."""
    std = 0.02 * float(text_encoder.config.initializer_factor)  # CLIPPreTrainedModel's init of token rows

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        mask = inputs[0] == placeholder
        mask[:, 0] = False
        if not mask.any():
            return out
        out = out.clone()
        out[mask] = torch.randn(int(mask.sum()), out.shape[-1], generator=gen).to(out.dtype) * std
        return out

    return text_encoder.get_input_embeddings().register_forward_hook(hook)


def _to_model_range(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(images_u8)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------------------------- training


class _Log:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, **rec: Any) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


def _lr_at(cfg: BaseModelConfig, step: int, total: int, base_lr: float, warmup: int) -> float:
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
    log: _Log,
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
        x = _to_model_range(images[idx.numpy()])
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step, cfg.vae_steps, cfg.vae_lr, 100)
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


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, images: np.ndarray, batch: int = 256, progress: bool = True
) -> torch.Tensor:
    """Posterior mean and std of every pool image, stacked as (n, 2, C, h, w) float16."""
    out = []
    for i in tqdm(range(0, len(images), batch), desc="encode pool", disable=not progress, mininterval=2):
        post = vae.encode(_to_model_range(images[i : i + batch])).latent_dist
        out.append(torch.stack([post.mean, post.std], dim=1).half())
    return torch.cat(out)


def _ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)


def train_diffusion(
    components: dict[str, Any],
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    cfg: BaseModelConfig,
    work: Path,
    log: _Log,
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
    noise_sched = _noise_scheduler(cfg)
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
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    alphas_cumprod = noise_sched.alphas_cumprod
    step = 0
    ckpt_dir = work / "diffusion_ckpt"
    # Every tensor shares storage with the modules or the EMA list, so a checkpoint is restored in place.
    state = (
        {f"unet.{k}": v for k, v in unet.state_dict().items()}
        | {f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()}
        | {f"ema.{i}": e for i, e in enumerate(ema)}
    )
    if (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        step = load_checkpoint(ckpt, state, opt, gen)["step"]
    unet.train()
    text_encoder.train()
    # BOS never occurs past position 0, so it marks the filler slots; they are filled in by the hook.
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    hook = _filler_hook(text_encoder, bos, gen) if cfg.filler_prob > 0 else None
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
            g["lr"] = _lr_at(cfg, step, cfg.train_steps, cfg.lr, cfg.lr_warmup_steps)
        enc = text_encoder(ids)[0]
        pred = unet(xt, t, encoder_hidden_states=enc).sample
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma > 0:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            w = snr.clamp(max=cfg.snr_gamma) / (snr if cfg.prediction_type == "epsilon" else snr + 1)
            per_sample = per_sample * w
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        _ema_update(ema, params, min(cfg.ema_decay, (1 + step) / (10 + step)))
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
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return {"steps": step, "wall_s": time.time() - t0}


_RUNTIME_FIELDS = ("num_threads", "log_every", "checkpoint_every")
"""Config fields that may change when a run resumes (they do not change the result: a resumed run uses the
thread count recorded in ``THREADS_FILE``)."""
THREADS_FILE = "threads.json"


def train_base_model(
    cfg: BaseModelConfig, out_dir: str | Path, progress: bool = True, resume: bool = True
) -> Path:
    """Train the VAE, then the UNet and text encoder; write ``out_dir/pipeline`` atomically.

    ``out_dir`` also receives ``train_log.jsonl``, the rendered pool cache and periodic checkpoints; a killed
    run started again with the same ``cfg`` and ``out_dir`` resumes where it stopped (``resume=False`` starts
    over). Returns the pipeline folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = out_dir / "config.json"
    if not resume:
        for name in ("train_log.jsonl", "pool.npz", "latents.safetensors", "config.json", THREADS_FILE):
            (out_dir / name).unlink(missing_ok=True)
        for name in ("vae_ckpt", "diffusion_ckpt"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    extended_from = None
    if cfg_file.exists():
        old = BaseModelConfig.from_dict(json.loads(cfg_file.read_text()))
        same = dataclasses.replace(old, **{k: getattr(cfg, k) for k in (*_RUNTIME_FIELDS, "train_steps")})
        if same != cfg or cfg.train_steps < old.train_steps:
            raise ValueError(
                f"train_base_model: {out_dir} holds a run with a different config; "
                "use another out_dir or resume=False to start over "
                "(only train_steps may grow, to continue a run)."
            )
        if cfg.train_steps > old.train_steps:
            extended_from = old.train_steps
    cfg_file.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    threads_file = out_dir / THREADS_FILE
    recorded = json.loads(threads_file.read_text())["threads"] if threads_file.exists() else None
    n_threads = threads.apply(cfg.num_threads, recorded)
    if recorded is None:
        threads_file.write_text(json.dumps({"threads": n_threads}) + "\n")
    log = _Log(out_dir / "train_log.jsonl")
    log(phase="threads", threads=n_threads, recorded=recorded is not None)
    t_start = time.time()
    if extended_from is not None:
        # The cosine schedule is re-laid over the new total: the result is that of the two commands in
        # order (a warm restart at the schedule's value for the old step count), not of one longer run.
        log(phase="extend", train_steps_from=extended_from, train_steps_to=cfg.train_steps)

    pool_path = out_dir / "pool.npz"
    if pool_path.exists():
        data = np.load(pool_path)
        images, captions = data["images"], list(data["captions"])
    else:
        images, captions = render_pool(cfg, cfg.pool_size, seed=cfg.seed, progress=progress)
        tmp = out_dir / "pool.tmp.npz"
        np.savez(tmp, images=images, captions=np.array(captions))
        os.replace(tmp, pool_path)
    log(phase="pool", n=len(images), t=time.time() - t_start)

    words = world_words()
    components = build_components(cfg, words)
    vae = components["vae"]
    if cfg.init_from:
        lift = sorted({w for c in captions for w in _WORD.findall(str(c))}) if cfg.lift_weak_words else None
        _init_from(components, cfg.init_from, lift)
    latents_path = out_dir / "latents.safetensors"
    if latents_path.exists():
        with safe_open(str(latents_path), framework="pt") as f:
            vae.load_state_dict({k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("vae.")})
            latents = f.get_tensor("latents")
            scaling = float(f.metadata()["scaling_factor"])
    else:
        if not cfg.init_from:
            train_vae(vae, images, cfg, out_dir, log, progress)
        vae.eval()
        latents = encode_pool(vae, images, progress=progress)
        scaling = (
            float(vae.config.scaling_factor)  # the UNet being fine-tuned learned latents of this scale
            if cfg.init_from
            else 1.0 / float(latents[:, 0].float().std())  # latents of unit std, as SD's 0.18215
        )
        tensors = {f"vae.{k}": v for k, v in vae.state_dict().items()} | {"latents": latents}
        atomic_save_safetensors(tensors, latents_path, {"scaling_factor": repr(scaling)})
    vae.register_to_config(scaling_factor=scaling)
    vae.requires_grad_(False)
    log(phase="latents", scaling_factor=scaling, t=time.time() - t_start)

    input_ids = components["tokenizer"](
        captions, padding="max_length", max_length=cfg.max_length, truncation=True, return_tensors="pt"
    ).input_ids
    too_long = [
        c
        for c, ids in zip(captions, input_ids, strict=True)
        if ids[-1] != components["tokenizer"].eos_token_id
    ]
    if too_long:
        raise ValueError(
            f"train_base_model: caption longer than max_length={cfg.max_length}: {too_long[0]!r}"
        )
    stats = train_diffusion(components, latents, input_ids, cfg, out_dir, log, progress)
    pipe = _assemble(components)
    wall = time.time() - t_start
    log(phase="done", wall_s=wall)
    extra = {"config": cfg.to_dict(), "train_wall_s_this_run": wall, "diffusion_steps": stats["steps"]}
    return save_pipeline(
        pipe, out_dir / "pipeline", BaseModelInfo(cfg.resolution, cfg.sample_steps, cfg.guidance_scale), extra
    )


# ------------------------------------------------------------------------------------------- evaluation


def _info_for(pipe: DiffusionPipeline) -> BaseModelInfo:
    path = getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None)
    if path and Path(path).is_dir():
        return read_base_info(path)
    return BASE_INFO


@torch.no_grad()
def generate(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for ``prompts``; each batch has its own seeded generator.

    Unset ``num_inference_steps`` / ``guidance_scale`` come from the pipeline folder's ``b4m_base.json``
    (or :data:`BASE_INFO` for a pipeline not loaded from a folder)."""
    info = _info_for(pipe)
    steps = num_inference_steps or info.num_inference_steps
    gs = info.guidance_scale if guidance_scale is None else guidance_scale
    pipe.set_progress_bar_config(disable=True)
    out = []
    for b, i in enumerate(tqdm(range(0, len(prompts), batch_size), desc="sample", disable=not progress)):
        g = torch.Generator().manual_seed(seed * 100003 + b)
        res = pipe(
            list(prompts[i : i + batch_size]),
            num_inference_steps=steps,
            guidance_scale=gs,
            generator=g,
            output_type="pt",
        )
        out.append(res.images.float().clamp(0, 1))
    return torch.cat(out)


def _eval_scenes(n_per_concept: int, seed: int) -> dict[str, list[Any]]:
    """Balanced evaluation scenes: held-in (each content and each style about ``n_per_concept`` times, random
    attributes), held-out contents with held-in styles, and held-in contents with held-out styles."""
    concepts, render = _world()
    rng = np.random.default_rng(seed)
    c_in, s_in = concepts.HELD_IN_CONTENTS, concepts.HELD_IN_STYLES

    def scenes(contents: Sequence[str], styles: Sequence[str], attribute_prob: float) -> list[Any]:
        n = n_per_concept * max(len(contents), len(styles))
        cs = [contents[i % len(contents)] for i in range(n)]
        ss = [styles[i % len(styles)] for i in rng.permutation(n)]
        out = []
        for c, s in zip(cs, ss, strict=True):
            while (c, s) in concepts.UNSEEN_PAIRS:  # asked for on their own, below
                s = styles[int(rng.integers(len(styles)))]
            base = render.random_scene(rng, contents=(c,), styles=(s,), attribute_prob=attribute_prob)
            out.append(base)
        return out

    per_pair = max(2, n_per_concept // 4)
    unseen = [
        render.random_scene(rng, contents=(c,), styles=(s,), attribute_prob=0.0)
        for c, s in sorted(concepts.UNSEEN_PAIRS)
        for _ in range(per_pair)
    ]
    return {
        "held_in": scenes(c_in, s_in, 0.5),
        "unseen_pairs": unseen,
        "held_out_content": scenes(concepts.HELD_OUT_CONTENTS, s_in, 0.0),
        "held_out_style": scenes(c_in, concepts.HELD_OUT_STYLES, 0.0),
    }


@torch.no_grad()
def evaluate_base_model(
    pipe: DiffusionPipeline,
    judges: Any,
    n_per_concept: int = 16,
    seed: int = 1234,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample fresh images from world prompts and score them with the world judges.

    ``judges.classify(images (B, 3, H, W) in [0, 1])`` must return logits over ``CONTENTS`` (``"content"``),
    ``STYLES`` (``"style"``) and each attribute's values. Reports (fractions in [0, 1]):

    - ``content_acc`` / ``style_acc``: held-in prompts (held-in content × held-in style, random attributes);
    - ``attribute_acc[name]``: over held-in prompts that state a non-default value of ``name``, and
      ``attribute_acc_all[name]`` over all held-in prompts (unstated means the default value);
      ``attribute_acc_mean`` averages the former;
    - ``held_out_content_acc`` and ``held_out_style_acc``: prompts naming a held-out concept (expected near
      ``chance_content`` = 1/len(CONTENTS) and ``chance_style`` = 1/len(STYLES)), with what the judges saw
      instead in ``held_out_content_pred`` / ``held_out_style_pred`` (most frequent predictions);
    - ``unseen_content_acc`` / ``unseen_style_acc``: prompts of ``UNSEEN_PAIRS``, pairs base training never
      rendered (does the model compose?);
    - ``personal_content_rate`` / ``personal_style_rate``: on held-in prompts, how often an image is judged to
      be one given personal instance of its class (averaged over the personal instances; prompts of classes
      with instances only), next to
      ``chance_content_instance`` = 1/N_CONTENT_CODES and ``chance_style_instance`` (needs judges with instance
      trait heads; personal instances must not come from a prompt alone).
    """
    from b4m.world.instances import (
        CONTENT_TRAITS,
        N_CONTENT_CODES,
        N_PERSONAL,
        N_STYLE_CODES,
        STYLE_TRAITS,
        encode_code,
        has_instances,
        personal_codes,
    )

    concepts, render = _world()
    sets = _eval_scenes(n_per_concept, seed)
    result: dict[str, Any] = {
        "n_per_concept": n_per_concept,
        "seed": seed,
        "num_inference_steps": num_inference_steps or _info_for(pipe).num_inference_steps,
        "guidance_scale": _info_for(pipe).guidance_scale if guidance_scale is None else guidance_scale,
        "chance_content": 1.0 / len(concepts.CONTENTS),
        "chance_style": 1.0 / len(concepts.STYLES),
    }
    preds: dict[str, dict[str, np.ndarray]] = {}
    for k, (name, scenes) in enumerate(sets.items()):
        prompts = [render.caption(s) for s in scenes]
        images = generate(
            pipe, prompts, seed + 7919 * k, num_inference_steps, guidance_scale, batch_size, progress
        )
        out: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), 256):
            logits = judges.classify(images[i : i + 256])
            for key, v in logits.items():
                out.setdefault(key, []).append(torch.as_tensor(v).argmax(-1).cpu().numpy())
        preds[name] = {key: np.concatenate(v) for key, v in out.items()}
        result[f"n_{name}"] = len(scenes)

    def acc(
        name: str, key: str, values: Sequence[str], truth: list[str], mask: np.ndarray | None = None
    ) -> float:
        p = preds[name][key]
        t = np.array([values.index(v) for v in truth])
        ok = p == t
        return float(ok[mask].mean()) if mask is not None else float(ok.mean())

    held_in = sets["held_in"]
    result["content_acc"] = acc("held_in", "content", concepts.CONTENTS, [s.content for s in held_in])
    result["style_acc"] = acc("held_in", "style", concepts.STYLES, [s.style for s in held_in])
    result["per_content_acc"] = {
        c: acc("held_in", "content", concepts.CONTENTS, [s.content for s in held_in],
               np.array([s.content == c for s in held_in]))
        for c in concepts.HELD_IN_CONTENTS
    }  # fmt: skip
    result["per_style_acc"] = {
        st: acc("held_in", "style", concepts.STYLES, [s.style for s in held_in],
                np.array([s.style == st for s in held_in]))
        for st in concepts.HELD_IN_STYLES
    }  # fmt: skip
    result["attribute_acc"], result["attribute_acc_all"] = {}, {}
    for attr, values in concepts.ATTRIBUTES.items():
        truth = [getattr(s, attr) for s in held_in]
        stated = np.array([v != concepts.DEFAULT_ATTRIBUTES[attr] for v in truth])
        result["attribute_acc"][attr] = (
            acc("held_in", attr, values, truth, stated) if stated.any() else float("nan")
        )
        result["attribute_acc_all"][attr] = acc("held_in", attr, values, truth)
    result["attribute_acc_mean"] = float(np.nanmean(list(result["attribute_acc"].values())))
    ho_c, ho_s = sets["held_out_content"], sets["held_out_style"]
    result["held_out_content_acc"] = acc(
        "held_out_content", "content", concepts.CONTENTS, [s.content for s in ho_c]
    )
    result["held_out_style_acc"] = acc("held_out_style", "style", concepts.STYLES, [s.style for s in ho_s])
    result["held_out_content_pred"] = _top_names(preds["held_out_content"]["content"], concepts.CONTENTS)
    result["held_out_style_pred"] = _top_names(preds["held_out_style"]["style"], concepts.STYLES)
    unseen = sets["unseen_pairs"]
    result["unseen_content_acc"] = acc(
        "unseen_pairs", "content", concepts.CONTENTS, [s.content for s in unseen]
    )
    result["unseen_style_acc"] = acc("unseen_pairs", "style", concepts.STYLES, [s.style for s in unseen])
    p = preds["held_in"]
    for kind, traits, n_codes in (("content", CONTENT_TRAITS, N_CONTENT_CODES),
                                  ("style", STYLE_TRAITS, N_STYLE_CODES)):  # fmt: skip
        if not all(f"{kind}_{t}" in p for t in traits):
            continue
        codes = encode_code(kind, [p[f"{kind}_{t}"] for t in traits])
        # over the prompts whose class has instances (the others have one look)
        hits = [
            int(code) in personal_codes(kind, getattr(s, kind))
            for s, code in zip(held_in, codes, strict=True)
            if has_instances(kind, getattr(s, kind))
        ]
        result[f"personal_{kind}_rate"] = float(np.mean(hits)) / N_PERSONAL if hits else float("nan")
        result[f"chance_{kind}_instance"] = 1.0 / n_codes
    return result


def _top_names(pred: np.ndarray, names: Sequence[str], k: int = 3) -> dict[str, float]:
    counts = np.bincount(pred, minlength=len(names)) / max(1, len(pred))
    return {names[i]: float(counts[i]) for i in np.argsort(-counts)[:k]}
