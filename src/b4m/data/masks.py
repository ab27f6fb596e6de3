"""Loss masks: ``NAME.mask.png`` beside ``NAME.png`` says where the loss counts (white: fully, grey: partly,
black: not at all).

A mask is read as grayscale the way its image is read (upright by its EXIF tag, 16-bit scaled to 8 bits);
transparent pixels count as black. It must have its image's size and not be all black: both are checked before
any model loads (:func:`check_mask`). For training it goes through its image's crop and is then averaged over the
area of each latent cell (:func:`latent_mask`): the loss of a sample is ``sum(w * err) / sum(w)`` over the latent
grid (:func:`b4m.diffusion.pipeline.per_sample_loss`). Mask files are never training images
(:func:`b4m.data.folders.read_image_folder` skips them).

Only numpy and Pillow here (torch is imported where a tensor is made), so run identities can look masks up
cheaply (:func:`mask_path_for`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from b4m.errors import B4MError

__all__ = ["MASK_TAG", "check_mask", "is_mask_file", "latent_mask", "mask_path_for", "open_mask"]

MASK_TAG = ".mask"
"""What ends the stem of a mask file: ``photo.mask.png`` is the mask of ``photo.png`` (or ``photo.jpg``...)."""


def _suffixes() -> tuple[str, ...]:
    from b4m.data.folders import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def is_mask_file(path: Path) -> bool:
    """``NAME.mask.<image suffix>``: a loss mask, never a training image."""
    return path.suffix.lower() in _suffixes() and path.stem.lower().endswith(MASK_TAG)


def mask_path_for(image: Path) -> Path | None:
    """The mask file beside ``image`` (``NAME.mask.png`` first, then any other image suffix), or ``None``."""
    if image.suffix.lower() not in _suffixes() or is_mask_file(image):
        return None
    for suffix in (".png", *(s for s in _suffixes() if s != ".png")):
        for variant in (suffix, suffix.upper()):
            candidate = image.with_name(image.stem + MASK_TAG + variant)
            if candidate.is_file():
                return candidate
    return None


def _gray(im: Image.Image) -> np.ndarray:
    """``im`` as float32 grayscale in ``[0, 1]``: transparency on black, 16-bit and float scaled like images."""
    from b4m.data.folders import _to_rgb

    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if "A" in im.getbands() or im.mode in ("RGBa", "La"):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
    gray = _to_rgb(im).convert("L") if im.mode != "L" else im
    return np.asarray(gray, dtype=np.float32) / 255.0


def open_mask(path: Path) -> np.ndarray:
    """``path`` as a ``(H, W)`` float32 array in ``[0, 1]``, upright; one :class:`B4MError` naming it otherwise."""
    from b4m.data.folders import decode_upright

    try:
        return decode_upright(path, _gray)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise B4MError(f"{path}: mask too large to decode safely; downscale it with its image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise B4MError(f"{path}: cannot read this mask ({err}); save it as a grayscale PNG") from None


def check_mask(mask: Path, image: Path, size: tuple[int, int]) -> np.ndarray:
    """The mask of ``image`` (upright ``size`` = (width, height)), checked: the same size, not all black."""
    values = open_mask(mask)
    height, width = values.shape
    if (width, height) != tuple(size):
        raise B4MError(
            f"{mask}: {width}x{height}, but its image {image.name} is {size[0]}x{size[1]}; a mask must have its "
            "image's size (resize it with the image, or delete it)"
        )
    if not values.any():
        raise B4MError(
            f"{mask}: all black, so nothing of {image.name} would train; paint white what should count, or "
            "delete the mask"
        )
    return values


def latent_mask(values: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> Any:
    """The loss weights of one latent grid, ``(1, h, w)`` float32 tensor for ``size = (w, h)``: the part of the
    mask ``values`` inside ``box`` (``(left, top, right, bottom)`` in mask pixels: the image's crop), averaged
    over the area each latent cell covers (Pillow's box filter on float pixels is the exact area average)."""
    import torch

    im = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    cells = np.asarray(im.resize(size, Image.Resampling.BOX, box=box), dtype=np.float32)
    return torch.from_numpy(cells.copy()).unsqueeze(0)
