"""What makes a training run *this* run: its settings and a fingerprint of its data.

Checkpoints and finished runs record both; a rerun compares them with the run being started and refuses another run's
checkpoint, naming what differs (another ``--lr``, ``--steps``, ``--rank``, other images or captions).
Folder and file paths are not part of it (the same images or LoRAs moved elsewhere are the same data);
their bytes are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from b4m.errors import B4MError
from b4m.options import NEUTRAL_DEFAULTS

__all__ = ["check_same_run", "data_fingerprint", "run_settings"]

# Fields that say where a run lives or how it is driven, not what it computes.
_NOT_IDENTITY = frozenset(
    {
        "out",
        "resume",
        "overwrite",
        "checkpoint_every",
        "images",
        "aux",
        "content",
        "style",
        "content_images",
        "style_images",
        "content_lora",
        "style_lora",
        "gradient_checkpointing",
        # watching a run (previews, trackers) never changes what it computes
        "sample_every",
        "sample_prompts",
        "sample_seed",
        "sample_steps",
        "report_to",
    }
)


def run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a (preset-resolved) config dict that determine the result (an option added later is left
    out at the default that reproduces earlier runs: :data:`b4m.options.NEUTRAL_DEFAULTS`)."""
    return {
        k: v
        for k, v in sorted(config.items())
        if k not in _NOT_IDENTITY and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
    }


def data_fingerprint(sets: Iterable[tuple[Iterable[Path], Iterable[str]]]) -> str:
    """SHA-256 over every training set, in order: each image's bytes, the bytes of its loss mask where one lies
    beside it (``NAME.mask.png``, :func:`b4m.data.masks.mask_path_for`: a changed mask is other data) and the
    prompt it trains with."""
    from b4m.data.masks import mask_path_for

    h = hashlib.sha256()
    for k, (paths, prompts) in enumerate(sets):
        h.update(f"set {k}\n".encode())
        for path, prompt in zip(paths, prompts, strict=True):
            h.update(hashlib.sha256(Path(path).read_bytes()).digest())
            mask = mask_path_for(Path(path))
            if mask is not None:
                h.update(b"mask " + hashlib.sha256(mask.read_bytes()).digest())
            h.update(prompt.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def _flag(key: str) -> str:
    if key == "base_weights":
        return "the built-in base model's weights"
    return "-n" if key == "n" else "--" + key.replace("_", "-")


def differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What differs between two run identities (``{"settings": ..., "data": ...}``), as options to show."""
    diffs = []
    was, now = recorded.get("settings"), wanted.get("settings") or {}
    if isinstance(was, dict):
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                diffs.append(f"{_flag(key)} {now.get(key)!r} (recorded: {was.get(key)!r})")
    elif was is None and not recorded:
        diffs.append("nothing recorded")
    if recorded.get("data") not in (None, wanted.get("data")):
        diffs.append("the images, captions or source files (their bytes or prompts changed)")
    return diffs


def check_same_run(
    info: Mapping[str, Any], settings: Mapping[str, Any], data: str, ckpt: Path, asked: str = "--out"
) -> None:
    """Refuse to continue from checkpoint ``ckpt`` (its JSON ``info``) a run with other settings or data; the
    message starts with ``asked``, the folder that holds it."""
    diffs = differences(info, {"settings": settings, "data": data})
    if diffs:
        raise B4MError(
            f"{asked}: {ckpt} belongs to another run; differs: {', '.join(diffs)}; rerun with the options "
            "and data it was made with, or pass --overwrite to start over (only files b4m made are replaced)"
        )
