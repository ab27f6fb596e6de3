"""The SDXL base UNet's public config (``stabilityai/stable-diffusion-xl-base-1.0/unet/config.json``).

Building it with random weights costs what the real UNet costs, so benchmarks need no download.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel

__all__ = ["SDXL_UNET_CONFIG", "sdxl_added_cond", "sdxl_unet"]

SDXL_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}


def sdxl_unet(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """The SDXL UNet with random weights; ``device="meta"`` builds it without allocating memory."""
    if str(device) == "meta":
        from accelerate import init_empty_weights

        with init_empty_weights():
            return UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    with torch.device(device):
        return UNet2DConditionModel.from_config(SDXL_UNET_CONFIG).to(dtype)


def sdxl_added_cond(batch: int, resolution: int, device: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Pooled text embedding (1280) and the six size/crop time ids SDXL conditions on."""
    ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device, dtype=dtype)
    return {
        "text_embeds": torch.randn(batch, 1280, device=device, dtype=dtype),
        "time_ids": ids.repeat(batch, 1),
    }
