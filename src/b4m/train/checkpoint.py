"""Training checkpoints: adapter + optimizer state + RNG state + step, as safetensors + JSON (no pickle).

A run killed at any point resumes from its last checkpoint to the same result as an uninterrupted run. Only the
newest checkpoint is kept. Each records what makes the run this run (its settings and a fingerprint of its
data, :mod:`b4m.train.identity`), so ``--resume`` refuses another run's checkpoint and says what differs; a
damaged checkpoint, or a full disk while writing one, is one line, and the checkpoint before it is kept.
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

from b4m.adapters.codec import atomic_save_safetensors, clean_temp_files, file_mode
from b4m.errors import B4MError, DiskFullError, disk_full

__all__ = [
    "claim_output",
    "clean_stale",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "read_checkpoint_params",
    "recorded_threads",
    "save_checkpoint",
]

_RESUME = "rerun with --resume"
_START_OVER = "it is the only checkpoint kept: pass --overwrite to start the run over"


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
    """Write ``folder/step-XXXXXX`` atomically (a temp folder renamed into place) and prune older ones.

    A full disk raises :class:`~b4m.errors.DiskFullError` and keeps the previous checkpoint."""
    folder = Path(folder)
    final = folder / f"step-{step:06d}"
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=folder))
        os.chmod(tmp, file_mode(folder=True))
        opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
        tensors = {f"param.{k}": v for k, v in params.items()} | opt_tensors
        tensors["rng"] = generator.get_state()
        atomic_save_safetensors(tensors, tmp / "state.safetensors", {"format": "pt"}, hint=_RESUME)
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_info, **(extra or {})}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except DiskFullError:
        shutil.rmtree(tmp, ignore_errors=True)  # type: ignore[arg-type]
        raise DiskFullError(f"no space left writing {final}; free space and {_RESUME}") from None
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise disk_full(err, final, _RESUME) or B4MError(f"cannot write {final} ({err.strerror})") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(folder.glob("step-*"))[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = sorted(p for p in Path(folder).glob("step-*") if p.is_dir())
    return found[-1] if found else None


def clean_stale(folder: str | Path) -> None:
    """Remove what a killed checkpoint write left in ``folder`` (``.ckpt-*`` temp folders, temp files)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for tmp in folder.glob(".ckpt-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    clean_temp_files(folder)


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The JSON part of checkpoint ``path`` (step, settings, data fingerprint), checked before any model loads:
    a missing, truncated or damaged checkpoint is one :class:`B4MError`."""
    path = Path(path)
    try:
        info = json.loads((path / "state.json").read_text(encoding="utf-8"))
        with safe_open(str(path / "state.safetensors"), framework="pt") as f:
            keys = set(f.keys())
    except Exception as err:  # OSError, JSON and safetensors errors: all mean a damaged checkpoint
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise B4MError(f"{path}: damaged checkpoint ({first}); {_START_OVER}") from None
    if not isinstance(info, dict) or not isinstance(info.get("step"), int) or "rng" not in keys:
        raise B4MError(f"{path}: damaged checkpoint (incomplete state); {_START_OVER}")
    return info


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


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path / "state.safetensors"), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a truncated tensor section reads as several error types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise B4MError(f"{path}: damaged checkpoint ({first}); {_START_OVER}") from None


def read_checkpoint_params(path: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Parameters ``names`` saved in checkpoint ``path`` (what an earlier loop of the run finished with)."""
    path = Path(path)
    tensors = _read_tensors(path)
    _check_has(path, tensors, names)
    return {k: tensors[f"param.{k}"] for k in names}


def _check_has(path: Path, tensors: dict[str, torch.Tensor], names: list[str]) -> None:
    missing = [k for k in names if f"param.{k}" not in tensors]
    if missing:
        raise B4MError(
            f"{path}: checkpoint does not match this run ({len(missing)} parameters missing); "
            "rerun with the options it was made with, or pass --overwrite to start over"
        )


def load_checkpoint(
    path: str | Path, params: dict[str, torch.Tensor], optimizer: Any, generator: torch.Generator
) -> dict[str, Any]:
    """Restore parameters (in place), optimizer and RNG from ``path``; returns the JSON info (with ``step``)."""
    path = Path(path)
    info = read_checkpoint_info(path)
    tensors = _read_tensors(path)
    _check_has(path, tensors, list(params))
    bad = [k for k, p in params.items() if tensors[f"param.{k}"].shape != p.shape]
    if bad:
        raise B4MError(
            f"{path}: checkpoint does not match this run ({bad[0]} has shape "
            f"{tuple(tensors[f'param.{bad[0]}'].shape)}, this run {tuple(params[bad[0]].shape)}: another --rank?); "
            "rerun with the options it was made with, or pass --overwrite to start over"
        )
    try:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[f"param.{k}"])
        optimizer.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
        generator.set_state(tensors["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise B4MError(f"{path}: damaged checkpoint ({type(err).__name__}: {err}); {_START_OVER}") from None
    return info


def claim_output(out: Path, resume: bool, overwrite: bool, what: str = "a finished adapter") -> bool:
    """Refuse to clobber earlier work in a training stage's ``out`` (``what`` names its adapter in the
    message); ``True`` if ``out`` already holds the finished result of a resumed run."""
    adapter, ckpts = out / "adapter.safetensors", latest_checkpoint(out / "checkpoints")
    if resume:
        return ckpts is None and adapter.is_file()
    if overwrite:
        return False
    if adapter.is_file():
        raise B4MError(f"--out {out}: holds {what}; choose another --out, or pass --overwrite")
    if ckpts is not None:
        raise B4MError(f"--out {out}: holds checkpoints of an unfinished run; pass --resume or --overwrite")
    return False
