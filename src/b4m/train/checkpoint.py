"""Training checkpoints: adapter + optimizer state + RNG state + step, as safetensors + JSON (no pickle).

A run killed at any point resumes from its last checkpoint to the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from b4m.adapters.codec import atomic_save_safetensors
from b4m.errors import B4MError

__all__ = ["latest_checkpoint", "load_checkpoint", "recorded_threads", "save_checkpoint"]


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in info["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    step: int,
    params: dict[str, torch.Tensor],
    optimizer: Any,
    generator: torch.Generator,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/step-XXXXXX`` atomically (a temp folder renamed into place) and prune older ones."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=folder))
    try:
        opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
        tensors = {f"param.{k}": v for k, v in params.items()} | opt_tensors
        tensors["rng"] = generator.get_state()
        atomic_save_safetensors(tensors, tmp / "state.safetensors", {"format": "pt"})
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_info, **(extra or {})}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(folder.glob("step-*"))[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = sorted(Path(folder).glob("step-*"))
    return found[-1] if found else None


def recorded_threads(folder: str | Path) -> int | None:
    """The torch thread count the run checkpointed in ``folder`` was started with (None if not recorded), so
    that a resumed run computes what the uninterrupted one would (:mod:`b4m.threads`)."""
    ckpt = latest_checkpoint(folder)
    if ckpt is None:
        return None
    try:
        value = json.loads((ckpt / "state.json").read_text()).get("threads")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def load_checkpoint(
    path: str | Path, params: dict[str, torch.Tensor], optimizer: Any, generator: torch.Generator
) -> dict[str, Any]:
    """Restore parameters (in place), optimizer and RNG from ``path``; returns the JSON info (with ``step``)."""
    path = Path(path)
    try:
        info = json.loads((path / "state.json").read_text())
        with safe_open(str(path / "state.safetensors"), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError) as err:
        raise B4MError(
            f"{path}: damaged checkpoint ({err}); delete it to resume from the one before"
        ) from None
    missing = [k for k in params if f"param.{k}" not in tensors]
    if missing:
        raise B4MError(f"{path}: checkpoint does not match this run ({len(missing)} parameters missing)")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    optimizer.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
    generator.set_state(tensors["rng"])
    return info
