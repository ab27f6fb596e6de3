"""LoRA files: safetensors in the layouts diffusers, peft, kohya/ComfyUI and A1111 read. Never pickle.

A b4m file is an ordinary rank-r LoRA in peft spelling (``unet.<module>.lora_A.weight`` = down ``V``,
``unet.<module>.lora_B.weight`` = up ``U``), with two header entries:

- ``lora_adapter_metadata``: the peft ``LoraConfig`` (keys prefixed ``unet.``), exactly as diffusers'
  ``save_lora_weights(unet_lora_adapter_metadata=...)`` writes it, so ``load_lora_weights`` restores alpha;
- ``b4m``: JSON with the method, rank, rho, construction, basis seed and id, targets, trigger words, base model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from b4m.errors import B4MError

__all__ = ["FORMAT_VERSION", "LoraFile", "atomic_save_safetensors", "load_lora", "save_kohya", "save_lora"]

FORMAT_VERSION = 1
_META_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


@dataclass
class LoraFile:
    """A LoRA read from disk: ``factors[module] = (U, V)`` (up ``m x r``, down ``r x n``) and b4m metadata."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)
    lora_alpha: float | None = None
    path: Path | None = None

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values()))[0].shape[1]


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str]
) -> Path:
    """Write ``tensors`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _lora_config_dict(rank: int, alpha: float, modules: list[str]) -> dict[str, Any]:
    from b4m.adapters.inject import lora_config

    config = lora_config(rank, modules, lora_alpha=alpha).to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def save_lora(
    path: str | Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    meta: Mapping[str, Any] | None = None,
    prefix: str = "unet",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save ``{module: (U, V)}`` as a diffusers/peft LoRA file (scale 1: ``lora_alpha = r``)."""
    if not factors:
        raise B4MError(f"refusing to write {path}: the adapter has no layers")
    rank = next(iter(factors.values()))[0].shape[1]
    tensors: dict[str, torch.Tensor] = {}
    for module, (u, v) in factors.items():
        tensors[f"{prefix}.{module}.lora_A.weight"] = v.to(dtype)
        tensors[f"{prefix}.{module}.lora_B.weight"] = u.to(dtype)
    config = {f"{prefix}.{k}": v for k, v in _lora_config_dict(rank, rank, sorted(factors)).items()}
    b4m_meta = {"format_version": FORMAT_VERSION, "rank": rank, **(meta or {})}
    header = {
        "format": "pt",
        _META_KEY: json.dumps(config, sort_keys=True),
        "b4m": json.dumps(b4m_meta, sort_keys=True),
    }
    return atomic_save_safetensors(tensors, path, header)


def _open(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise B4MError(f"{path}: no such file; give the path of a .safetensors LoRA file")
    if path.suffix != ".safetensors":
        raise B4MError(f"{path}: b4m reads LoRA weights from .safetensors files only (never pickles)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises several error types for damaged files
        raise B4MError(f"{path}: not a readable safetensors file ({err})") from None


# (down suffix, up suffix) spellings accepted on load.
_SPELLINGS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"))


def load_lora(path: str | Path, prefix: str = "unet") -> LoraFile:
    """Read a LoRA file in peft or diffusers spelling (``unet.`` prefix, or the doubled ``unet.unet.`` prefix of
    the official B4M checkpoints). Raises :class:`B4MError` naming the file on anything unexpected."""
    path = Path(path)
    tensors, header = _open(path)
    factors: dict[str, list[torch.Tensor | None]] = {}
    unknown = []
    for key, tensor in tensors.items():
        for down_sfx, up_sfx in _SPELLINGS:
            if key.endswith(down_sfx) or key.endswith(up_sfx):
                is_down = key.endswith(down_sfx)
                module = key[: -len(down_sfx if is_down else up_sfx)]
                break
        else:
            unknown.append(key)
            continue
        while module.startswith(prefix + "."):
            module = module[len(prefix) + 1 :]
        factors.setdefault(module, [None, None])[0 if is_down else 1] = tensor
    if unknown or not factors:
        raise B4MError(
            f"{path}: not a {prefix} LoRA in diffusers/peft spelling "
            f"({len(unknown)} unrecognised keys, e.g. {unknown[:2]})"
        )
    incomplete = [m for m, (v, u) in factors.items() if v is None or u is None]
    if incomplete:
        raise B4MError(f"{path}: layers without both up and down weights, e.g. {incomplete[:2]}")
    meta = json.loads(header.get("b4m", "{}"))
    alpha = None
    if _META_KEY in header:
        config = json.loads(header[_META_KEY])
        alpha = config.get(f"{prefix}.lora_alpha")
    return LoraFile(
        factors={m: (u.float(), v.float()) for m, (v, u) in factors.items()},
        meta=meta,
        lora_alpha=alpha,
        path=path,
    )


def save_kohya(
    path: str | Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    base_model_version: str = "sdxl_base_v1-0",
    meta: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Save as kohya/ComfyUI/A1111 keys: ``lora_unet_<module path, '.' -> '_'>.lora_down/.lora_up/.alpha``.

    ``alpha = r`` (scale 1). ``ss_base_model_version`` must start with ``sdxl_`` for A1111 to list an SDXL LoRA.
    """
    tensors: dict[str, torch.Tensor] = {}
    rank = next(iter(factors.values()))[0].shape[1]
    for module, (u, v) in factors.items():
        key = "lora_unet_" + module.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = v.to(dtype)
        tensors[f"{key}.lora_up.weight"] = u.to(dtype)
        tensors[f"{key}.alpha"] = torch.tensor(float(rank), dtype=dtype)
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": base_model_version,
        "b4m": json.dumps({"format_version": FORMAT_VERSION, **(meta or {})}, sort_keys=True),
    }
    return atomic_save_safetensors(tensors, path, header)
