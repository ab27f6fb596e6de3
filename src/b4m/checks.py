"""Checks of options and output paths that run before any model loads: a bad value costs a second, not a
model load, and nothing on disk changes. Each problem is one phrase naming the option and what to do; the
callers join them into one :class:`~b4m.errors.B4MError`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from b4m.errors import B4MError

__all__ = [
    "MAX_RANK",
    "check_base",
    "check_out_file",
    "check_out_folder",
    "check_rank",
    "check_resolution",
    "finite",
    "integer_at_least",
    "pipeline_multiple",
    "raise_problems",
    "resolution_multiple",
]

MAX_RANK = 1024
"""The largest LoRA rank b4m trains: SDXL's attention layers are 640-1280 wide, so a higher rank is no longer
low-rank, and rank 100000 would ask for tens of GB before the first step."""


def raise_problems(problems: list[str]) -> None:
    """One :class:`B4MError` with every problem found, if any."""
    if problems:
        raise B4MError("; ".join(problems))


def finite(value: float | None, option: str, problems: list[str], *, positive: bool = False) -> None:
    """``value`` is a finite number (``> 0`` with ``positive``, else ``>= 0``); ``None`` passes (unset)."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        want = "a finite number > 0" if positive else "a finite number >= 0"
        problems.append(f"{option} {value}: give {want}")


def integer_at_least(
    value: int | None, option: str, minimum: int, problems: list[str], why: str = ""
) -> None:
    """``value >= minimum`` (``None`` passes: unset)."""
    if value is not None and value < minimum:
        problems.append(f"{option} {value}: give {minimum} or more{why}")


def check_rank(rank: int | None, rho: float, problems: list[str]) -> None:
    """``2 <= rank <= MAX_RANK`` (PLP splits the rank space into a frozen and a learnable part) and
    ``0 < rho < 1``. The rank is checked against the targeted layers' widths once the model is there
    (:func:`b4m.adapters.inject.inject_plp`)."""
    if rank is not None and not 2 <= rank <= MAX_RANK:
        problems.append(f"--rank {rank}: give a rank from 2 to {MAX_RANK} (b4m's default is 16-64)")
    if not (math.isfinite(rho) and 0.0 < rho < 1.0):
        problems.append(f"--rho {rho}: give the frozen fraction strictly between 0 and 1 (default 0.5)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolution_multiple(base: str | Path | None) -> int:
    """What image sizes must be a multiple of: the VAE's downsampling times the UNet's (FLUX: times its 2x2
    packing; read from a local pipeline folder's configs without loading it; 64 where they cannot be read,
    which suits SD, SDXL and FLUX)."""
    if base is None or str(base) == "builtin":
        folder = Path(__file__).resolve().parent / "assets" / "base"
    else:
        folder = Path(str(base))
    vae = _read_json(folder / "vae" / "config.json").get("block_out_channels")
    transformer = _read_json(folder / "transformer" / "config.json")
    if isinstance(vae, list) and vae and "patch_size" in transformer:  # FLUX: VAE, then 2x2 packing
        return 2 ** (len(vae) - 1) * 2 * int(transformer["patch_size"])
    unet = _read_json(folder / "unet" / "config.json").get("down_block_types")
    if not isinstance(vae, list) or not isinstance(unet, list) or not vae or not unet:
        return 64
    return 2 ** (len(vae) - 1) * 2 ** (len(unet) - 1)


def pipeline_multiple(pipe: Any) -> int:
    """:func:`resolution_multiple` of a loaded pipeline."""
    if getattr(pipe, "transformer", None) is not None:
        return int(pipe.vae_scale_factor) * 2 * int(pipe.transformer.config.patch_size)
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.down_block_types) - 1)


def check_resolution(
    resolution: int | None, base: str | Path | None, option: str, problems: list[str], pipe: Any = None
) -> None:
    """A positive multiple of :func:`resolution_multiple` (of ``pipe`` where one is given; ``None`` passes:
    the base model's default)."""
    if resolution is None:
        return
    k = pipeline_multiple(pipe) if hasattr(pipe, "vae_scale_factor") else resolution_multiple(base)
    if resolution < k or resolution % k:
        problems.append(
            f"{option} {resolution}: give a positive multiple of {k} (this base model's VAE and "
            f"denoiser downsample by {k}), e.g. {max(k, round(resolution / k) * k)}"
        )


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, option: str, shown: Path) -> None:
    """``folder`` (or the folder that will hold it) can be created and written into."""
    if folder.exists() and not folder.is_dir():
        raise B4MError(f"{option} {shown}: {folder} is a file, not a folder; choose another {option}")
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise B4MError(f"{option} {shown}: {existing} is a file, not a folder; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise B4MError(
            f"{option} {shown}: cannot write into {existing} (read-only or no permission); "
            f"choose another {option} or fix its permissions"
        )


def check_out_folder(out: str | Path, option: str = "--out") -> None:
    """``out`` is a folder, or can be made one, and b4m may write into it. Creates nothing."""
    out = Path(out)
    _check_writable_folder(out, option, out)
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise B4MError(
            f"{option} {out}: cannot write into it (read-only or no permission); choose another {option}"
        )


def check_out_file(path: str | Path, option: str = "--out") -> None:
    """``path`` can be written as a file: not a folder, and its folder can be made and written into."""
    path = Path(path)
    if path.is_dir():
        raise B4MError(f"{option} {path}: is a folder; give the path of a .safetensors file")
    if path.suffix != ".safetensors":
        raise B4MError(f"{option} {path}: give a file name ending in .safetensors")
    _check_writable_folder(path.parent, option, path)


def check_base(base: str | Path | None, problems: list[str]) -> None:
    """A ``--base`` that reads as a local path (absolute, ``./``, ``~``, more than one ``/``) must be a folder:
    it is not tried as a hub id, whose form is ``org/name``."""
    if base is None or str(base) == "builtin":
        return
    text = str(base)
    local = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or Path(text).exists()
    path = Path(text).expanduser()
    if local and path.is_file():
        problems.append(
            f"--base {base}: is a file; give a pipeline folder (with model_index.json) or a hub id"
        )
    elif local and not path.exists():
        problems.append(
            f"--base {base}: no such folder; give a local pipeline folder (with model_index.json) or a hub id "
            "such as stabilityai/stable-diffusion-xl-base-1.0"
        )
