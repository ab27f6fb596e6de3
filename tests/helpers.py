"""Small helpers the test files share (imported as ``helpers``: pytest puts ``tests/`` on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_folder(path: Path, seed: int, n: int = 2, caption: str | None = None, size: int = 32) -> Path:
    """``n`` random ``size`` x ``size`` PNGs ``00.png``... in ``path`` (made), each with ``caption`` in a
    ``.txt`` beside it when given."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path / f"{i:02d}.png")
        if caption:
            (path / f"{i:02d}.txt").write_text(caption)
    return path


def unet_out(unet, inputs):
    """The UNet's prediction on ``inputs`` (a dict of its keyword arguments), without gradients."""
    with torch.no_grad():
        return unet(**inputs).sample


def with_dense_delta(pipe, deltas):
    """``W0 + dW`` written into the base weights of ``pipe``'s UNet (the independent reference model)."""
    layers = dict(pipe.unet.named_modules())
    with torch.no_grad():
        for name, dw in deltas.items():
            layers[name].weight += dw.to(layers[name].weight.dtype)
    return pipe
