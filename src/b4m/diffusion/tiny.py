"""Tiny SD/SDXL/FLUX pipelines built from configs, offline (for tests and the CPU variant of the benchmarks).

Same classes and code paths as the real models, only small; mirrors diffusers' own ``get_dummy_components``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "TINY_FLUX_TRANSFORMER_CONFIG",
    "tiny_flux_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_sdxl_unet",
    "write_clip_tokenizer",
    "write_t5_tokenizer",
]

_WORDS = ["a", "photo", "of", "teddy", "in", "style", "paper"]
_CHARS = string.ascii_lowercase + string.digits + "@-'.,!?&"


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


def _vae(**extra: Any) -> AutoencoderKL:
    """The tiny VAE of every test pipeline; ``extra``: FLUX's settings (no quant convs, its shift and scale)."""
    return AutoencoderKL(
        **extra,
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


def write_t5_tokenizer(folder: str | Path, words: Iterable[str] = (), max_length: int = 16) -> T5Tokenizer:
    """Write a T5 (SentencePiece-Unigram) tokenizer offline and load it back from ``folder``.

    Special tokens ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the word marker ``▁``, each of ``words`` as one piece
    (``▁word``) and every character of :data:`_CHARS` (so any word tokenizes, into characters at worst);
    ``max_length`` is its ``model_max_length`` (the T5 length FLUX pads prompts to, see ``flux.py``)."""
    folder = Path(folder)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w.lower(), -1.0) for w in dict.fromkeys(words)]
    vocab += [(c, -5.0) for c in _CHARS]
    T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length).save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))


TINY_FLUX_TRANSFORMER_CONFIG: dict = {
    "patch_size": 1,
    "in_channels": 16,  # 4 VAE latent channels x 2x2 packing
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": [4, 4, 8],
}


def tiny_flux_pipeline(
    tokenizer_dir: str | Path, seed: int = 0, guidance_embeds: bool = True
) -> FluxPipeline:
    """A complete tiny ``FluxPipeline`` (2 double + 2 single blocks, CLIP + T5, a 16-channel-packing VAE, the
    FLUX.1-dev flow-matching scheduler), random weights; 32 px images are 16x16 latents, 64 image tokens."""
    from b4m.diffusion.flux import FLUX_DEV_SCHEDULER_CONFIG

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        **(TINY_FLUX_TRANSFORMER_CONFIG | {"guidance_embeds": guidance_embeds})
    )
    vae = _vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tokenizer = write_clip_tokenizer(Path(tokenizer_dir) / "clip", words=_WORDS)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    tokenizer_2 = write_t5_tokenizer(Path(tokenizer_dir) / "t5", words=_WORDS)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER_CONFIG)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
