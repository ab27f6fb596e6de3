"""Generate images with a b4m adapter loaded the stock way (``pipe.load_lora_weights``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from tqdm.auto import tqdm

from b4m.adapters.codec import LoraFile, file_family, load_lora
from b4m.adapters.plp import scale_parts, split_dims
from b4m.diffusion import flux
from b4m.diffusion.builtin_base import INFO_FILE, default_base_path, read_base_info
from b4m.errors import B4MError

__all__ = ["check_base_model", "check_layers", "describe", "generation_defaults", "load_adapter", "sample"]


def check_base_model(lora: LoraFile, base: str | Path | None, option: str = "") -> None:
    """Refuse (before the model loads) a b4m adapter that records another base model than ``base``
    (``option``: the option that named the file, shown first)."""
    from b4m.diffusion.pipeline import base_model_name

    recorded = lora.meta.get("base_model")
    if recorded is not None and recorded != base_model_name(base):
        raise B4MError(
            f"{option + ' ' if option else ''}{lora.path}: made for the base model {recorded!r}, not "
            f"{base_model_name(base)!r}; pass --base {recorded}, or a LoRA trained on {base_model_name(base)!r}"
        )


def check_layers(pipe: DiffusionPipeline, lora: LoraFile, base: str | Path | None = None) -> None:
    """Every layer of ``lora`` exists in the pipeline's UNet (FLUX: transformer) with the shape the file has
    (else: a LoRA for another base model)."""
    from b4m.diffusion.pipeline import denoiser

    where = f"--base {base}" if base is not None else "this base model"
    model = denoiser(pipe)
    kind = "transformer" if flux.is_flux(pipe) else "UNet"
    for module, (u, v) in sorted(lora.factors.items()):
        try:
            layer = model.get_submodule(module)
        except AttributeError:
            raise B4MError(
                f"{lora.path}: a LoRA for another base model (its layer {module} is not in the {kind} of "
                f"{where}); give the base model it was trained for"
            ) from None
        layer = getattr(layer, "base_layer", layer)
        shape = tuple(getattr(layer, "weight", torch.empty(0)).shape)
        if shape != (u.shape[0], v.shape[1]):
            raise B4MError(
                f"{lora.path}: a LoRA for another base model (layer {module} is {u.shape[0]}x{v.shape[1]} in "
                f"the file, {'x'.join(map(str, shape)) or 'not linear'} in {where}); give the base model it "
                "was trained for"
            )


def generation_defaults(pipe: DiffusionPipeline, base: str | None) -> dict[str, Any]:
    """Steps, guidance and resolution: those a b4m base folder records (``b4m_base.json``: the built-in model,
    or one rebuilt with ``b4m base train``), else the official B4M settings (25 steps, guidance 5.0; 1024 px on
    SDXL, 512 px on SD); on FLUX those of FLUX.1-dev's model card (28 steps, guidance 3.5, 1024 px)."""
    folder = default_base_path() if base in (None, "builtin") else Path(str(base))
    if (folder / INFO_FILE).is_file():
        info = read_base_info(folder)
        return {
            "steps": info.num_inference_steps,
            "guidance": info.guidance_scale,
            "resolution": info.resolution,
        }
    if flux.is_flux(pipe):
        return {"steps": 28, "guidance": 3.5, "resolution": 1024}
    resolution = 1024 if isinstance(pipe, StableDiffusionXLPipeline) else 512
    return {"steps": 25, "guidance": 5.0, "resolution": resolution}


def _scaled_state_dict(
    lora: LoraFile, content_scale: float, style_scale: float, prefix: str = "unet"
) -> dict[str, torch.Tensor]:
    rho = lora.meta.get("rho")
    if (content_scale, style_scale) != (1.0, 1.0) and rho is None:
        raise B4MError(
            f"{lora.path}: --content-scale/--style-scale need a b4m PLP adapter (this file has no rho); "
            "use the pipeline's adapter weight to scale a plain LoRA"
        )
    state = {}
    for module, (u, v) in lora.factors.items():
        if rho is not None:
            d_out, d_in = split_dims(u.shape[0], v.shape[1], float(rho))
            u, v = scale_parts(u, v, d_out, d_in, content_scale, style_scale)
        state[f"{prefix}.{module}.lora_A.weight"] = v
        state[f"{prefix}.{module}.lora_B.weight"] = u
    return state


def load_adapter(
    pipe: DiffusionPipeline,
    path: str | Path,
    content_scale: float = 1.0,
    style_scale: float = 1.0,
    adapter_name: str = "b4m",
) -> LoraFile:
    """Load an adapter file into ``pipe`` through diffusers' own ``load_lora_weights``.

    Content and style strength scale ``B`` and ``D`` (``dW = [[AC, s AD], [c BC, c s BD]]``); the result is
    still an ordinary rank-r LoRA, so this is exactly what any diffusers user gets from the scaled file.
    """
    lora = load_lora(path)  # scale 1: a file's alpha / rank is folded into U
    check_layers(pipe, lora)
    state = _scaled_state_dict(
        lora, content_scale, style_scale, "transformer" if flux.is_flux(pipe) else "unet"
    )
    pipe.load_lora_weights(state, adapter_name=adapter_name)
    return lora


def sample(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    n: int = 1,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 5.0,
    resolution: int = 512,
    batch_size: int = 16,
    progress: bool = True,
) -> list[torch.Tensor]:
    """``n`` images per prompt, ``(n, 3, H, W)`` in ``[0, 1]`` each; image ``j`` of every prompt uses seed
    ``seed + j``, so grids compare prompts (and adapters) at equal noise."""
    pipe.set_progress_bar_config(disable=True)
    jobs = [(p, j) for p in prompts for j in range(n)]
    images: list[torch.Tensor] = []
    for i in tqdm(range(0, len(jobs), batch_size), desc="generate", disable=not progress):
        chunk = jobs[i : i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed + j) for _, j in chunk]
        extra: dict[str, Any] = {}
        if flux.is_flux(pipe):  # packed noise; T5 padded as in training
            model = pipe.transformer
            latents = flux.initial_latents(pipe, gens, resolution).to(model.device, model.dtype)
            extra["max_sequence_length"] = flux.max_sequence_length(pipe)
        else:
            latents = torch.stack(
                [
                    torch.randn(
                        (
                            pipe.unet.config.in_channels,
                            resolution // pipe.vae_scale_factor,
                            resolution // pipe.vae_scale_factor,
                        ),
                        generator=g,
                    )
                    for g in gens
                ]
            ).to(pipe.unet.device, pipe.unet.dtype)
        out = pipe(
            [p for p, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            latents=latents,
            output_type="pt",
            **extra,
        )
        images.extend(out.images.float().clamp(0, 1).cpu())
    return [torch.stack(images[k * n : (k + 1) * n]) for k in range(len(prompts))]


def describe(path: str | Path) -> str:
    """A short human-readable summary of an adapter file (``b4m info``)."""
    lora = load_lora(path)
    meta = dict(lora.meta)
    lines = [
        f"{path}",
        f"  layers: {len(lora.factors)}, rank {lora.rank}, lora_alpha {lora.lora_alpha}",
        f"  spelling: {lora.spelling}",
        f"  base family: {file_family(lora) or 'unknown'}",
    ]
    for key in (
        "method",
        "role",
        "stage",
        "rho",
        "orth",
        "basis_seed",
        "basis_id",
        "base_model",
        "trigger_words",
        "prompt",
        "baked_scales",
        "split",
    ):
        if key in meta:
            lines.append(f"  {key}: {json.dumps(meta[key])}")
    return "\n".join(lines)
