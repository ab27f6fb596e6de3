"""FLUX (``FluxPipeline``, ``FluxTransformer2DModel``): the flow-matching side of training and sampling.

What differs from the UNets (everything else, PLP injection, MCP routing, fusion, files, is shared):

- **Prompts**: CLIP's pooled embedding (``pooled_projections``) and T5's token sequence (``encoder_hidden_states``),
  from the pipeline's own ``encode_prompt``; the text position ids are all zeros, rebuilt from the sequence length.
  T5 pads to :func:`max_sequence_length` (512 on FLUX.1, the tokenizer's length on smaller ones), at training and
  at sampling alike (FLUX attends to the padding tokens too).
- **Latents**: the VAE's 16-channel latents, shifted and scaled like the pipeline does, packed into 2x2 patches
  (``FluxPipeline._pack_latents``) with their image position ids (``_prepare_latent_image_ids``).
- **Loss**: rectified flow as diffusers' ``train_dreambooth_lora_flux.py`` trains it (weighting scheme ``none``):
  a timestep index ``i`` uniform in ``[0, num_train_timesteps)``, ``sigma = scheduler.sigmas[i]``, the noisy input
  ``FlowMatchEulerDiscreteScheduler.scale_noise`` gives (``(1 - sigma) x0 + sigma eps``), the transformer called
  at ``timestep = sigma`` (the scheduler's ``timesteps[i] / 1000``), and the target ``eps - x0``.
- **Guidance**: FLUX.1-dev is guidance-distilled (``guidance_embeds``); training feeds ``guidance = 3.5``
  (:data:`TRAIN_GUIDANCE`, the diffusers script's default), sampling the ``--guidance`` value; without
  ``guidance_embeds`` (FLUX.1-schnell) none is passed.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

__all__ = [
    "DIFFUSERS_SCRIPT_TARGETS",
    "FLUX_DEV_SCHEDULER_CONFIG",
    "FLUX_DEV_TRANSFORMER_CONFIG",
    "FLUX_TARGETS",
    "TRAIN_GUIDANCE",
    "FlowMatchTraining",
    "encode_flux_prompts",
    "flux_predict",
    "flux_transformer",
    "initial_latents",
    "is_flux",
    "max_sequence_length",
    "pack",
    "unpack",
]

# The attention projections of both block kinds: the image stream (to_q/k/v, to_out.0) and the text stream of
# the double blocks (add_q/k/v_proj, to_add_out). Single blocks have to_q/k/v only (no to_out: pre-only attention).
FLUX_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
# diffusers' examples/dreambooth/train_dreambooth_lora_flux.py, its default target list (no --lora_layers).
DIFFUSERS_SCRIPT_TARGETS: tuple[str, ...] = (
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
TRAIN_GUIDANCE = 3.5

# black-forest-labs/FLUX.1-dev, transformer/config.json and scheduler/scheduler_config.json (public).
FLUX_DEV_TRANSFORMER_CONFIG: dict[str, Any] = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
FLUX_DEV_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def is_flux(pipe: Any) -> bool:
    return isinstance(pipe, FluxPipeline)


def flux_transformer(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, config: dict | None = None
) -> FluxTransformer2DModel:
    """FLUX.1-dev's transformer (or ``config``) with random weights; ``device="meta"`` allocates nothing."""
    config = FLUX_DEV_TRANSFORMER_CONFIG if config is None else config
    if str(device) == "meta":
        from accelerate import init_empty_weights

        with init_empty_weights():
            return FluxTransformer2DModel.from_config(config)
    with torch.device(device):
        return FluxTransformer2DModel.from_config(config).to(dtype)


def max_sequence_length(pipe: Any) -> int:
    """T5's padded length: 512 (FLUX.1), or the tokenizer's own maximum where shorter (tiny test models)."""
    return int(min(512, getattr(pipe.tokenizer_2, "model_max_length", 512)))


@torch.no_grad()
def encode_flux_prompts(pipe: FluxPipeline, prompts: list[str]) -> Any:
    """``Conditioning(hidden = T5 states (B, T, D), added = {"pooled_projections": CLIP pooled (B, P)})``."""
    from b4m.diffusion.pipeline import Conditioning

    device = pipe.transformer.device
    hidden, pooled, _ = pipe.encode_prompt(
        prompts, prompt_2=None, device=device, max_sequence_length=max_sequence_length(pipe)
    )
    return Conditioning(hidden, {"pooled_projections": pooled})


class FlowMatchTraining:
    """The training side of the base model's ``FlowMatchEulerDiscreteScheduler``: its ``N`` training sigmas.

    A timestep here is an index ``i`` into them (``sample_batch`` draws it uniformly from ``[0, N)``, as the
    diffusers FLUX script does with weighting ``none``)."""

    def __init__(self, config: Any) -> None:
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self.config = self.scheduler.config

    def sigmas(self, indices: torch.Tensor) -> torch.Tensor:
        return self.scheduler.sigmas[indices.cpu()].float()

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) x0 + sigma eps``, by the scheduler's own ``scale_noise``."""
        timesteps = self.scheduler.timesteps[indices.cpu()]
        return self.scheduler.scale_noise(latents, timesteps.to(latents.device), noise)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The velocity the transformer predicts: ``eps - x0``."""
        return noise - latents


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2 * W/2, 4C)`` (FLUX's 2x2 patches)."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of ``height x width``."""
    return FluxPipeline._unpack_latents(packed, height, width, 1)


def flux_predict(
    transformer: torch.nn.Module,
    scheduler: FlowMatchTraining,
    latents: torch.Tensor,
    cond: Any,
    noise: torch.Tensor,
    indices: torch.Tensor,
    guidance: float = TRAIN_GUIDANCE,
) -> torch.Tensor:
    """The transformer's velocity for ``latents`` noised with ``noise`` at timestep indices ``indices``,
    unpacked to ``(B, C, H, W)``."""
    b, _, h, w = latents.shape
    noisy = scheduler.add_noise(latents, noise, indices)
    dtype = cond.hidden.dtype
    device = latents.device
    sigma = scheduler.sigmas(indices).to(device, dtype)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    txt_ids = torch.zeros(cond.hidden.shape[1], 3, device=device, dtype=dtype)
    config = getattr(transformer, "config", None) or transformer.module.config  # DDP wraps the model
    g = torch.full((b,), guidance, device=device, dtype=dtype) if config.guidance_embeds else None
    pred = transformer(
        hidden_states=pack(noisy).to(dtype),
        timestep=sigma,
        guidance=g,
        pooled_projections=cond.added["pooled_projections"],
        encoder_hidden_states=cond.hidden,
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return unpack(pred, h, w)


def initial_latents(pipe: FluxPipeline, gens: list[torch.Generator], resolution: int) -> torch.Tensor:
    """Packed starting noise for ``pipe(latents=...)``, one generator per image (seeded per image, as for the
    UNets): ``(B, (H/2)(W/2), 4C)`` with ``H = 2 * (resolution // (2 * vae_scale_factor))``."""
    channels = pipe.transformer.config.in_channels // 4
    size = 2 * (resolution // (pipe.vae_scale_factor * 2))
    noise = torch.stack([torch.randn((channels, size, size), generator=g) for g in gens])
    return pack(noise)
