"""Tiny SD/SDXL pipelines built from configs, offline (for tests and the CPU variant of the benchmarks).

Same classes and code paths as the real models, only small; mirrors diffusers' own ``get_dummy_components``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = ["tiny_sd_pipeline", "tiny_sdxl_pipeline", "tiny_sdxl_unet", "write_clip_tokenizer"]


def write_clip_tokenizer(
    folder: str | Path, words: Iterable[str] = (), max_length: int = 77
) -> CLIPTokenizer:
    """Write a CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``) offline and load it.

    The vocabulary holds the special tokens, every printable ASCII character with and without the end-of-word
    marker ``</w>`` (so any word tokenizes, into characters at worst) and each of ``words`` as one token.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    chars = [c for c in string.ascii_lowercase + string.digits + "@-'.,!?&"]
    tokens += chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if len(word) < 2 or f"{word}</w>" in tokens:
            continue
        # Merge left to right: w o r d</w> -> wo r d</w> -> wor d</w> -> word</w>.
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = parts[0]
        for nxt in parts[1:]:
            merges.append(f"{prefix} {nxt}")
            prefix = prefix + nxt
            if prefix not in tokens:
                tokens.append(prefix)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )


def _text_config(vocab_size: int, hidden: int = 32, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        hidden_act="gelu",
        projection_dim=projection,
        max_position_embeddings=77,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_sdxl_unet(
    block_out_channels: tuple[int, ...] = (32, 64), cross_attention_dim: int = 64
) -> UNet2DConditionModel:
    """An SDXL-layout UNet (text_time conditioning, linear projections, 2-layer transformer in the low-res block)."""
    return UNet2DConditionModel(
        block_out_channels=block_out_channels,
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 (time ids) + 32 (pooled text embedding)
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=1,
    )


def tiny_sdxl_pipeline(tokenizer_dir: str | Path, seed: int = 0) -> StableDiffusionXLPipeline:
    """A complete tiny ``StableDiffusionXLPipeline`` (UNet, two text encoders, VAE, Euler), random weights."""
    torch.manual_seed(seed)
    unet = tiny_sdxl_unet()
    vae = _vae()
    tokenizer = write_clip_tokenizer(
        tokenizer_dir, words=["a", "photo", "of", "teddy", "in", "style", "paper"]
    )
    config = _text_config(len(tokenizer))
    text_encoder = CLIPTextModel(config)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def tiny_sd_pipeline(tokenizer_dir: str | Path, seed: int = 0) -> StableDiffusionPipeline:
    """A complete tiny ``StableDiffusionPipeline`` (SD 1.x layout), random weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    tokenizer = write_clip_tokenizer(
        tokenizer_dir, words=["a", "photo", "of", "teddy", "in", "style", "paper"]
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
