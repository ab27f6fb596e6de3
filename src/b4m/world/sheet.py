"""Contact sheets and image grids for looking at the world and at generated images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from b4m.world.render import Scene, render

__all__ = ["contact_sheet", "image_grid"]

_PAD = 2
_LABEL_H = 12


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) tensors converted with .numpy()
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def image_grid(images: Sequence, ncols: int, labels: Sequence[str] | None = None) -> Image.Image:
    """Tile ``images`` (PIL images, ``(H, W, 3)`` uint8 arrays or float arrays in [0, 1]) into a grid with
    ``ncols`` columns, each cell optionally captioned below with PIL's default font."""
    if len(images) == 0:
        raise ValueError("image_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols={ncols} must be >= 1")
    if labels is not None and len(labels) != len(images):
        raise ValueError(
            f"got {len(labels)} labels for {len(images)} images; pass one label per image or None"
        )
    tiles = [_to_pil(im) for im in images]
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    label_h = _LABEL_H if labels is not None else 0
    nrows = (len(tiles) + ncols - 1) // ncols
    sheet = Image.new(
        "RGB", (ncols * (w + _PAD) + _PAD, nrows * (h + label_h + _PAD) + _PAD), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, tile in enumerate(tiles):
        x = _PAD + (k % ncols) * (w + _PAD)
        y = _PAD + (k // ncols) * (h + label_h + _PAD)
        sheet.paste(tile, (x, y))
        if labels is not None:
            draw.text((x, y + h), str(labels[k])[: max(2, w // 6)], fill=(0, 0, 0), font=font)
    return sheet


def contact_sheet(
    contents: Sequence[str], styles: Sequence[str], resolution: int = 32, scale: int = 2, seed: int = 0
) -> Image.Image:
    """A grid with one row per content and one column per style (default attributes), each render upscaled by
    ``scale`` (nearest neighbour), with style names on top and content names on the left. Names may be
    personal instances (``"teddy#3"``, ``"papercut#5"``)."""
    cell = resolution * scale
    font = ImageFont.load_default()
    left, top = 64, 14
    sheet = Image.new(
        "RGB", (left + len(styles) * (cell + _PAD), top + len(contents) * (cell + _PAD)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for j, style in enumerate(styles):
        draw.text((left + j * (cell + _PAD), 1), style[: max(3, cell // 6)], fill=(0, 0, 0), font=font)
    for i, content in enumerate(contents):
        y = top + i * (cell + _PAD)
        draw.text((2, y + cell // 2 - 5), content, fill=(0, 0, 0), font=font)
        for j, style in enumerate(styles):
            img = Image.fromarray(render(Scene.of(content, style), seed + i, resolution))
            sheet.paste(img.resize((cell, cell), Image.NEAREST), (left + j * (cell + _PAD), y))
    return sheet
