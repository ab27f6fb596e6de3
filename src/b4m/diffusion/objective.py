"""The loss-side training options: how a denoising step draws its timestep and noise, and how it weights its loss.

One :class:`Objective` per run, built from the run's options (:class:`b4m.options.RecipeOptions`);
:func:`b4m.train.loop.sample_batch` draws with it and :func:`b4m.diffusion.pipeline.per_sample_loss` weights with
it. At its defaults it changes nothing, bit for bit: the same random draws in the same order, no weights.

- ``noise_offset``: ``noise + offset * randn(1, C, 1, 1)``, diffusers' convention (``train_text_to_image.py``,
  after Guttenberg's "diffusion with offset noise") with B4M's one noise shared by every sample of a step; drawn
  after the timestep, so the images, noise and timestep of a step are those drawn without it.
- ``snr_gamma``: min-SNR-gamma weighting (Hang et al., ICCV 2023): ``min(SNR(t), gamma) / SNR(t)`` for epsilon
  prediction, ``/ (SNR(t) + 1)`` for v-prediction, as diffusers' training scripts compute it with
  ``diffusers.training_utils.compute_snr``. Undefined for flow matching (FLUX): refused there.
- ``timestep_sampling`` (FLUX): ``u`` in [0, 1) from ``diffusers.training_utils.
  compute_density_for_timestep_sampling`` (``logit_normal``, ``mode``: Esser et al. 2024, the SD3 paper) or
  kohya's ``sigmoid`` (``sigmoid(logit_std * randn)``), and the training-sigma index ``floor(u N)``, as diffusers'
  ``train_dreambooth_lora_flux.py`` does. For these schemes diffusers' loss weighting
  (``compute_loss_weighting_for_sd3``) is 1, so none is applied. ``uniform`` is today's draw,
  ``randint(0, N)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from b4m.diffusion import flux
from b4m.errors import B4MError
from b4m.options import TIMESTEP_SAMPLINGS

__all__ = ["Objective"]


@dataclasses.dataclass(frozen=True)
class Objective:
    """The loss-side options of a run (see the module docstring); the defaults are b4m's recipe."""

    noise_offset: float = 0.0
    snr_gamma: float | None = None
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise B4MError(
                f"--timestep-sampling {self.timestep_sampling}: give one of {', '.join(TIMESTEP_SAMPLINGS)}"
            )

    @classmethod
    def of(cls, config: Any) -> Objective:
        """The objective of a run config (fields it lacks keep their defaults)."""
        return cls(
            **{f.name: getattr(config, f.name, f.default) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        )

    def timestep(self, scheduler: Any, gen: torch.Generator) -> torch.Tensor:
        """One training timestep (an index in ``[0, N)``, ``N = num_train_timesteps``), shape ``(1,)``, CPU."""
        n = scheduler.config.num_train_timesteps
        if self.timestep_sampling == "uniform":
            return torch.randint(0, n, (1,), generator=gen)
        if self.timestep_sampling == "sigmoid":
            u = torch.sigmoid(self.logit_std * torch.randn((1,), generator=gen))
        else:
            from diffusers.training_utils import compute_density_for_timestep_sampling

            u = compute_density_for_timestep_sampling(
                self.timestep_sampling,
                1,
                logit_mean=self.logit_mean,
                logit_std=self.logit_std,
                mode_scale=self.mode_scale,
                generator=gen,
            )
        return (u * n).long().clamp(0, n - 1)  # u = 1 (mode at u = 0, a rounded sigmoid) is the last index

    def offset_noise(self, noise: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``noise`` (``(1, C, H, W)``, CPU) plus ``noise_offset * randn(1, C, 1, 1)``; unchanged (and nothing drawn)
        when the offset is 0."""
        if not self.noise_offset:
            return noise
        return noise + self.noise_offset * torch.randn((noise.shape[0], noise.shape[1], 1, 1), generator=gen)

    def loss_weights(self, scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights at ``timesteps`` (``None``: all 1, nothing to multiply)."""
        if self.snr_gamma is None:
            return None
        if isinstance(scheduler, flux.FlowMatchTraining):
            raise B4MError(
                "--snr-gamma: min-SNR weighting is for DDPM bases (SD, SDXL); FLUX trains by flow matching"
            )
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        weights = torch.clamp(snr, max=self.snr_gamma)
        if scheduler.config.prediction_type == "v_prediction":
            return weights / (snr + 1)
        return weights / snr
