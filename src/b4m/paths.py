"""Paths in files people share: relative to the file's own folder, never the user's absolute folders.

An adapter records where its training images were (stage 2 finds them there by default). It stores them
relative to the adapter's folder, so a shared file names no home folder or user, and a moved run folder
(images and run moved together) still finds them. Where the two share no folder but ``/``, only the folder's
name is kept; stage 2 then needs ``--content-images``/``--style-images``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PATH_FIELDS", "portable", "portable_config", "resolve_recorded"]

PATH_FIELDS = ("images", "aux", "out", "content", "style", "content_images", "style_images")
"""Config fields that hold paths (``aux`` a list of them)."""


def portable(path: str | Path, folder: str | Path) -> str:
    """``path`` relative to ``folder`` (both resolved), or its name alone where they share only ``/``."""
    target, base = Path(path).resolve(), Path(folder).resolve()
    if os.path.commonpath([target, base]) == os.path.abspath(os.sep):
        return target.name
    return Path(os.path.relpath(target, base)).as_posix()


def portable_config(config: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """``config`` (a :func:`~b4m.config.to_dict` dict) with its path fields made :func:`portable`."""
    out = dict(config)
    for key in PATH_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and value:
            out[key] = portable(value, folder)
        elif isinstance(value, list):
            out[key] = [portable(v, folder) if isinstance(v, str) else v for v in value]
    return out


def resolve_recorded(value: str | None, folder: str | Path) -> Path | None:
    """A path an adapter in ``folder`` recorded, as a path to open (relative ones are relative to ``folder``)."""
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(folder) / path
