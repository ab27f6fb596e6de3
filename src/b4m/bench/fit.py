"""Fitting a bench run through the method contract: every fit (a run's method, its source adapters, B4M's
per-concept stage 1) is a cached sub-fit (:func:`b4m.methods.cache.fit_cached`) under ``<out>/cache``, shared by
every arm, method and pair with the same settings and data; an option marked :data:`~b4m.bench.catalogue.TUNED`
(the ``rp-sgd`` arm's stage-2 rate) is tuned on the pair first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from b4m.bench.catalogue import PART, PART_STYLE_SCALE, ROWS, SGD_LR_GRID, TUNED
from b4m.bench.context import Context, image_options, relative
from b4m.bench.runs import BASE, BENCH_VERSION, Run, slug, spec_hash
from b4m.errors import DivergedError
from b4m.io import write_text
from b4m.owned import Folder

CACHE = "cache"
"""Where the cached sub-fits live under the bench's ``--out``."""


def _inputs(ctx: Context, run: Run, needs: tuple[str, ...]) -> dict[str, Any]:
    """The pair's data for every input a method needs (images with prompts, auxiliary folders)."""
    data = ctx.data(run.pair)
    wanted = {part for need in needs for part in need.split("|")}
    options: dict[str, Any] = {}
    for concept in ("content", "style"):
        if f"{concept}_images" in wanted:
            options |= image_options(data, concept)
    if "aux_sets" in wanted:
        options |= {k: [str(x) for x in data[k]] for k in ("aux_styles", "aux_contents")}
    return options


def _base(ctx: Context) -> dict[str, Any]:
    """The options every fit of a ``--pairs-file`` bench adds: its base model, ``--resolution`` and ``--rank``."""
    if ctx.plan.source is None:
        return {}
    given = {k: getattr(ctx.plan.cfg, k) for k in ("resolution", "rank")}
    return {"base": ctx.plan.base, **{k: v for k, v in given.items() if v is not None}}


def fit_run(ctx: Context, run: Run, out: Path) -> Path | None:
    """The adapter of ``run`` (``None``: the base model), fitted through the registry: its sources first (each
    the source method on one concept, cached per concept), then the method itself, cached."""
    from b4m.methods import fit_cached, fit_method, get_method
    from b4m.methods.cache import caching

    if run.method == BASE:
        return None
    method = get_method(run.method)
    cache = ctx.root / CACHE
    train = {k: v for k, v in run.spec["train"].items()
             if k not in ("sources_steps", "sgd_lr_grid", PART, PART_STYLE_SCALE)}  # fmt: skip
    seed = ctx.plan.cfg.seed if run.train_seed is None else run.train_seed
    options: dict[str, Any] = {**_inputs(ctx, run, method.needs), "seed": seed, **_base(ctx)}
    for src in method.sources:
        source = get_method(src.method)
        own = {source.concept_option: src.concept} if source.concept_option else {}
        fitted = fit_cached(src.method, cache, pipe=ctx.fresh_pipe(), **own, seed=seed,
                            steps=run.spec["train"]["sources_steps"], **_inputs(ctx, run, source.needs),
                            **_base(ctx))  # fmt: skip
        options[src.option] = fitted.path
    options |= {k: v for k, v in train.items() if v is not None}
    tuned = [k for k, v in options.items() if v == TUNED]
    for key in tuned:  # the rp-sgd arm's stage-2 rate: the grid value with the lowest training loss
        spec = {k: relative(v, ctx.root) for k, v in options.items() if k != key}
        shared = ctx.root / "tuning" / slug(run.pair)

        def fit_at(lr: float, folder: Path, key: str = key) -> None:
            with caching(cache):  # stage 1 from the cache; each candidate's own fit in ``folder``
                fit_method(run.method, pipe=ctx.fresh_pipe(), progress=False,
                           **{**options, key: lr, "out": folder, "overwrite": True})  # fmt: skip

        tuning = tune_sgd_lr(fit_at, [run.method, key, spec], shared)
        ctx.notes[run.key] = {"sgd_lr": tuning["chosen"], "sgd_lr_mean_loss": tuning["mean_loss"]}
        options[key] = tuning["chosen"]
    fitted = fit_cached(run.method, cache, pipe=ctx.fresh_pipe(), **options)
    part = run.spec["train"].get(PART)
    if part is None:
        return fitted.path
    scale = run.spec["train"].get(PART_STYLE_SCALE)
    if part in fitted.parts and scale is None:
        return fitted.parts[part]
    Folder(out.parent).child(out.name)  # in the run's folder, recorded: the derived adapter is written there
    if part == ROWS:
        return write_row_fusion(
            fitted.parts["content"], fitted.parts["style"], out / "row_fusion.safetensors"
        )
    from b4m.adapters.knobs import export_scaled

    return export_scaled(fitted.parts[part], out / f"{part}_style_x{scale:g}.safetensors", style_scale=scale,
                         overwrite=True)  # fmt: skip


def write_row_fusion(content: Path, style: Path, path: Path) -> Path:
    """The row fusion of two stage-1 adapters (:func:`b4m.adapters.plp.row_fusion`) as one ordinary LoRA."""
    from b4m.adapters.codec import load_lora, save_kohya
    from b4m.adapters.knobs import plp_rho
    from b4m.adapters.plp import row_fusion, split_dims
    from b4m.owned import record_file

    c, s = load_lora(content), load_lora(style)
    rho = plp_rho(c, "--content")
    factors = {}
    for module, (u, v) in c.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], rho)
        factors[module] = row_fusion((u, v), s.factors[module], d_out, d_in)
    meta = {k: c.meta[k] for k in ("base_model", "base_family") if k in c.meta}
    save_kohya(path, factors, meta={**meta, "method": "b4m-rows (row fusion, beyond the paper)"})
    return record_file(path)


def tune_sgd_lr(fit_at: Callable[[float, Path], Any], spec: Any, shared: Path) -> dict[str, Any]:
    """The ``rp-sgd`` arm's learning rate: ``fit_at(lr, folder)`` fits the run at rate ``lr`` into ``folder``
    (stage 2 from the cached stage-1 adapters), once per rate of :data:`SGD_LR_GRID` with the same seed, so the
    candidates see the same batches, noise and timesteps; the rate with the lowest mean logged training loss
    (``folder/train_log.jsonl``) wins (a diverged run counts as infinite). Only the training objective decides,
    never the judges. Cached in ``shared`` by ``spec`` (the run's other settings); returns ``{"grid",
    "mean_loss", "chosen"}``."""
    path = shared / f"sgd_lr_{spec_hash([BENCH_VERSION, list(SGD_LR_GRID), spec])}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    mean_loss: dict[str, float] = {}
    for lr in SGD_LR_GRID:
        folder = shared / "sgd_lr_tuning" / f"{lr:g}"
        try:
            fit_at(lr, folder)
        except DivergedError:  # the loop stops a run at a non-finite loss: this rate is too high
            mean_loss[f"{lr:g}"] = float("inf")
        else:
            rows = [json.loads(x) for x in (folder / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
                    if x.strip()]  # fmt: skip
            losses = [r["loss"] for r in rows if "loss" in r]
            ok = losses and all(x is not None for x in losses)  # the log writes NaN as null
            mean = float(np.mean(losses)) if ok else float("inf")
            mean_loss[f"{lr:g}"] = mean if np.isfinite(mean) else float("inf")
        Folder(folder).clear()
    best = min(SGD_LR_GRID, key=lambda lr: mean_loss[f"{lr:g}"])
    result = {"grid": list(SGD_LR_GRID), "mean_loss": mean_loss, "chosen": best}
    shared.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result, indent=1) + "\n")
    return result
