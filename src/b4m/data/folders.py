"""Read a folder of reference images, each with an optional same-stem ``.txt`` caption."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from b4m.errors import B4MError

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "load_images", "read_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageSet:
    """Image files of one folder, sorted by name, and their captions (``None`` where no ``.txt`` exists)."""

    folder: Path
    paths: tuple[Path, ...]
    captions: tuple[str | None, ...]

    def prompts(self, prompt: str | None, option: str) -> list[str]:
        """One prompt per image: ``prompt`` for all of them if given, else each image's caption."""
        if prompt:
            return [prompt] * len(self.paths)
        missing = [p.name for p, c in zip(self.paths, self.captions, strict=True) if not c]
        if missing:
            raise B4MError(
                f"{option} {self.folder}: no prompt given and {len(missing)} images have no caption file "
                f"(e.g. {missing[0]} needs {Path(missing[0]).stem}.txt); add captions or pass a prompt"
            )
        return [c for c in self.captions if c]


def read_image_folder(folder: str | Path, option: str = "--images") -> ImageSet:
    """List the images of ``folder``; a missing or empty folder is an error naming ``option``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise B4MError(f"{option} {folder}: no such folder; give a folder of images (png/jpg/webp)")
    paths = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not paths:
        raise B4MError(f"{option} {folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    captions = []
    for p in paths:
        txt = p.with_suffix(".txt")
        captions.append(txt.read_text().strip() or None if txt.is_file() else None)
    return ImageSet(folder=folder, paths=paths, captions=tuple(captions))


def load_images(paths: tuple[Path, ...] | list[Path], resolution: int) -> torch.Tensor:
    """Images as a ``(N, 3, resolution, resolution)`` float tensor in ``[0, 1]`` (centre crop, then resize)."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise B4MError(f"{p}: cannot read this image ({err}); remove it or convert it to PNG") from None
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
        if side != resolution:
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)
