"""The exponential moving average of the base model's weights during the diffusion phase.

The decay schedule is diffusers' default warm-up, ``min(max_decay, (1 + step) / (10 + step))`` after optimiser
step ``step`` (1, 2, ...): :class:`diffusers.training_utils.EMAModel` with ``update_after_step=-1`` computes the
same decay at every step (``tests/test_base_model.py`` checks it). The update itself is kept here rather than
``EMAModel.step`` because the two differ in the last bit: ``EMAModel`` computes ``s - (1 - d) * (s - p)``, this
module ``torch.lerp(s, p, 1 - d)``, and where ``1 - d >= 0.5`` (the first eight steps) ``lerp`` rounds its other
form, ``p - (p - s) * d``. The shipped base model was trained with this one, so a rerun or a resumed run
reproduces it bit for bit only with it.
"""

from __future__ import annotations

import torch

__all__ = ["ema_decay", "ema_update"]


def ema_decay(step: int, max_decay: float) -> float:
    """The decay after optimiser step ``step`` (counted from 1): a warm-up towards ``max_decay``."""
    return min(max_decay, (1 + step) / (10 + step))


def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * params``, in place."""
    with torch.no_grad():
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
