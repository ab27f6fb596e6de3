"""The everyday training options on the optimizer side (issue 28 item 3), built once for every trainer: B4M's
stage 1 and stage 2, and the trained baselines (:func:`b4m.methods.common.train_steps`).

- :func:`check_recipe`: every option's value, before any model loads (one phrase per problem, naming the flag; a
  missing optional package says what to ``pip install``);
- :func:`make_optimizer`: ``adamw`` (``torch.optim.AdamW``, today's), ``adamw8bit`` (bitsandbytes'
  ``AdamW8bit``, Dettmers et al. 2022) or ``prodigy`` (``prodigyopt.Prodigy``, Mishchenko & Defazio 2024);
- :func:`make_lr_scheduler`: diffusers' ``get_scheduler`` (the schedules of its training scripts), ``None`` for
  the default constant rate without warm-up, so that a default run does exactly what it did before;
- :func:`loop_options`: what :func:`b4m.train.loop.run_steps` takes (gradient accumulation, clipping, the
  schedule).

The loss side (noise offset, min-SNR, FLUX timestep sampling) is :class:`b4m.diffusion.objective.Objective`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable
from typing import Any

import torch

from b4m.checks import finite, integer_at_least
from b4m.diffusion.objective import Objective
from b4m.errors import B4MError, warn
from b4m.options import (
    LR_SCHEDULERS,
    OPTIMIZER_PACKAGES,
    SAVE_PRECISIONS,
    TIMESTEP_SAMPLINGS,
    TRAIN_OPTIMIZERS,
)

__all__ = [
    "SAVE_DTYPES",
    "Objective",
    "check_family",
    "check_recipe",
    "loop_options",
    "make_lr_scheduler",
    "make_optimizer",
    "save_dtype",
    "torch_optimizer",
]

SAVE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""``--save-precision`` -> the dtype adapter tensors are cast to on write."""


def _choice(value: Any, option: str, choices: Iterable[str], problems: list[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        problems.append(f"{option} {value}: give one of {', '.join(choices)}")


def _clip(value: float | None, option: str, problems: list[str]) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        problems.append(f"{option} {value}: give a finite norm > 0 (0 or unset: no clipping)")


def check_recipe(config: Any, problems: list[str]) -> None:
    """Check the recipe options ``config`` declares (fields it lacks are skipped), appending one phrase per
    problem; an optimizer whose package is missing names the ``pip install`` that fixes it."""

    def has(name: str) -> bool:
        return hasattr(config, name)

    if has("gradient_accumulation_steps"):
        integer_at_least(config.gradient_accumulation_steps, "--gradient-accumulation-steps", 1, problems)
    if has("snr_gamma") and config.snr_gamma is not None:
        finite(config.snr_gamma, "--snr-gamma", problems, positive=True)
    if has("noise_offset"):
        finite(config.noise_offset, "--noise-offset", problems)
    if has("timestep_sampling"):
        _choice(config.timestep_sampling, "--timestep-sampling", TIMESTEP_SAMPLINGS, problems)
        if not math.isfinite(config.logit_mean):
            problems.append(f"--logit-mean {config.logit_mean}: give a finite number")
        finite(config.logit_std, "--logit-std", problems, positive=True)
        if not math.isfinite(config.mode_scale):
            problems.append(f"--mode-scale {config.mode_scale}: give a finite number")
    if has("lr_num_cycles"):
        integer_at_least(config.lr_num_cycles, "--lr-num-cycles", 1, problems)
        finite(config.lr_power, "--lr-power", problems, positive=True)
    if has("save_precision"):
        _choice(config.save_precision, "--save-precision", SAVE_PRECISIONS, problems)
    for prefix in ("", "stage2_"):
        flag = "--" + prefix.replace("_", "-")
        if has(prefix + "lr_scheduler"):
            _choice(getattr(config, prefix + "lr_scheduler"), f"{flag}lr-scheduler", LR_SCHEDULERS, problems)
            integer_at_least(
                getattr(config, prefix + "lr_warmup_steps"), f"{flag}lr-warmup-steps", 0, problems
            )
        if has(prefix + "max_grad_norm"):
            _clip(getattr(config, prefix + "max_grad_norm"), f"{flag}max-grad-norm", problems)
    if has("stage2_weight_decay"):
        finite(config.stage2_weight_decay, "--stage2-weight-decay", problems)
    if has("train_optimizer"):
        name = config.train_optimizer
        _choice(name, "--train-optimizer", TRAIN_OPTIMIZERS, problems)
        package = OPTIMIZER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            problems.append(
                f"--train-optimizer {name}: needs {package}, which is not installed; pip install {package} "
                "(or pip install 'b4m[train]')"
            )


def check_family(config: Any, family: str | None) -> None:
    """Refuse loss-side options the base family cannot use (``family``: ``flux``, ``sd``, ``sdxl``, ``builtin``,
    or ``None`` when not known yet): min-SNR on flow matching, FLUX timestep sampling on a DDPM base."""
    if family is None:
        return
    if family == "flux" and getattr(config, "snr_gamma", None) is not None:
        raise B4MError(
            "--snr-gamma: min-SNR weighting is for DDPM bases (SD, SDXL, the built-in model); FLUX trains by flow "
            "matching: use --timestep-sampling logit_normal instead"
        )
    sampling = getattr(config, "timestep_sampling", "uniform")
    if family != "flux" and sampling != "uniform":
        raise B4MError(
            f"--timestep-sampling {sampling}: applies to FLUX (flow matching); this {family} base trains on "
            "uniform DDPM timesteps (use --snr-gamma to reweight them)"
        )


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer ``name`` (:data:`~b4m.options.TRAIN_OPTIMIZERS`) on ``params`` (tensors or parameter
    groups). ``adamw`` is exactly what b4m always built; ``prodigy``'s ``lr`` multiplies the step size it
    estimates (give 1.0: a warning says so when it is far lower)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name in OPTIMIZER_PACKAGES and importlib.util.find_spec(OPTIMIZER_PACKAGES[name]) is None:
        package = OPTIMIZER_PACKAGES[name]
        raise B4MError(f"--train-optimizer {name}: needs {package}; pip install {package}")
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        if lr < 0.1:
            warn(
                f"--train-optimizer prodigy with --lr {lr:g}: Prodigy estimates the step size itself and --lr "
                "multiplies it; 1.0 is the usual value"
            )
        return Prodigy(params, lr=lr, weight_decay=weight_decay)
    raise B4MError(f"--train-optimizer {name}: give one of {', '.join(TRAIN_OPTIMIZERS)}")


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper or stage 2's preconditioned one."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def make_lr_scheduler(
    optimizer: Any,
    name: str,
    warmup_steps: int,
    steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
) -> Any:
    """diffusers' ``get_scheduler(name)`` over ``steps`` optimizer steps with ``warmup_steps`` of warm-up, on the
    torch optimizer inside ``optimizer``; ``None`` for ``constant`` without warm-up (the rate never changes, so
    nothing is built and a default run stays what it was)."""
    if name == "constant" and not warmup_steps:
        return None
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name,
        torch_optimizer(optimizer),
        num_warmup_steps=warmup_steps,
        num_training_steps=steps,
        num_cycles=num_cycles,
        power=power,
    )


def loop_options(config: Any, optimizer: Any, steps: int, stage2: bool = False) -> dict[str, Any]:
    """The keywords of :func:`~b4m.train.loop.run_steps` for ``config``'s recipe: gradient accumulation,
    gradient clipping and the learning-rate schedule (``stage2``: the ``--stage2-*`` ones)."""
    prefix = "stage2_" if stage2 else ""
    scheduler = make_lr_scheduler(
        optimizer,
        getattr(config, prefix + "lr_scheduler", "constant"),
        getattr(config, prefix + "lr_warmup_steps", 0),
        steps,
        getattr(config, "lr_num_cycles", 1),
        getattr(config, "lr_power", 1.0),
    )
    return {
        "accumulation": getattr(config, "gradient_accumulation_steps", 1),
        "max_grad_norm": getattr(config, prefix + "max_grad_norm", None) or None,
        "lr_scheduler": scheduler,
    }


def save_dtype(config: Any) -> torch.dtype:
    """The dtype ``config``'s ``--save-precision`` writes adapter tensors in (float32 by default)."""
    return SAVE_DTYPES[getattr(config, "save_precision", "fp32")]
