"""Sampling images from the base model: seeded batches at the folder's recommended settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from b4m.diffusion.builtin_base import BASE_INFO, BaseModelInfo, read_base_info

__all__ = ["generate", "info_for"]


def info_for(pipe: DiffusionPipeline) -> BaseModelInfo:
    """The recommended settings of the folder ``pipe`` was loaded from (:data:`BASE_INFO` if none)."""
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
    info = info_for(pipe)
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
