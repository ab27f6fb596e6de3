"""The architecture and training settings of the built-in base model (:class:`BaseModelConfig`).

Kept apart from the modules that build and train the model (:mod:`b4m.models.base.build`,
:mod:`b4m.models.base.train`) so that the command line builds ``b4m base train --help`` without loading torch or
diffusers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from b4m.diffusion.builtin_base import BASE_INFO

__all__ = ["BaseModelConfig"]


@dataclass(frozen=True)
class BaseModelConfig:
    """Architecture and training knobs of the base model. Defaults reproduce the shipped weights."""

    seed: int = 0
    """Seeds the data pool, weight initialisation, noise and dropout."""
    resolution: int = 32
    """Image side in pixels (the world's default resolution)."""

    # VAE (AutoencoderKL)
    vae_block_out_channels: tuple[int, ...] = (32, 64)
    """One entry per resolution level; the downsampling factor is 2 ** (len - 1)."""
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 12
    vae_norm_num_groups: int = 16
    vae_steps: int = 4000
    """Autoencoder training steps (phase 1)."""
    vae_batch_size: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    """Weight of the per-element KL term; tiny, so the latent stays informative but bounded."""
    vae_object_weight: float = 4.0
    """Extra reconstruction weight on pixels that differ from the image's background (estimated as the
    median border colour). Objects cover a small part of most world images; without it the autoencoder
    learns their colours and textures last."""

    # Text encoder (CLIPTextModel)
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate_size: int = 128
    max_length: int = 32
    """Tokenizer ``model_max_length`` and the encoder's position count (BOS + words + EOS must fit)."""

    # UNet (UNet2DConditionModel)
    unet_block_out_channels: tuple[int, ...] = (32, 64, 128)
    unet_down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    unet_up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    unet_layers_per_block: int = 2
    """Two resnet/attention layers per block: with one (4.1 M params) held-in style accuracy plateaued at 87.5 %,
    below the 90 % bar; two (6.1 M) reach 93.8 % at 1.5x the step cost (benchmarks/base_model.md)."""
    unet_attention_heads: int = 2
    """Passed as diffusers' ``attention_head_dim``, which this UNet class uses as the number of heads."""
    unet_norm_num_groups: int = 32

    # Noise schedule
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "v_prediction"
    """v-prediction (Salimans & Ho 2022): with the near-zero terminal SNR of ``linear`` betas, ε-prediction
    blew up in sampling here (x0 = (x - sqrt(1-a) ε) / sqrt(a) amplifies ε errors 150x at t = T); v stays
    well conditioned at every noise level."""

    # Diffusion training (phase 2)
    pool_size: int = 80000
    """Number of pre-rendered training images (random held-in scenes, each with its own render seed)."""
    attribute_prob: float = 0.5
    """Probability that ``random_scene`` sets each attribute (and names it in the caption)."""
    train_steps: int = 16000
    batch_size: int = 48
    lr: float = 8e-4
    lr_warmup_steps: int = 300
    lr_min_ratio: float = 0.05
    """Cosine decay from ``lr`` to ``lr * lr_min_ratio``."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    """Min-SNR loss weighting (Hang et al. 2023, Eq. 9): weight ``min(SNR, gamma) / SNR`` for ε-prediction
    (``/ (SNR + 1)`` for v), which speeds up convergence; 0 disables it."""
    cfg_dropout: float = 0.1
    """Probability of replacing the caption by the empty prompt (classifier-free guidance)."""
    checkpoint_every: int = 500
    log_every: int = 50
    num_threads: int = 0
    """Torch CPU threads; 0 = automatic (:mod:`b4m.threads`: chosen once at the start from the machine's
    load, recorded in the run folder's ``threads.json`` and reused on resume, so that the result does not
    depend on the load)."""

    # Sampling defaults written into the folder
    sample_steps: int = BASE_INFO.num_inference_steps
    guidance_scale: float = BASE_INFO.guidance_scale

    init_from: str = ""
    """A base pipeline folder to start from (fine-tuning): its VAE is reused as it is (phase 1 then only
    encodes the pool with it, keeping its latent scaling), and its UNet and text encoder weights start
    phase 2; token embeddings are carried over by token string, new words keep their fresh initialisation.
    Empty: train everything from scratch."""
    exclude_unseen_pairs: bool = True
    """Leave the world's ``UNSEEN_PAIRS`` out of the pool, so the quality check can ask for pairs the base
    model never saw."""
    instance_share: float = 0.0
    """Share of pool scenes whose content is drawn from the classes with instances (and, independently, whose
    style is): a fine-tune that teaches the base those classes shows them more often than the rest."""

    filler_prob: float = 0.0
    """Probability that a training caption gets placeholder words inserted at random positions (1 to
    ``filler_max`` of them), each a fresh random token embedding drawn from the text encoder's initial
    distribution (``N(0, 0.02)``), redrawn every time. Untrained words (the identifiers "snq", "wzk", held-out
    class names) look exactly like that to the encoder, so the base learns to draw a caption with an unknown
    word in it as the caption without it, instead of losing the content or style the caption names. The
    identifiers themselves are never used."""
    filler_max: int = 2
    lift_weak_words: bool = False
    """With ``init_from``: caption words of this run's pool whose loaded embedding is shorter than half the
    median of those words' embedding norms (words a short fine-tune taught, whose embeddings barely left their
    random initialisation) are scaled, direction kept, to that median, so that no word the base knows looks
    like an untrained one."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored with the model (not used by training)."""

    def __post_init__(self) -> None:
        errors = []
        f = 2 ** (len(self.vae_block_out_channels) - 1)
        if self.resolution % f:
            errors.append(f"resolution={self.resolution} is not divisible by the VAE factor {f}")
        for name in ("vae_block_out_channels", "unet_block_out_channels"):
            groups = self.vae_norm_num_groups if name.startswith("vae") else self.unet_norm_num_groups
            bad = [c for c in getattr(self, name) if c % groups]
            if bad:
                errors.append(
                    f"{name}={getattr(self, name)} has channels not divisible by {groups} norm groups"
                )
        if not (
            len(self.unet_block_out_channels)
            == len(self.unet_down_block_types)
            == len(self.unet_up_block_types)
        ):
            errors.append(
                "unet_block_out_channels, unet_down_block_types and unet_up_block_types need equal lengths"
            )
        if self.text_hidden_size % self.text_heads:
            errors.append(
                f"text_hidden_size={self.text_hidden_size} is not divisible by text_heads={self.text_heads}"
            )
        if not 0 <= self.filler_prob <= 1 or self.filler_max < 1:
            errors.append(f"filler_prob={self.filler_prob} must be in [0, 1] and filler_max >= 1")
        if not 0 <= self.cfg_dropout < 1:
            errors.append(f"cfg_dropout={self.cfg_dropout} must be in [0, 1)")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            errors.append(f"prediction_type={self.prediction_type!r}; use 'epsilon' or 'v_prediction'")
        if errors:
            raise ValueError("BaseModelConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaseModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"BaseModelConfig: unknown keys {unknown}; valid keys are {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_block_out_channels) - 1)
