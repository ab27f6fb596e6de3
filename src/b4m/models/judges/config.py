"""The judges' training recipe (:class:`JudgesTrainConfig`) and where the shipped judges live.

Kept apart from the networks (:mod:`b4m.models.judges.network`), their training and evaluation so that
``b4m judges train --help`` builds its flags from this one source of defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from b4m.config import opt

__all__ = ["CONFIG_NAME", "DEFAULT_DIR", "INSTANCE_SHARE", "WEIGHTS_NAME", "JudgesTrainConfig"]

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "assets" / "judges"
"""The shipped judges (``judges.safetensors`` + ``judges.json``)."""
WEIGHTS_NAME = "judges.safetensors"
CONFIG_NAME = "judges.json"
"""The judges' config, concept names and measured metrics, beside the weights."""

INSTANCE_SHARE = 0.5
"""Default share of judge training scenes whose content (and, independently, style) is drawn from the classes
with instances, so that the trait heads see enough of them."""


@dataclass(frozen=True)
class JudgesTrainConfig:
    """How :func:`b4m.models.judges.train.train_judges` trains the world judges (defaults: the shipped recipe)."""

    steps: int = opt(6000, "training steps")
    seed: int = opt(
        0, "seed of the training renders, the weights and the augmentation (evaluation: seed + 1)"
    )
    batch_size: int = opt(128, "images per step")
    lr: float = opt(3e-3, "peak AdamW learning rate of the one-cycle schedule")
    threads: int = opt(1, "torch threads; 1 is fastest when other jobs share the cores")
    pool_size: int = opt(24576, "pre-rendered training images (rendering is the bottleneck on CPU)")
    refresh: int = opt(32, "pool images replaced by fresh renders every step")
    n_eval: int = opt(30, "evaluation images per content and per style")
    instance_share: float = opt(
        INSTANCE_SHARE, "share of training contents drawn from the classes with instances"
    )
    style_share: float | None = opt(
        None, "share of training styles drawn from the families with instances (default: --instance-share)"
    )
    init_from: Path | None = opt(None, "judges folder to continue from (default: random weights)")
    balance_classes: bool = opt(
        True,
        "weight the class losses by the inverse of each class's sampling probability; --no-balance-classes: "
        "plain class losses (as the judges before v7)",
    )
    checkpoint_every: int = opt(
        500,
        "steps between checkpoints in <out>/checkpoints (0: none); a stopped run continues from the newest when "
        "the same command runs again, to the weights an uninterrupted run reaches",
    )
