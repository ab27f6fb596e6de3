"""``b4m`` (the default): B4M, Break-for-Make (Xu et al., ACM TOG 2025), through the method contract.

A thin wrapper over the two stages, which stay where they are: stage 1 (:func:`b4m.train.stage1.train_stage1`, PLP
Eq. 4-11 with MCP Eq. 12) trains a content adapter (``B``) with auxiliary styles and a style adapter (``D``) with
auxiliary contents; stage 2 (:func:`b4m.train.stage2.train_stage2`) fuses ``[A; B_content] x [C, D_style]`` and
fine-tunes it with the Riemannian preconditioner (Eq. 13-14). Files: ``<out>/content/adapter.safetensors``,
``<out>/style/adapter.safetensors`` and the fused ``<out>/adapter.safetensors``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from b4m.adapters.codec import load_lora
from b4m.checks import check_out_folder
from b4m.config import to_dict
from b4m.methods.base import Fitted, Method, register
from b4m.methods.cache import cache_root, held, image_sets, session_policy, sub_fit_folder
from b4m.methods.catalogue import CATALOGUE, B4MOfficialOptions, B4MOptions
from b4m.methods.common import check_folders
from b4m.options import Stage1Config, Stage2Config, stage_options
from b4m.owned import Folder, claim
from b4m.train.session import ADAPTER, CHECKPOINTS, LOG

__all__ = ["B4MOfficialOptions", "B4MOptions", "fit_b4m", "stage1_folder", "stage_configs"]


def stage_configs(cfg: B4MOptions, out: Path) -> tuple[Stage1Config, Stage1Config, Stage2Config]:
    """The stage configs a :class:`B4MOptions` stands for (``None`` fields stay ``None``: B4M's presets fill them).

    Every option is passed on by name (:func:`~b4m.config.stage_options`): the stage-1 group to both stage-1
    runs, the stage-2 group to stage 2, the shared ones (base, seed, resolution, mixed precision...) to every
    stage that has them; only the folders and the per-role inputs are set here."""
    shared = stage_options(cfg, 1, skip=("out",))
    content = Stage1Config(
        images=cfg.content_images,
        prompt=cfg.content_prompt,
        aux=list(cfg.aux_styles) if cfg.mcp else [],
        aux_prompts=list(cfg.aux_style_prompts) if cfg.mcp else [],
        out=out / "content",
        **shared,
    )
    style = Stage1Config(
        images=cfg.style_images,
        prompt=cfg.style_prompt,
        aux=list(cfg.aux_contents) if cfg.mcp else [],
        aux_prompts=list(cfg.aux_content_prompts) if cfg.mcp else [],
        out=out / "style",
        **shared,
    )
    stage2 = Stage2Config(
        content=out / "content" / ADAPTER,
        style=out / "style" / ADAPTER,
        out=out,
        **stage_options(cfg, 2, skip=("out",)),
    )
    return content, style, stage2


def stage1_folder(s1: Stage1Config, role: str) -> Path:
    """Where a stage-1 run lives inside a cached fit (:mod:`b4m.methods.cache`): keyed by its own config and data
    only (its target images with their prompt, its auxiliary folders), never by the other concept."""
    aux_prompts = list(s1.aux_prompts) or [None] * len(s1.aux)
    sets = image_sets([s1.images], [s1.prompt], "--images")
    sets += image_sets(s1.aux, aux_prompts, "--aux") if s1.mcp else []
    return sub_fit_folder(f"b4m-stage1-{role}", to_dict(s1) | {"role": role}, sets)


def fit_b4m(cfg: B4MOptions, pipe: Any = None, progress: bool = True, method_id: str = "b4m") -> Fitted:
    """B4M's three runs. Inside a :func:`~b4m.methods.cache.caching` block each stage-1 run is a per-concept
    sub-fit in the cache (reused by every fit with the same stage-1 config and data, whatever the other concept)
    and every run opens with ``policy="refresh"``; else all three live in ``--out``. ``Fitted.parts``: the two
    stage-1 adapters."""
    from b4m.train.stage1 import train_stage1
    from b4m.train.stage2 import train_stage2

    out = Path(cfg.out or Path("runs") / method_id)
    check_out_folder(out)
    claim(out, (ADAPTER, CHECKPOINTS, LOG, "content", "style"), overwrite=cfg.overwrite)
    check_folders(cfg, ["content", "style"])
    content, style, stage2 = stage_configs(cfg, out)
    policy = session_policy(cfg.overwrite)

    def fresh() -> Any:  # every stage injects its own adapter: give each a clean copy of a caller's pipeline
        return None if pipe is None else copy.deepcopy(pipe)

    folder = Folder(out)
    if not folder.known:
        folder.save()  # the stages' folders are then recorded as b4m's sub-folders
    parts = {}
    for role, s1 in (("content", content), ("style", style)):
        s1_policy = policy
        if cache_root() is not None:  # a per-concept sub-fit in the cache: reused whenever identical
            s1, s1_policy = dataclasses.replace(s1, out=stage1_folder(s1, role), overwrite=False), "refresh"
        with held(Path(s1.out)):  # another bench shard may be fitting the same concept: wait, then reuse it
            parts[role] = train_stage1(s1, role, pipe=fresh(), progress=progress, policy=s1_policy)
    stage2 = dataclasses.replace(stage2, content=parts["content"], style=parts["style"])
    path = train_stage2(stage2, pipe=fresh(), progress=progress, policy=policy)
    lora = load_lora(path)
    return Fitted(path, merged_delta=lambda: {n: u @ v for n, (u, v) in lora.factors.items()}, parts=parts)


register(Method.of(CATALOGUE["b4m"], fit_b4m))


register(
    Method.of(
        CATALOGUE["b4m-official"],
        lambda cfg, pipe=None, progress=True: fit_b4m(cfg, pipe, progress, method_id="b4m-official"),
    )
)
