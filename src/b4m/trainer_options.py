"""The trainers' everyday option groups, shared by B4M's stages and the trained baselines (issue 28): how files
are saved (:class:`SaveOptions`), the training recipe (:class:`RecipeOptions`, :class:`TrainingRecipeOptions`),
watching a run (:class:`WatchOptions`), fitting the card (:class:`MemoryOptions`) and the data options
(:class:`DataOptions`). :mod:`b4m.options` builds the job configs from these and B4M's own groups and re-exports
them. Defaults are the behaviour before each option existed, bit for bit (docs/training-options.md, docs/data.md,
docs/watch-and-memory.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from b4m.config import opt

LR_SCHEDULERS: tuple[str, ...] = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
"""Learning-rate schedules, by the names of ``diffusers.optimization.get_scheduler`` (:mod:`b4m.train.recipe`)."""
TRAIN_OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw8bit", "prodigy")
"""Optimizers of stage 1 and the trained baselines (:func:`b4m.train.recipe.make_optimizer`): torch's AdamW,
bitsandbytes' ``AdamW8bit``, ``prodigyopt.Prodigy``."""
OPTIMIZER_PACKAGES: dict[str, str] = {"adamw8bit": "bitsandbytes", "prodigy": "prodigyopt"}
"""The package an optimizer needs (``pip install b4m[train]`` installs both)."""
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal", "mode", "sigmoid")
"""FLUX timestep samplings (:class:`b4m.diffusion.objective.Objective`): ``uniform`` is today's (and diffusers'
``none``); ``logit_normal`` and ``mode`` are diffusers' ``compute_density_for_timestep_sampling`` schemes (SD3
paper); ``sigmoid`` is kohya's (``sigmoid(s * randn)``, ``s`` = ``--logit-std``)."""
SAVE_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
"""The dtypes adapter files are written in (tensors cast on write; float32 trains either way)."""


@dataclasses.dataclass(frozen=True)
class SaveOptions:
    """How adapter files are written: every trainer, and the merging methods that write one LoRA."""

    save_precision: str = opt(
        "fp32",
        "dtype of the written adapter files: fp32, fp16 or bf16 (training stays fp32; the header records it)",
        choices=SAVE_PRECISIONS,
    )


@dataclasses.dataclass(frozen=True)
class RecipeOptions(SaveOptions):
    """The everyday training options every trainer shares (issue 28 item 3): stage 1, stage 2 (``b4m fuse``) and
    the trained baselines; ``b4m run b4m`` gives them to all three of its runs. Defaults are today's behaviour
    (the paper's recipe), bit for bit; documented in docs/training-options.md."""

    gradient_accumulation_steps: int = opt(
        1,
        "accumulate the gradients of N batches into one optimizer step (a step is one optimizer step; under "
        "b4m run b4m, in both stages)",
    )
    snr_gamma: float | None = opt(
        None,
        "min-SNR loss weighting min(SNR, gamma)/SNR (v-prediction: /(SNR+1)), Hang et al. 2023; 5 is usual; "
        "not on FLUX (flow matching) (default: off)",
    )
    noise_offset: float = opt(
        0.0,
        "add offset * randn(B, C, 1, 1) to the noise (diffusers' convention; 0.05-0.1 helps very dark or "
        "bright images) (default: 0, off)",
    )
    timestep_sampling: str = opt(
        "uniform",
        "FLUX timestep sampling: uniform, logit_normal (SD3; --logit-mean/--logit-std), mode (--mode-scale) "
        "or sigmoid (kohya: sigmoid(logit_std * randn))",
        choices=TIMESTEP_SAMPLINGS,
    )
    logit_mean: float = opt(0.0, "mean of --timestep-sampling logit_normal")
    logit_std: float = opt(1.0, "std of --timestep-sampling logit_normal, scale of sigmoid")
    mode_scale: float = opt(1.29, "scale of --timestep-sampling mode (SD3 paper)")
    lr_num_cycles: int = opt(1, "hard restarts of --lr-scheduler cosine_with_restarts")
    lr_power: float = opt(1.0, "power of --lr-scheduler polynomial (1: linear decay)")


@dataclasses.dataclass(frozen=True)
class TrainingRecipeOptions(RecipeOptions):
    """:class:`RecipeOptions` plus the optimizer and its schedule, for stage 1 and the trained baselines (under
    ``b4m run b4m``, stage 1's; stage 2 has ``--optimizer`` and the ``--stage2-*`` options)."""

    train_optimizer: str = opt(
        "adamw",
        "optimizer: adamw (torch), adamw8bit (bitsandbytes) or prodigy (prodigyopt: adapts its step, give "
        "--lr 1.0)",
        run_help="optimizer of the training (b4m: of stage 1; stage 2 has --optimizer): adamw, adamw8bit "
        "(bitsandbytes) or prodigy (prodigyopt: adapts its step, give --lr 1.0)",
        choices=TRAIN_OPTIMIZERS,
    )
    lr_scheduler: str = opt(
        "constant",
        "learning-rate schedule (diffusers' get_scheduler): constant, constant_with_warmup, linear, cosine, "
        "cosine_with_restarts, polynomial",
        run_help="learning-rate schedule (b4m: of stage 1; stage 2: --stage2-lr-scheduler): constant, "
        "constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial",
        choices=LR_SCHEDULERS,
    )
    lr_warmup_steps: int = opt(
        0,
        "linear warm-up steps of the learning-rate schedule",
        run_help="linear warm-up steps of --lr-scheduler",
    )
    max_grad_norm: float | None = opt(
        None,
        "clip the gradients' global norm to this (0 or unset: off; diffusers' scripts and the official B4M "
        "code use 1.0)",
        run_help="clip the gradients' global norm (b4m: in stage 1; stage 2: --stage2-max-grad-norm; off by "
        "default, the official code: 1.0)",
    )


REPORT_TO: tuple[str, ...] = ("none", "tensorboard", "wandb")
"""Trackers of ``--report-to`` (through accelerate's trackers, :mod:`b4m.train.trackers`)."""
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8", "fp8", "nf4")
"""``--quantize-base``: the frozen denoiser's weights as they are, int8 or fp8 (optimum-quanto), or NF4
(bitsandbytes); the adapters stay full precision (:mod:`b4m.diffusion.memory`)."""


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    """Watching a run learn (:mod:`b4m.train.previews`, :mod:`b4m.train.trackers`): preview images every N steps
    and a tracker. None of these changes the trained adapter (they are not part of a run's identity)."""

    sample_every: int = opt(
        0, "write preview images and a contact sheet into <out>/samples/step-NNNNN every N steps (0: never)"
    )
    sample_prompts: list[str] = opt(
        [],
        "preview prompts (default per stage: stage-1 content: the content prompt in a few contexts; stage-1 "
        "style: the style on a few contents; stage 2: the combined prompt at 3 content/style strengths; "
        "baselines: their prompts)",
    )
    sample_seed: int = opt(0, "seed of the preview images (fixed, so that successive previews compare)")
    sample_steps: int | None = opt(
        None, "sampling steps of a preview (default: the base model's generation default)"
    )
    report_to: str = opt(
        "none",
        "tracker: none, tensorboard (<out>/tensorboard) or wandb (losses, learning rates, previews)",
        choices=REPORT_TO,
    )


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
    """Fitting the card (:mod:`b4m.diffusion.memory`): the text encoders and the VAE leave the GPU once their
    outputs are cached (always); these trade compute or precision of the frozen base for memory."""

    gradient_checkpointing: bool = opt(
        False, "trade compute for memory: recompute the denoiser's activations in the backward pass"
    )
    quantize_base: str = opt(
        "none",
        "quantize the frozen denoiser's weights: none, int8 or fp8 (optimum-quanto), nf4 (bitsandbytes); "
        "adapters stay full precision",
        choices=QUANTIZE_CHOICES,
    )


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The data group: how the image folders are sampled, weighted and cropped (``docs/data.md``).

    :class:`Stage1Config`, :class:`Stage2Config`, ``b4m run b4m`` and the trained baselines inherit these fields;
    at their defaults a run is what it was before they existed (the same tensors, the same run identity)."""

    repeats: list[str] = opt(
        [],
        "how many times an image counts in its folder's sampling pool (kohya's repeats): GLOB=N for the files "
        "whose name (or path tail, e.g. 'closeups/*') matches, a bare N for the others (default 1), e.g. "
        "--repeats 'face*=3'; each step draws from every folder, so only counts within one folder matter",
    )
    masks: bool = opt(
        True,
        "use NAME.mask.png beside NAME.png: the loss counts only its white part (grey: partly, black: not); "
        "--no-masks ignores them (mask files are never training images)",
        run_help="use NAME.mask.png loss masks beside the images (--no-masks: ignore them)",
    )
    buckets: bool = opt(
        False,
        "aspect-ratio buckets: each image keeps its shape, resized to the nearest of a ladder of sizes of "
        "about resolution^2 pixels (SD/SDXL: multiples of 64); the auxiliary (stage 2: style) images of a "
        "step take the bucket of its target (content) image; SDXL gets each image's size and crop; default: "
        "centre-crop squares",
        run_help="aspect-ratio buckets instead of centre-crop squares (SDXL: with size/crop conditioning)",
    )


DATA_DEFAULTS: dict[str, Any] = {
    f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)  # type: ignore[misc]
    for f in dataclasses.fields(DataOptions)
}
"""The data group's defaults: a run at all of them keeps the identity it had before the group existed
(:func:`b4m.train.identity.run_settings` leaves them out)."""
