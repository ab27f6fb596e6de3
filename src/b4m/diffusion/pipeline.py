"""The diffusers side of training: load a base pipeline, encode prompts and images, noise, predict.

This is the only layer (with ``sampling.py`` and ``tiny.py``) that imports diffusers. It handles SD 1.x/2.x
(``StableDiffusionPipeline``) and SDXL (``StableDiffusionXLPipeline``, with its pooled text embedding and
size/crop time ids), and the built-in base model, which is an ordinary ``StableDiffusionPipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionXLPipeline

from b4m.diffusion.builtin_base import load_base_pipeline
from b4m.errors import B4MError

__all__ = [
    "BUILTIN",
    "Conditioning",
    "base_model_name",
    "encode_images",
    "encode_prompts",
    "freeze",
    "from_pretrained",
    "load_pipeline",
    "per_sample_loss",
    "training_scheduler",
]

BUILTIN = "builtin"  # the name of the built-in base model in configs and adapter metadata

# diffusers 0.42 renamed from_pretrained's ``torch_dtype`` to ``dtype`` and warns on the old name; older
# releases read only ``torch_dtype``.
_DTYPE_KWARG = (
    "dtype" if tuple(int(p) for p in diffusers.__version__.split(".")[:2]) >= (0, 42) else "torch_dtype"
)


def from_pretrained(path_or_id: str | Path, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained`` with ``dtype`` passed under the name this diffusers reads."""
    return DiffusionPipeline.from_pretrained(str(path_or_id), **{_DTYPE_KWARG: dtype})


def load_pipeline(base: str | Path | None = None, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """The base pipeline: the built-in model for ``None``/``"builtin"``, else any diffusers folder or hub id.

    diffusers' and transformers' "Loading ..." progress bars stay off (b4m's own bars show the work)."""
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if base is None or str(base) == BUILTIN:
        try:
            pipe = load_base_pipeline(None, dtype=dtype)
        except FileNotFoundError as err:
            raise B4MError(f"built-in base model: {err}") from None
    else:
        try:
            pipe = from_pretrained(base, dtype)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise B4MError(
                f"--base {base}: cannot load a diffusers pipeline from it ({first}); give a local pipeline "
                "folder (with model_index.json) or a hub id available offline"
            ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def base_model_name(base: str | Path | None) -> str:
    """How an adapter records its base model (checked when fusing)."""
    return BUILTIN if base is None or str(base) == BUILTIN else str(base)


def freeze(pipe: DiffusionPipeline) -> None:
    """Freeze every base weight (UNet, text encoders, VAE): only adapter parameters train."""
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
            module.eval()


@dataclass
class Conditioning:
    """Text conditioning of a batch: ``hidden`` (B, T, D) and, for SDXL, ``added`` (pooled text + time ids)."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def index(self, idx: torch.Tensor | list[int]) -> Conditioning:
        added = None if self.added is None else {k: v[idx] for k, v in self.added.items()}
        return Conditioning(self.hidden[idx], added)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        added = None
        if parts[0].added is not None:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}  # type: ignore[index]
        return Conditioning(torch.cat([p.hidden for p in parts]), added)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        added = None if self.added is None else {k: v.to(device, dtype) for k, v in self.added.items()}
        return Conditioning(self.hidden.to(device, dtype), added)


@torch.no_grad()
def encode_prompts(pipe: DiffusionPipeline, prompts: list[str], resolution: int) -> Conditioning:
    """Encode prompts once (the text encoders are frozen, so training caches these)."""
    device = pipe.unet.device
    if isinstance(pipe, StableDiffusionXLPipeline):
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=hidden.dtype)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1).to(device)}
        return Conditioning(hidden, added)
    hidden, _ = pipe.encode_prompt(prompts, device, 1, False)
    return Conditioning(hidden)


@torch.no_grad()
def encode_images(pipe: DiffusionPipeline, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """VAE latents of ``images`` (``(N, 3, H, W)`` in ``[0, 1]``), scaled like the pipeline scales them.

    Uses the posterior mean (deterministic), computed once and cached by the trainers.
    """
    vae = pipe.vae
    out = []
    for chunk in images.split(batch_size):
        x = chunk.to(vae.device, vae.dtype) * 2 - 1
        out.append(vae.encode(x).latent_dist.mean)
    latents = torch.cat(out)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def training_scheduler(pipe: DiffusionPipeline) -> DDPMScheduler:
    """A DDPM scheduler with the base model's noise schedule and prediction type."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def per_sample_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """The denoising loss of each sample, ``(B,)``: MSE between the UNet's prediction and its target."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred_type = scheduler.config.prediction_type
    if pred_type == "epsilon":
        target = noise
    elif pred_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise B4MError(f"base model predicts {pred_type!r}; b4m trains epsilon- and v-prediction models")
    kwargs = {} if cond.added is None else {"added_cond_kwargs": cond.added}
    dtype = cond.hidden.dtype
    pred = unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond.hidden, **kwargs).sample
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
