"""Training checkpoints: adapter + optimizer state + RNG state + step, as safetensors + JSON (no pickle).

A run killed at any point resumes from its last checkpoint to the same result as an uninterrupted run. Only the
newest checkpoint is kept. Each records what makes the run this run (its settings and a fingerprint of its
data, :mod:`b4m.train.identity`), so a rerun refuses another run's checkpoint and says what differs; a
damaged checkpoint, or a full disk while writing one, is one line, and the checkpoint before it is kept. A
checkpoint folder is b4m's own (:mod:`b4m.owned`): only the checkpoints b4m recorded there are read or pruned.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from b4m.errors import B4MError, DiskFullError
from b4m.io import clean_temp_files, fs_error, make_temp_dir, save_safetensors, write_json
from b4m.owned import Folder

__all__ = [
    "RESUME_HINT",
    "clean_stale",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "read_checkpoint_params",
    "recorded_threads",
    "save_checkpoint",
]

RESUME_HINT = "rerun the same command to continue"
"""What a stopped run's messages say: the same command continues it (:mod:`b4m.train.session`)."""
_START_OVER = "it is the only checkpoint kept: pass --overwrite to start the run over"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as safetensors tensors (``optim.<param>.<key>``) and JSON (the rest). Nested dicts
    (bitsandbytes keeps its 8-bit states in one) join their keys with ``/``; their tensors are copied."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                put(f"{path}/{key}", inner)
        elif torch.is_tensor(value):  # bitsandbytes shares its quantisation maps: safetensors wants copies
            tensors[f"optim.{path}"] = value.clone() if "/" in path else value
        else:
            scalars[path] = value

    for idx, entry in state["state"].items():
        for key, value in entry.items():
            put(f"{idx}.{key}", value)
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}

    def put(path: str, value: Any) -> None:
        idx, name = path.split(".", 1)
        *outer, last = name.split("/")
        entry = state.setdefault(int(idx), {})
        for key in outer:
            entry = entry.setdefault(key, {})
        entry[last] = value

    for key, value in tensors.items():
        if key.startswith("optim."):
            put(key.removeprefix("optim."), value)
    for key, value in info["scalars"].items():
        put(key, value)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    step: int,
    params: dict[str, torch.Tensor],
    optimizer: Any,
    generator: torch.Generator,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/step-XXXXXX`` atomically (a temp folder renamed into place), record it in ``folder``'s
    manifest (:mod:`b4m.owned`) and prune b4m's older checkpoints there (nothing else in ``folder`` is touched).

    A full disk raises :class:`~b4m.errors.DiskFullError` and keeps the previous checkpoint."""
    folder = Path(folder)
    final = folder / f"step-{step:06d}"
    tmp = None
    try:
        owner = _checkpoints_folder(folder)
        tmp = make_temp_dir(folder, ".ckpt-", RESUME_HINT)
        mine = Folder(tmp)
        mine.save()  # a killed write leaves a folder that says it is b4m's
        opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
        tensors = {f"param.{k}": v for k, v in params.items()} | opt_tensors
        tensors["rng"] = generator.get_state()
        save_safetensors(tensors, tmp / "state.safetensors", {"format": "pt"}, hint=RESUME_HINT)
        write_json(
            tmp / "state.json", {"step": step, "optimizer": opt_info, **(extra or {})}, RESUME_HINT, None
        )
        mine.record("state.safetensors", "state.json")
        if owner.remove(final.name):
            raise B4MError(f"{final}: holds files b4m did not make; move them away and {RESUME_HINT}")
        os.replace(tmp, final)
        tmp = None
        owner.record(final.name)
    except DiskFullError:  # named by the checkpoint, not by its temporary folder
        raise DiskFullError(f"no space left writing {final}; free space and {RESUME_HINT}") from None
    except OSError as err:
        raise fs_error(err, final, RESUME_HINT) from None  # type: ignore[misc]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _owned_steps(owner)[:-1]:
        owner.remove(old.name)
    return final


def _checkpoints_folder(folder: Path) -> Folder:
    """``folder``'s :class:`~b4m.owned.Folder`, made (and recorded in its parent's manifest, if the parent is
    b4m's) on the first checkpoint."""
    owner = Folder(folder)
    if not owner.known:
        parent = Folder(folder.parent)
        owner = parent.child(folder.name) if parent.known else owner
        owner.save()
    return owner


def _owned_steps(owner: Folder) -> list[Path]:
    return sorted(owner.path / n for n in owner.entries if n.startswith("step-") and owner.owns(n))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint b4m wrote in ``folder`` (folders it did not make are never read)."""
    found = _owned_steps(Folder(folder))
    return found[-1] if found else None


def clean_stale(folder: str | Path) -> None:
    """Remove what a killed checkpoint write left in ``folder`` (b4m's ``.ckpt-*`` temp folders, temp files)."""
    folder = Path(folder)
    if not Folder(folder).known:
        return
    for tmp in folder.glob(".ckpt-*"):
        if tmp.is_dir() and Folder(tmp).known:
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
