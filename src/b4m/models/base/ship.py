"""Writing a base pipeline folder: diffusers' ``save_pretrained`` (safetensors), the tokenizer's classic files
and ``b4m_base.json`` (the recommended sampling settings and the run's record), swapped into place whole.
Copying a trained folder into the package as the built-in model is ``b4m base ship``
(:func:`b4m.harness.base.ship_base`)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from diffusers import StableDiffusionPipeline

from b4m.diffusion.builtin_base import BASE_INFO, INFO_FILE, BaseModelInfo
from b4m.io import file_mode, fs_error, write_json
from b4m.models.base.tokenizer import save_tokenizer

__all__ = ["FORMAT_VERSION", "save_pipeline"]

FORMAT_VERSION = 1
"""Of ``b4m_base.json``."""


def save_pipeline(
    pipe: StableDiffusionPipeline,
    path: str | Path,
    info: BaseModelInfo = BASE_INFO,
    extra: dict[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` (safetensors) plus ``b4m_base.json``, written to a temporary folder then renamed.

    Every file gets the mode a plain ``open()`` gives under the umask (``save_pretrained`` writes its weights
    0600); a file-system fault is one :class:`~b4m.errors.B4MError` (:func:`b4m.io.fs_error`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        pipe.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(pipe.tokenizer, tmp / "tokenizer")
        meta = {"format_version": FORMAT_VERSION, **dataclasses.asdict(info), **(extra or {})}
        write_json(tmp / INFO_FILE, meta)
        for f in tmp.rglob("*"):
            os.chmod(f, file_mode(folder=f.is_dir()))
        if path.exists():
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except OSError as err:
        raise fs_error(err, path) from None  # type: ignore[misc]
    return path
