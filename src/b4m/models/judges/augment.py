"""Image perturbations: the evaluation perturbation that mimics a generator's jitter (:func:`perturb`) and the
training augmentation (:func:`augment`), both on ``(B, 3, H, W)`` tensors in ``[0, 1]``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment", "gaussian_blur", "perturb"]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``images`` (B, C, H, W) with replicate padding; none for ``sigma <= 0.05``."""
    if sigma <= 0.05:
        return images
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    c = images.shape[1]
    x = F.pad(images, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def _shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    if dx == 0 and dy == 0:
        return images
    h, w = images.shape[-2:]
    p = max(abs(dx), abs(dy))
    x = F.pad(images, (p, p, p, p), mode="replicate")
    return x[..., p - dy : p - dy + h, p - dx : p - dx + w]


def perturb(
    images: torch.Tensor,
    generator: torch.Generator,
    blur: float = 0.7,
    noise: float = 0.05,
    max_shift: int = 2,
) -> torch.Tensor:
    """The evaluation perturbation that mimics generator jitter: Gaussian blur (``sigma=blur``), a random shift
    of 1..``max_shift`` px in x and/or y (replicate padding) per image, then Gaussian noise (``std=noise``)."""
    out = gaussian_blur(images, blur)
    shifted = []
    for i in range(len(out)):
        while True:
            dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
            if dx or dy:
                break
        shifted.append(_shift(out[i : i + 1], dx, dy))
    out = torch.cat(shifted)
    out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(0.0, 1.0)


def _shift_batch(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Shift each image by its own (dx, dy) pixels, |d| <= pad, with replicate padding."""
    b, _, h, w = images.shape
    x = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    rows = (torch.arange(h)[None, :] + pad - dy[:, None]).clamp(0, h + 2 * pad - 1)
    cols = (torch.arange(w)[None, :] + pad - dx[:, None]).clamp(0, w + 2 * pad - 1)
    out = x[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def augment(images: torch.Tensor, gen: torch.Generator, color: torch.Tensor) -> torch.Tensor:
    """Training augmentation, per image: shift (|d| <= 2 px, p=0.75), Gaussian blur (sigma 0.4, 0.7 or 1.0,
    p=0.75), noise (std up to 0.08, p=0.7); where ``color`` (bool, (B,)) is set, brightness and contrast jitter
    of +-12 %."""
    b = len(images)
    move = torch.rand(b, generator=gen) < 0.75
    dx = torch.randint(-2, 3, (b,), generator=gen) * move
    dy = torch.randint(-2, 3, (b,), generator=gen) * move
    x = _shift_batch(images, dx, dy)
    which = torch.randint(0, 4, (b,), generator=gen)  # 0: sharp; 1, 2, 3: sigma 0.4, 0.7, 1.0
    for k, sigma in ((1, 0.4), (2, 0.7), (3, 1.0)):
        sel = which == k
        if sel.any():
            x[sel] = gaussian_blur(x[sel], sigma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 0.24 - 0.12) * color.view(-1, 1, 1, 1)
    bright = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 0.24 - 0.12) * color.view(-1, 1, 1, 1)
    x = (x - mean) * contrast + mean * bright
    std = torch.rand(b, 1, 1, 1, generator=gen) * 0.08 * (torch.rand(b, 1, 1, 1, generator=gen) < 0.7)
    x = x + std * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)
