"""The diffusers side of training: load a base pipeline, encode prompts and images, noise, predict.

This is the only layer (with ``sampling.py``, ``flux.py`` and ``tiny.py``) that imports diffusers. It handles SD
1.x/2.x (``StableDiffusionPipeline``), SDXL (``StableDiffusionXLPipeline``, with its pooled text embedding and
size/crop time ids), FLUX (``FluxPipeline``: a transformer trained by flow matching, see ``flux.py``) and the
built-in base model, which is an ordinary ``StableDiffusionPipeline``. The functions below take the pipeline (or
the denoiser and the training scheduler) and branch by base family, so the trainers run unchanged on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionXLPipeline

from b4m.checks import check_base, raise_problems
from b4m.diffusion import flux
from b4m.diffusion.builtin_base import load_base_pipeline
from b4m.errors import B4MError

__all__ = [
    "BUILTIN",
    "FAMILIES",
    "Conditioning",
    "base_family",
    "base_model_name",
    "default_targets",
    "denoiser",
    "family_of_base",
    "encode_images",
    "encode_prompts",
    "freeze",
    "from_pretrained",
    "load_pipeline",
    "masked_mse",
    "per_sample_loss",
    "predict",
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
        problems: list[str] = []
        check_base(base, problems)
        raise_problems(problems)
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


FAMILIES = ("builtin", "sd", "sdxl", "flux")


def base_family(pipe: DiffusionPipeline, base: str | Path | None = None) -> str:
    """``"builtin"`` (the built-in model, ``base`` None/"builtin"), ``"flux"``, ``"sdxl"`` or ``"sd"``."""
    if base is None or str(base) == BUILTIN:
        return BUILTIN
    if flux.is_flux(pipe):
        return "flux"
    return "sdxl" if isinstance(pipe, StableDiffusionXLPipeline) else "sd"


def family_of_base(base: str | Path | None) -> str | None:
    """The family of ``--base`` before it loads: ``builtin``, ``flux`` for a folder whose ``model_index.json``
    names a Flux pipeline or a hub id naming FLUX, ``sdxl``/``sd`` likewise; ``None`` when it cannot tell."""
    import json

    if base is None or str(base) == BUILTIN:
        return BUILTIN
    index = Path(str(base)) / "model_index.json"
    name = str(base)
    if index.is_file():
        try:
            name = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
        except (OSError, ValueError):
            return None
    lowered = name.lower()
    if "flux" in lowered:
        return "flux"
    if "xl" in lowered:
        return "sdxl"
    return "sd" if "stable" in lowered or index.is_file() else None


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The network b4m adapts: the UNet, or FLUX's transformer."""
    transformer = getattr(pipe, "transformer", None)
    return transformer if transformer is not None else pipe.unet


def default_targets(pipe: DiffusionPipeline, targets: list[str] | tuple[str, ...] | str) -> list[str] | str:
    """``targets`` for this base model: on FLUX, the default four attention names widen to the eight projections
    of its joint attention (:data:`b4m.diffusion.flux.FLUX_TARGETS`); any other list is taken as given."""
    from b4m.adapters.inject import DEFAULT_TARGETS

    if isinstance(targets, str):
        return targets
    if flux.is_flux(pipe) and tuple(targets) == DEFAULT_TARGETS:
        return list(flux.FLUX_TARGETS)
    return list(targets)


def freeze(pipe: DiffusionPipeline) -> None:
    """Freeze every base weight (UNet or transformer, text encoders, VAE): only adapter parameters train."""
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):
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
    if flux.is_flux(pipe):
        return flux.encode_flux_prompts(pipe, prompts)
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


def training_scheduler(pipe: DiffusionPipeline) -> DDPMScheduler | flux.FlowMatchTraining:
    """A DDPM scheduler with the base model's noise schedule and prediction type; on FLUX, the flow-matching
    training sigmas of its ``FlowMatchEulerDiscreteScheduler`` (:class:`~b4m.diffusion.flux.FlowMatchTraining`).
    Both have ``config.num_train_timesteps`` and ``add_noise(latents, noise, timesteps)``."""
    if flux.is_flux(pipe):
        return flux.FlowMatchTraining(pipe.scheduler.config)
    return DDPMScheduler.from_config(pipe.scheduler.config)


def predict(
    model: torch.nn.Module,
    scheduler: DDPMScheduler | flux.FlowMatchTraining,
    latents: torch.Tensor,
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """The denoiser's prediction, ``(B, C, H, W)``, on ``latents`` noised with ``noise`` at ``timesteps``: the
    UNet's noise or velocity, FLUX's flow velocity (unpacked)."""
    if isinstance(scheduler, flux.FlowMatchTraining):
        return flux.flux_predict(model, scheduler, latents, cond, noise, timesteps)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kwargs = {} if cond.added is None else {"added_cond_kwargs": cond.added}
    return model(noisy.to(cond.hidden.dtype), timesteps, encoder_hidden_states=cond.hidden, **kwargs).sample


def _target(
    scheduler: DDPMScheduler | flux.FlowMatchTraining,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    if isinstance(scheduler, flux.FlowMatchTraining):
        return scheduler.target(latents, noise, timesteps)
    pred_type = scheduler.config.prediction_type
    if pred_type == "epsilon":
        return noise
    if pred_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise B4MError(f"base model predicts {pred_type!r}; b4m trains epsilon- and v-prediction models")


def per_sample_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler | flux.FlowMatchTraining,
    latents: torch.Tensor,
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The denoising loss of each sample, ``(B,)``: MSE between the denoiser's prediction and its target
    (noise or v on the UNets, ``noise - latents`` on FLUX); with ``mask`` (loss weights ``(B, 1, h, w)`` on the
    latent grid, :mod:`b4m.data.masks`), the weighted mean :func:`masked_mse`."""
    target = _target(scheduler, latents, noise, timesteps)
    pred = predict(unet, scheduler, latents, cond, noise, timesteps)
    return masked_mse(pred, target, mask)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample squared error, ``(B,)``: the plain mean over channels and pixels without ``mask``; with it,
    ``sum(w * err) / sum(w)``, ``w`` the mask broadcast over the channels (a pixel of weight 0 adds nothing, not
    even through its prediction: its gradient is exactly 0)."""
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    if mask is None:
        return err.mean(dim=(1, 2, 3))
    w = mask.to(err.device, err.dtype).expand_as(err)
    return (err * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))
