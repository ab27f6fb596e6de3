"""Training sets cached and sampled with the data options (:class:`~b4m.options.DataOptions`): repeats, loss
masks and aspect-ratio buckets. At their defaults (and without mask files) nothing here runs: :func:`b4m.train.
loop.cache_set` and :func:`~b4m.train.loop.sample_batch` keep their original code, tensors and random draws.

**Repeats** (:mod:`b4m.data.repeats`): a set's ``pool`` lists image ``i`` ``count_i`` times and a draw is
``pool[randint(len(pool))]``.

**Masks** (:mod:`b4m.data.masks`): each image's mask goes through the image's crop and is area-averaged onto the
latent grid; an image without one weighs 1 everywhere. A crop that leaves no white of a mask is an error.

**Buckets** (:mod:`b4m.data.buckets`): one batch, one bucket, since a step's samples share one noise tensor
(B4M's multi-correspondence batches: the target and every auxiliary sample see the same noise and timestep).
The first set of a batch leads: its drawn image's own bucket is the step's bucket (so the target images are drawn
exactly as often as without buckets, each in its own shape); every other set (the auxiliary folders in stage 1,
the style images in stage 2 and the two-set baselines) is drawn as usual, its image taken at that bucket: each of
its images is cached once per bucket of the leading set, resized to cover it and centre-cropped. So the
auxiliary images follow the target's shape; the target images are never cropped to another's. Sets sampled
together must be cached together (:func:`cache_sets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from b4m.data.buckets import Placement, bucket_ladder, bucket_step, nearest_bucket, place
from b4m.data.folders import _CROP_WARN, ImageSet, load_images, open_rgb, read_image_folder
from b4m.data.masks import check_mask, latent_mask
from b4m.data.repeats import repeat_counts
from b4m.diffusion.objective import Objective
from b4m.diffusion.pipeline import Conditioning, encode_images, encode_prompts
from b4m.errors import B4MError, warn
from b4m.options import DATA_DEFAULTS
from b4m.prompts import check_prompts
from b4m.train.batches import Batch, CachedSet, step_noise

__all__ = ["BucketView", "cache_all", "cache_sets", "data_options", "sample_sets", "uses_data_options"]

Entry = tuple[str | Path, str | None, str]
"""One set to cache: (folder, prompt or None for the captions, the option naming the folder)."""


def data_options(cfg: Any) -> dict[str, Any]:
    """The data options of a config (their defaults where it has none)."""
    return {k: getattr(cfg, k, v) for k, v in DATA_DEFAULTS.items()}


def uses_data_options(cfg: Any, folders: Sequence[str | Path]) -> bool:
    """Does any data option change how ``folders`` are cached: repeats, buckets, or a mask file in one of them
    (with masks on)?"""
    if cfg is None:
        return False
    opts = data_options(cfg)
    if opts["buckets"] or list(opts["repeats"]) != list(DATA_DEFAULTS["repeats"]):
        return True
    return bool(opts["masks"]) and any(read_image_folder(f).masks for f in folders)


@dataclass
class BucketView:
    """A set's images at one bucket: ``rows[i]`` is image ``i``'s row in ``latents``/``cond``/``masks`` (-1: not
    cached at this bucket, the leading set's images of other buckets)."""

    latents: torch.Tensor
    cond: Conditioning
    rows: torch.Tensor
    masks: torch.Tensor | None = None
    placements: list[Placement] = field(default_factory=list)


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _in_bucket(im: Image.Image, at: Placement) -> torch.Tensor:
    """``im`` resized (bicubic) to cover its bucket and centre-cropped to it."""
    if im.size != at.resized:
        im = im.resize(at.resized, Image.Resampling.BICUBIC)
    bh, bw = at.bucket
    return _to_tensor(im.crop((at.left, at.top, at.left + bw, at.top + bh)))


def _square_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centre crop of :func:`b4m.data.folders.load_images`, in the image's pixels."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def _masks(
    images: ImageSet,
    rows: list[int],
    sizes: list[tuple[int, int]],
    boxes: list[tuple[float, float, float, float]],
    grid: tuple[int, int],
    use: bool,
) -> torch.Tensor | None:
    """Loss weights ``(len(rows), 1, h, w)`` on the latent ``grid`` (h, w); ``None`` when no image has a mask."""
    if not use or not any(images.mask_of(i) for i in rows):
        return None
    out = []
    for i, size, box in zip(rows, sizes, boxes, strict=True):
        path = images.mask_of(i)
        if path is None:
            out.append(torch.ones(1, *grid))
            continue
        cells = latent_mask(check_mask(path, images.paths[i], size), box, (grid[1], grid[0]))
        if not bool(cells.any()):
            raise B4MError(
                f"{path}: nothing white of this mask lies inside the crop {images.paths[i].name} trains with; "
                "widen the mask, or use --buckets / crop the image yourself"
            )
        out.append(cells)
    return torch.stack(out)


def _pool(images: ImageSet, repeats: Sequence[str]) -> torch.Tensor | None:
    counts = repeat_counts(images.paths, repeats)
    if all(c == 1 for c in counts):
        return None
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def _with_time_ids(cond: Conditioning, placements: list[Placement]) -> Conditioning:
    """SDXL: each row's time ids set to its image's original size, crop corner and bucket."""
    if cond.added is None or "time_ids" not in cond.added:
        return cond
    old = cond.added["time_ids"]
    ids = torch.tensor([p.time_ids() for p in placements], dtype=old.dtype, device=old.device)
    return Conditioning(cond.hidden, {**cond.added, "time_ids": ids})


def cache_sets(pipe: Any, entries: Sequence[Entry], resolution: int, cfg: Any) -> list[CachedSet]:
    """The sets of ``entries`` cached with ``cfg``'s data options, in the order a step samples them: with
    ``--buckets`` the first set leads and the others are cached at each of its buckets (module docstring)."""
    opts = data_options(cfg)
    ladder = None
    if opts["buckets"]:
        ladder = bucket_ladder(resolution, bucket_step(pipe, getattr(cfg, "base", None), resolution))
    out: list[CachedSet] = []
    lead: list[tuple[int, int]] = []
    for k, (folder, prompt, option) in enumerate(entries):
        images = read_image_folder(folder, option)
        prompts = images.prompts(prompt, option)
        unique = sorted(set(prompts))
        check_prompts(pipe.tokenizer, unique, option)
        cond = encode_prompts(pipe, unique, resolution).index([unique.index(p) for p in prompts])
        pool = _pool(images, opts["repeats"])
        n = len(images.paths)
        if ladder is None:
            latents = encode_images(pipe, load_images(images.paths, resolution))
            pics = [open_rgb(p).size for p in images.paths] if opts["masks"] and images.masks else []
            masks = _masks(
                images,
                list(range(n)),
                pics,
                [_square_box(*s) for s in pics],
                tuple(latents.shape[-2:]),
                bool(pics),
            )
            out.append(CachedSet(Path(folder), latents, cond, prompts, masks=masks, pool=pool))
            continue
        pics = [open_rgb(p) for p in images.paths]
        own = [nearest_bucket(im.height, im.width, ladder) for im in pics]
        if k == 0:
            lead = sorted(set(own))
        views = {}
        for bucket in lead:
            rows = [i for i in range(n) if k > 0 or own[i] == bucket]
            at = [place(*pics[i].size, bucket) for i in rows]
            if k == 0:
                for i, p in zip(rows, at, strict=True):
                    if p.kept < _CROP_WARN:
                        warn(
                            f"{images.paths[i]}: {p.size[0]}x{p.size[1]} in the {bucket[1]}x{bucket[0]} bucket "
                            f"keeps {p.kept:.0%} of it; crop it yourself to choose what stays"
                        )
            latents = encode_images(
                pipe, torch.stack([_in_bucket(pics[i], p) for i, p in zip(rows, at, strict=True)])
            )
            index = torch.full((n,), -1, dtype=torch.long)
            index[rows] = torch.arange(len(rows))
            masks = _masks(
                images,
                rows,
                [p.size for p in at],
                [p.box for p in at],
                tuple(latents.shape[-2:]),
                bool(opts["masks"]),
            )
            views[bucket] = BucketView(latents, _with_time_ids(cond.index(rows), at), index, masks, at)
        empty = torch.empty(0)
        out.append(
            CachedSet(
                Path(folder), empty, cond, prompts, pool=pool, views=views, bucket_of=own if k == 0 else None
            )
        )
    return out


def cache_all(pipe: Any, entries: Sequence[Entry], resolution: int, cfg: Any) -> list[CachedSet]:
    """The sets a step samples together, in its order: :func:`cache_sets` when a data option is at work, else
    each by :func:`~b4m.train.loop.cache_set`'s original code (the same tensors as before the options)."""
    from b4m.train.loop import cache_set

    if uses_data_options(cfg, [folder for folder, *_ in entries]):
        return cache_sets(pipe, entries, resolution, cfg)
    return [cache_set(pipe, folder, prompt, resolution, option) for folder, prompt, option in entries]


def _draw(s: CachedSet, k: int, gen: torch.Generator, only: tuple[int, int] | None = None) -> torch.Tensor:
    """``k`` image indices of ``s``, uniform over its pool (restricted to the images of bucket ``only``)."""
    pool = s.pool if s.pool is not None else torch.arange(len(s))
    if only is not None:
        assert s.bucket_of is not None
        pool = pool[torch.tensor([s.bucket_of[int(i)] == only for i in pool])]
    return pool[torch.randint(len(pool), (k,), generator=gen)]


def sample_sets(
    sets: list[CachedSet],
    counts: list[int],
    gen: torch.Generator,
    scheduler: Any,
    objective: Objective | None = None,
) -> Batch:
    """:func:`~b4m.train.loop.sample_batch` for sets cached with data options: the same order of draws (indices
    set by set, then one noise, then one timestep), indices from each pool, the masks of the drawn samples, and
    with buckets every sample at the bucket of the leading set's first draw."""
    if sets[0].views is None:
        idx = [_draw(s, k, gen) for s, k in zip(sets, counts, strict=True)]
        parts = [(s.latents, s.cond, s.masks, i) for s, i in zip(sets, idx, strict=True)]
    else:
        first = _draw(sets[0], 1, gen)
        bucket = sets[0].bucket_of[int(first)]  # type: ignore[index]
        idx = [torch.cat([first, _draw(sets[0], counts[0] - 1, gen, only=bucket)])]
        idx += [_draw(s, k, gen) for s, k in zip(sets[1:], counts[1:], strict=True)]
        parts = []
        for s, i in zip(sets, idx, strict=True):
            view = (s.views or {}).get(bucket)
            if view is None:
                raise RuntimeError(
                    f"{s.folder}: not cached at bucket {bucket}; cache the sets of a batch together"
                )
            rows = view.rows[i]
            parts.append((view.latents, view.cond, view.masks, rows))
    latents = torch.cat([lat[i.to(lat.device)] for lat, _, _, i in parts])
    cond = Conditioning.cat([c.index(i.to(lat.device)) for lat, c, _, i in parts])
    mask = None
    if any(m is not None for _, _, m, _ in parts):
        grid = latents.shape[-2:]
        mask = torch.cat(
            [m[i] if m is not None else torch.ones(len(i), 1, *grid) for _, _, m, i in parts]
        ).to(latents.device)
    return Batch(latents, cond, *step_noise(latents, gen, scheduler, objective), mask)
