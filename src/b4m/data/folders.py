"""Read a folder of reference images, each with an optional same-stem ``.txt`` caption (UTF-8).

Every format Pillow reads by these suffixes is accepted; hidden files and macOS ``._*`` resource forks are
skipped. Images load as RGB the way people see them: turned upright by their EXIF orientation tag (a phone's
portrait photo is stored sideways with a tag saying so; ``PIL.ImageOps.exif_transpose``), 16-bit and float
grayscale scaled to 8 bits (not clipped to white), transparency composited on a white background
(:data:`BACKGROUND`), the first frame of an animation. An undecodable file, an image over Pillow's decompression-bomb limit or a caption that is not UTF-8
is one error naming the file; a centre crop that drops more than half of an image is one warning.

``NAME.mask.png`` files are loss masks (:mod:`b4m.data.masks`), listed with their image (:attr:`ImageSet.masks`)
and never read as training images; a mask without its image is an error naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from b4m.data.masks import MASK_TAG, check_mask, is_mask_file, mask_path_for
from b4m.errors import B4MError, warn

T = TypeVar("T")

__all__ = [
    "BACKGROUND",
    "IMAGE_SUFFIXES",
    "ImageSet",
    "check_images",
    "check_masks",
    "load_images",
    "open_rgb",
    "read_image_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited on (white, as a viewer shows a cut-out on a page)."""
_CROP_WARN = 0.5
"""Warn when the centre crop keeps less than this fraction of an image's area."""


@dataclass(frozen=True)
class ImageSet:
    """Image files of one folder, sorted by name, their captions (``None`` where no ``.txt`` exists) and their loss
    masks (``NAME.mask.png``; ``None`` where none lies beside the image; empty: none at all)."""

    folder: Path
    paths: tuple[Path, ...]
    captions: tuple[str | None, ...]
    masks: tuple[Path | None, ...] = ()

    def mask_of(self, i: int) -> Path | None:
        """The mask file of image ``i``, or ``None``."""
        return self.masks[i] if self.masks else None

    def prompts(self, prompt: str | None, option: str) -> list[str]:
        """One prompt per image: ``prompt`` for all of them if given, else each image's caption."""
        if prompt:
            return [prompt] * len(self.paths)
        missing = [p.name for p, c in zip(self.paths, self.captions, strict=True) if not c]
        if missing:
            raise B4MError(
                f"{option} {self.folder}: no prompt given and {len(missing)} images have no caption file "
                f"(e.g. {missing[0]} needs {Path(missing[0]).stem}.txt); add captions or pass "
                f"{prompt_option(option)}"
            )
        return [c for c in self.captions if c]


def prompt_option(option: str) -> str:
    """The option that gives the prompt of the image folder named by ``option``."""
    if option in ("--aux-styles", "--aux-contents"):
        return "--aux-prompts"
    if option.endswith("-images"):
        return option.removesuffix("-images") + "-prompt"
    return "--prompt"


def _read_caption(txt: Path) -> str | None:
    try:
        return txt.read_text(encoding="utf-8").strip() or None
    except UnicodeDecodeError:
        raise B4MError(f"{txt}: caption is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise B4MError(f"{txt}: cannot read this caption ({err.strerror})") from None


def read_image_folder(folder: str | Path, option: str = "--images") -> ImageSet:
    """List the images of ``folder``; a missing or empty folder is an error naming ``option``."""
    folder = Path(folder)
    if folder.is_file():
        raise B4MError(f"{option} {folder}: is a file, not a folder; give the folder that holds the images")
    if not folder.is_dir():
        raise B4MError(f"{option} {folder}: no such folder; give a folder of images (png/jpg/webp)")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    paths = tuple(p for p in files if not is_mask_file(p))
    masks = tuple(mask_path_for(p) for p in paths)
    used = set(masks)
    for m in files:
        if is_mask_file(m) and m not in used:
            raise B4MError(
                f"{option} {folder}: {m.name} is a loss mask without its image "
                f"({m.stem[: -len(MASK_TAG)]}.png or .jpg...); rename it or remove it"
            )
    if not paths:
        raise B4MError(f"{option} {folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    captions = []
    for p in paths:
        txt = p.with_suffix(".txt")
        captions.append(_read_caption(txt) if txt.is_file() else None)
    return ImageSet(folder=folder, paths=paths, captions=tuple(captions), masks=masks if any(masks) else ())


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        a = np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        page = Image.new("RGBA", im.size, (*BACKGROUND, 255))
        return Image.alpha_composite(page, im).convert("RGB")
    return im.convert("RGB")


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation tag says (1-8), the tag then removed; as it is without one. A damaged
    EXIF block does not make a readable image unreadable: it is then taken as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # Pillow's EXIF parser raises several types on damaged blocks
        return im


def decode_upright(path: Path, convert: Callable[[Image.Image], T]) -> T:
    """``convert`` of ``path``'s first frame, decoded under Pillow's size guard (its warning raised as an error)
    and turned upright by its EXIF orientation; Pillow's errors pass through for the caller to name."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            return convert(_upright(im))


def open_rgb(path: Path) -> Image.Image:
    """``path`` decoded to RGB (see the module docstring); one :class:`B4MError` naming the file otherwise."""
    try:
        return decode_upright(path, _to_rgb)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise B4MError(
            f"{path}: image too large to decode safely (over Pillow's {Image.MAX_IMAGE_PIXELS} pixel limit); "
            "downscale it"
        ) from None
    except UnidentifiedImageError as err:
        raise B4MError(
            f"{path}: cannot read this image ({err}); convert it to PNG or JPEG, or remove it"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # a known format whose data ends early or is corrupt
        raise B4MError(
            f"{path}: cannot read this image: the file is damaged or cut short ({err}); copy it again from its "
            "source, or remove it"
        ) from None


def load_images(paths: tuple[Path, ...] | list[Path], resolution: int) -> torch.Tensor:
    """Images as a ``(N, 3, resolution, resolution)`` float tensor in ``[0, 1]`` (centre crop, then resize)."""
    out = []
    for p in paths:
        im = open_rgb(p)
        side = min(im.size)
        if side * side < _CROP_WARN * im.width * im.height:
            warn(
                f"{p}: {im.width}x{im.height}; the centre crop keeps {side * side / (im.width * im.height):.0%} "
                "of it; crop it to a square yourself to choose what stays"
            )
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
        if side != resolution:
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def check_images(images: ImageSet, masks: bool = True) -> None:
    """Decode every image of ``images`` once (before any model loads): a bad file fails in a second. With
    ``masks``, every loss mask too: readable, its image's size, not all black (:func:`b4m.data.masks.check_mask`)."""
    for i, p in enumerate(images.paths):
        im = open_rgb(p)
        mask = images.mask_of(i) if masks else None
        if mask is not None:
            check_mask(mask, p, im.size)


def check_masks(images: ImageSet) -> None:
    """:func:`check_images`'s mask checks alone (the images with a mask are decoded for their size)."""
    for i, p in enumerate(images.paths):
        mask = images.mask_of(i)
        if mask is not None:
            check_mask(mask, p, open_rgb(p).size)
