"""Pieces shared by the training stages: device set-up, cached training sets, batch sampling, logging."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from b4m.data.folders import load_images, read_image_folder
from b4m.diffusion.pipeline import Conditioning, encode_images, encode_prompts
from b4m.errors import B4MError
from b4m.prompts import check_prompts

__all__ = [
    "RESUME_HINT",
    "CachedSet",
    "TrainLog",
    "cache_set",
    "check_finite_loss",
    "check_finite_params",
    "make_accelerator",
    "sample_batch",
    "trigger_words_of",
]

RESUME_HINT = "rerun with --resume"
"""What a full disk's message tells a training run to do (its last checkpoint is kept)."""


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator (DDP under ``accelerate launch``); autocast only where a GPU is present.

    Without a GPU, ``cpu=True`` lets processes started by ``accelerate launch``/torchrun form a gloo DDP group
    (accelerate only picks the CPU backend when told it runs on the CPU).
    """
    on_gpu = torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision if on_gpu else "no", cpu=not on_gpu)


@dataclass
class CachedSet:
    """One training set with its VAE latents and prompt embeddings computed once (the encoders are frozen)."""

    folder: Path
    latents: torch.Tensor
    cond: Conditioning
    prompts: list[str]

    def __len__(self) -> int:
        return self.latents.shape[0]


def cache_set(pipe: Any, folder: str | Path, prompt: str | None, resolution: int, option: str) -> CachedSet:
    images = read_image_folder(folder, option)
    prompts = images.prompts(prompt, option)
    check_prompts(pipe.tokenizer, sorted(set(prompts)), option)
    latents = encode_images(pipe, load_images(images.paths, resolution))
    unique = sorted(set(prompts))
    enc = encode_prompts(pipe, unique, resolution)
    cond = enc.index([unique.index(p) for p in prompts])
    return CachedSet(Path(folder), latents, cond, prompts)


def sample_batch(
    sets: list[CachedSet], counts: list[int], gen: torch.Generator, scheduler: Any
) -> tuple[torch.Tensor, Conditioning, torch.Tensor, torch.Tensor]:
    """``counts[i]`` random samples from ``sets[i]``, concatenated; one noise and one timestep for all of them
    (the paper's MCP uses the same noise and timestep for target and auxiliary samples of a step)."""
    idx = [torch.randint(len(s), (k,), generator=gen) for s, k in zip(sets, counts, strict=True)]
    latents = torch.cat([s.latents[i.to(s.latents.device)] for s, i in zip(sets, idx, strict=True)])
    cond = Conditioning.cat([s.cond.index(i.to(s.latents.device)) for s, i in zip(sets, idx, strict=True)])
    noise = torch.randn((1, *latents.shape[1:]), generator=gen).to(latents.device).expand_as(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=gen)
    timesteps = t.to(latents.device).expand(latents.shape[0])
    return latents, cond, noise.contiguous(), timesteps


def trigger_words_of(prompt: str, tokenizer: Any) -> list[str]:
    """Words of ``prompt`` that the tokenizer splits into several pieces (rare tokens such as 'w@z'), and the
    built-in world's identifiers ('snq', 'wzk': single tokens of its tokenizer that base training never used).

    Ordinary words (:data:`b4m.prompts.ORDINARY_WORDS`) never count, and each word is listed once."""
    from b4m.prompts import ORDINARY_WORDS
    from b4m.world.concepts import IDENTIFIERS

    words = []
    for word in prompt.replace(",", " ").split():
        if word.lower() in ORDINARY_WORDS or word in words:
            continue
        if word.lower() in IDENTIFIERS or len(tokenizer.tokenize(word)) > 1:
            words.append(word)
    return words


def _last_checkpoint_note(ckpt_dir: Path) -> str:
    from b4m.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is None:
        return "no checkpoint was written yet and nothing was saved"
    return f"kept the last good checkpoint {ckpt} (the adapter was not saved)"


def check_finite_loss(loss: torch.Tensor, step: int, stage: str, ckpt_dir: Path) -> None:
    """Stop the run at a NaN/infinite loss, saying so, before it can reach the weights or a checkpoint."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise B4MError(
            f"{stage}: the loss is not finite at step {step}; stopped and {_last_checkpoint_note(ckpt_dir)}; "
            "lower --lr (or check the images) and rerun with --overwrite"
        )


def check_finite_params(params: dict[str, torch.Tensor], step: int, stage: str, ckpt_dir: Path) -> None:
    """Stop before a checkpoint or the adapter would hold NaN/infinite weights."""
    for name, p in params.items():
        if not bool(torch.isfinite(p.detach()).all()):
            raise B4MError(
                f"{stage}: weight {name} is not finite after step {step}; stopped and "
                f"{_last_checkpoint_note(ckpt_dir)}; lower --lr and rerun with --overwrite"
            )


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: the log records ``null`` for them."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class TrainLog:
    """JSON-lines training log (``train_log.jsonl``), appended so a resumed run continues it."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record["time_s"] = round(time.perf_counter() - self.t0, 3)
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, allow_nan=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def maybe(condition: bool, ctx: Any) -> Any:
    return ctx if condition else contextlib.nullcontext()
