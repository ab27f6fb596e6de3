"""Aspect-ratio buckets (``--buckets``): train each image in its own shape instead of a centre-cropped square.

**The ladder.** For ``--resolution R`` and a step ``s`` (:func:`bucket_step`: 64 on SD/SDXL at their resolutions,
the patch x VAE factor on FLUX, the model's own multiple on the built-in and tiny models), one bucket per common
aspect ratio (:data:`RATIOS`, landscape and portrait): the short side ``h = round(R / sqrt(a) / s) * s``, the
long side ``round(h * a / s) * s``, so about ``R^2`` pixels, and a 2:1 bucket is exactly 2:1 wherever ``h`` is a
multiple of ``s``. The ladder is computed here, not taken from ``diffusers.training_utils`` (whose
``generate_aspect_ratio_buckets`` appeared only in recent releases and rounds both sides independently): a run's
buckets must not depend on the installed diffusers.

**An image in its bucket.** The bucket whose aspect ratio is nearest the image's (in log ratio; ties: the earlier
one in the ladder), the image resized (bicubic) to cover it and centre-cropped to it (:func:`place`); an image
whose ratio is the bucket's is only resized, with no crop. SDXL's added time ids carry what SDXL trained with:
the image's original size, the crop's top-left corner (in the resized image, as diffusers' SDXL training script
records it) and the bucket (:meth:`Placement.time_ids`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["RATIOS", "Placement", "bucket_ladder", "bucket_step", "nearest_bucket", "place"]

RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 9), (2, 1), (3, 1))
"""Landscape aspect ratios (width : height) of the ladder; each also gives its portrait transpose."""

SD_STEP = 64
"""What SD/SDXL bucket sides are multiples of (every trainer's convention; the UNets need 8 x 8 or 8 x 4)."""
SD_STEP_FROM = 256
"""Below this resolution (tiny test models) SD-family buckets use the model's own multiple instead."""


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def bucket_ladder(resolution: int, step: int) -> tuple[tuple[int, int], ...]:
    """The buckets ``(height, width)`` for ``resolution`` with sides multiples of ``step``, no duplicates."""
    out: list[tuple[int, int]] = []
    for w, h in RATIOS:
        a = w / h
        short = max(step, _round(resolution / math.sqrt(a) / step) * step)
        long = max(step, _round(short * a / step) * step)
        for bucket in ((short, long), (long, short)):
            if bucket not in out:
                out.append(bucket)
    return tuple(out)


def nearest_bucket(height: int, width: int, ladder: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket of ``ladder`` whose aspect ratio is nearest ``width / height`` (log distance; first on ties)."""
    ratio = math.log(width / height)
    return min(ladder, key=lambda b: abs(ratio - math.log(b[1] / b[0])))


def bucket_step(pipe: Any, base: Any, resolution: int) -> int:
    """What bucket sides are multiples of: the model's own multiple (VAE x UNet downsampling; FLUX: VAE x 2x2
    patches, :func:`b4m.checks.pipeline_multiple`), raised to a multiple of 64 on SD/SDXL at ``resolution``
    >= 256 (not on the built-in world model or a b4m world base, nor on FLUX)."""
    from b4m.checks import pipeline_multiple
    from b4m.options import preset_key

    k = pipeline_multiple(pipe)
    is_flux = getattr(pipe, "transformer", None) is not None  # as pipeline_multiple tells FLUX from the UNets
    if preset_key(base) == "builtin" or is_flux or resolution < SD_STEP_FROM:
        return k
    return math.lcm(k, SD_STEP)


@dataclass(frozen=True)
class Placement:
    """Where an image of ``size`` (width, height, upright) lands in ``bucket`` (height, width): resized to
    ``resized`` (width, height), then cropped at ``(left, top)`` to the bucket."""

    size: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    left: int
    top: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The crop in the original image's pixels (``left, top, right, bottom``): what a mask keeps."""
        sx, sy = self.size[0] / self.resized[0], self.size[1] / self.resized[1]
        bh, bw = self.bucket
        return (self.left * sx, self.top * sy, (self.left + bw) * sx, (self.top + bh) * sy)

    @property
    def kept(self) -> float:
        """The fraction of the image the crop keeps."""
        return self.bucket[0] * self.bucket[1] / (self.resized[0] * self.resized[1])

    def time_ids(self) -> list[int]:
        """SDXL's added conditioning: original (height, width), crop (top, left), target (height, width)."""
        return [self.size[1], self.size[0], self.top, self.left, *self.bucket]


def place(width: int, height: int, bucket: tuple[int, int]) -> Placement:
    """An image of ``width x height`` resized to cover ``bucket`` and centre-cropped to it."""
    bh, bw = bucket
    scale = max(bw / width, bh / height)
    rw, rh = max(bw, _round(width * scale)), max(bh, _round(height * scale))
    return Placement((width, height), bucket, (rw, rh), (rw - bw) // 2, (rh - bh) // 2)
