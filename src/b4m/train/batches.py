"""The training data of a run as the step loop sees it: each image folder cached once (VAE latents, prompt
embeddings: :class:`CachedSet`), and one step's batch drawn from them (:func:`sample_batch`). Re-exported by
:mod:`b4m.train.loop`, where the trainers import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from b4m.data.folders import load_images, read_image_folder
from b4m.diffusion.objective import Objective
from b4m.diffusion.pipeline import Conditioning, encode_images, encode_prompts
from b4m.prompts import check_prompts

__all__ = ["Batch", "CachedSet", "cache_set", "sample_batch", "step_noise", "trigger_words_of"]


@dataclass
class CachedSet:
    """One training set with its VAE latents and prompt embeddings computed once (the encoders are frozen).

    The data options (:class:`~b4m.options.DataOptions`, :mod:`b4m.train.datasets`) add: ``masks``, each image's
    loss weights on the latent grid (``None``: 1 everywhere); ``pool``, the image indices to draw from, each
    listed as often as ``--repeats`` counts it (``None``: each image once); ``views``, with ``--buckets``, the
    images cached per bucket (``latents`` is then empty) and ``bucket_of``, each image's own bucket."""

    folder: Path
    latents: torch.Tensor
    cond: Conditioning
    prompts: list[str]
    masks: torch.Tensor | None = None
    pool: torch.Tensor | None = None
    views: dict[tuple[int, int], Any] | None = None
    bucket_of: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def plain(self) -> bool:
        """No data option at work: sampled exactly as before the options existed."""
        return self.masks is None and self.pool is None and self.views is None


class Batch(tuple):
    """``(latents, cond, noise, timesteps)`` of one step, unpacked like a tuple, and ``mask``: the samples' loss
    weights ``(B, 1, h, w)`` when a set has loss masks (else ``None``), for
    :func:`~b4m.diffusion.pipeline.per_sample_loss`."""

    mask: torch.Tensor | None

    def __new__(
        cls,
        latents: torch.Tensor,
        cond: Conditioning,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> Batch:
        batch = super().__new__(cls, (latents, cond, noise, timesteps))
        batch.mask = mask
        return batch


def cache_set(
    pipe: Any, folder: str | Path, prompt: str | None, resolution: int, option: str, data: Any = None
) -> CachedSet:
    """One image folder cached; ``data``: a config with the data options (:class:`~b4m.options.DataOptions`) and
    ``base``, used when any is off its default (:func:`b4m.train.datasets.cache_sets`, which also caches several
    sets that share buckets)."""
    from b4m.train.datasets import cache_sets, uses_data_options

    if uses_data_options(data, [folder]):
        return cache_sets(pipe, [(folder, prompt, option)], resolution, data)[0]
    images = read_image_folder(folder, option)
    prompts = images.prompts(prompt, option)
    check_prompts(pipe.tokenizer, sorted(set(prompts)), option)
    latents = encode_images(pipe, load_images(images.paths, resolution))
    unique = sorted(set(prompts))
    enc = encode_prompts(pipe, unique, resolution)
    cond = enc.index([unique.index(p) for p in prompts])
    return CachedSet(Path(folder), latents, cond, prompts)


def sample_batch(
    sets: list[CachedSet],
    counts: list[int],
    gen: torch.Generator,
    scheduler: Any,
    objective: Objective | None = None,
) -> Batch:
    """``counts[i]`` random samples from ``sets[i]``, concatenated; one noise and one timestep for all of them
    (the paper's MCP uses the same noise and timestep for target and auxiliary samples of a step). ``objective``:
    the run's timestep sampling and noise offset (:class:`~b4m.diffusion.objective.Objective`; default: uniform
    timesteps, no offset). Sets cached with data options are drawn by :func:`b4m.train.datasets.sample_sets`
    (repeats, masks, one bucket a step)."""
    if not all(s.plain for s in sets):
        from b4m.train.datasets import sample_sets

        return sample_sets(sets, counts, gen, scheduler, objective)
    idx = [torch.randint(len(s), (k,), generator=gen) for s, k in zip(sets, counts, strict=True)]
    latents = torch.cat([s.latents[i.to(s.latents.device)] for s, i in zip(sets, idx, strict=True)])
    cond = Conditioning.cat([s.cond.index(i.to(s.latents.device)) for s, i in zip(sets, idx, strict=True)])
    return Batch(latents, cond, *step_noise(latents, gen, scheduler, objective))


def step_noise(
    latents: torch.Tensor, gen: torch.Generator, scheduler: Any, objective: Objective | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noise, timesteps)`` of one step, shared by every sample of ``latents`` (MCP): one noise draw, then one
    timestep from ``objective`` (default: uniform), then its noise offset (none by default: no extra draw)."""
    objective = objective or Objective()
    noise = torch.randn((1, *latents.shape[1:]), generator=gen)
    t = objective.timestep(scheduler, gen)
    noise = objective.offset_noise(noise, gen).to(latents.device).expand_as(latents)
    return noise.contiguous(), t.to(latents.device).expand(latents.shape[0])


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
