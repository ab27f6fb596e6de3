"""Building the base model: untrained components and pipelines from a :class:`BaseModelConfig`, offline and
seeded, and loading an earlier pipeline's weights into fresh components (fine-tuning)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from b4m.diffusion.builtin_base import load_base_pipeline
from b4m.models.base.config import BaseModelConfig
from b4m.models.base.data import world_words
from b4m.models.base.tokenizer import build_tokenizer

__all__ = [
    "assemble",
    "build_components",
    "build_pipeline",
    "init_from_pipeline",
    "noise_scheduler",
    "sampling_scheduler",
]


def noise_scheduler(cfg: BaseModelConfig) -> DDPMScheduler:
    """The DDPM noise schedule of training."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def sampling_scheduler(cfg: BaseModelConfig) -> EulerDiscreteScheduler:
    """The Euler sampler (``trailing`` spacing) the pipeline folder ships with."""
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
        "scheduler": sampling_scheduler(cfg),
    }


def assemble(components: dict[str, Any]) -> StableDiffusionPipeline:
    """A stock :class:`StableDiffusionPipeline` of ``components`` (no safety checker or image encoder)."""
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
    return assemble(build_components(cfg, words))


def init_from_pipeline(
    components: dict[str, Any], path: str | Path, lift_words: Sequence[str] | None = None
) -> None:
    """Load an earlier base pipeline's weights into freshly built ``components`` (``BaseModelConfig.init_from``);
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
