"""Fitting a bench run: the shared sources (one plain LoRA per concept), B4M's two stages with a stage 1 shared
by every arm with the same stage-1 settings, the ``rp-sgd`` arm's learning rate, and every other method through
the registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from b4m.bench.catalogue import SGD_LR_GRID, STAGE2_KNOBS, TUNED
from b4m.bench.context import Context, image_options, relative
from b4m.bench.folder import done, finish
from b4m.bench.runs import B4M_METHODS, BASE, BENCH_VERSION, SOURCE_METHODS, Run, slug, spec_hash
from b4m.errors import DivergedError
from b4m.eval.scoring import atomic_write_text
from b4m.owned import Folder


def _source(ctx: Context, pair: str, concept: str) -> Path:
    """The shared plain LoRA of one concept of ``pair`` (trained once per step budget)."""
    from b4m.methods.common import ADAPTER, fit_method

    data = ctx.data(pair)
    spec = {"version": BENCH_VERSION, "pair": pair, "concept": concept, "seed": ctx.plan.cfg.seed,
            "steps": ctx.plan.sizes["steps"], "refs": [ctx.plan.sizes["n_content"], ctx.plan.sizes["n_style"]]}  # fmt: skip
    folder = ctx.root / "sources" / slug(pair) / f"lora-{concept}_{spec_hash(spec)}"
    if done(folder) is None:
        fit_method("lora", pipe=ctx.fresh_pipe(), progress=False, out=folder, overwrite=True, concept=concept,
                   steps=ctx.plan.sizes["steps"], seed=ctx.plan.cfg.seed,
                   **image_options(data, concept))  # fmt: skip
        finish(folder, {"spec": spec})
    return folder / ADAPTER


def _fit_b4m(ctx: Context, run: Run, out: Path) -> Path:
    """B4M (or b4m-official) with the registry's config and stage plan (:func:`b4m.methods.b4m.stage_configs`),
    its stage 1 shared by every arm with the same stage-1 settings."""
    from b4m.config import load_config, to_dict
    from b4m.methods.b4m import stage_configs
    from b4m.methods.base import get_method, resolve_options
    from b4m.train.stage1 import train_stage1
    from b4m.train.stage2 import train_stage2

    data = ctx.data(run.pair)
    method = get_method(run.method)
    train = dict(run.spec["train"])
    tune = train.get("stage2_lr") == TUNED
    if tune:
        del train["stage2_lr"], train["sgd_lr_grid"]
    options = {
        **image_options(data, "content", "style"),
        "aux_styles": [str(x) for x in data["aux_styles"]],
        "aux_contents": [str(x) for x in data["aux_contents"]],
        "seed": ctx.plan.cfg.seed,
        "overwrite": True,
        "out": out,
        **{k: v for k, v in train.items() if v is not None},
    }
    cfg = resolve_options(load_config(method.config, None, options))
    method.check_needs(cfg)
    content, style, stage2 = stage_configs(cfg, out)
    skip = STAGE2_KNOBS | {"out", "overwrite", "checkpoint_every", "reinit_every"}
    s1_spec = {k: relative(v, ctx.root) for k, v in to_dict(cfg).items() if k not in skip}
    shared = ctx.root / "stage1" / slug(run.pair) / f"{run.method}_{spec_hash([BENCH_VERSION, s1_spec])}"
    paths = {}
    for role, s1 in (("content", content), ("style", style)):
        folder = shared / role  # reused when its identity (options, data, base) is unchanged
        paths[role] = train_stage1(dataclasses.replace(s1, out=folder), role, pipe=ctx.fresh_pipe(),
                                   progress=False, policy="refresh")  # fmt: skip
    stage2 = dataclasses.replace(
        stage2, content=paths["content"], style=paths["style"], out=out, overwrite=True
    )
    if tune:
        tuning = tune_sgd_lr(ctx, stage2, shared, cfg.reinit_every)
        ctx.notes[run.key] = {"sgd_lr": tuning["chosen"], "sgd_lr_mean_loss": tuning["mean_loss"]}
        stage2 = dataclasses.replace(stage2, stage2_lr=tuning["chosen"])
    return train_stage2(stage2, pipe=ctx.fresh_pipe(), progress=False)


def tune_sgd_lr(ctx: Context, stage2: Any, shared: Path, reinit_every: int = 0) -> dict[str, Any]:
    """The ``rp-sgd`` arm's learning rate: stage 2 (``stage2``, from the shared stage-1 adapters in ``shared``)
    runs once per rate of :data:`SGD_LR_GRID` with the same seed, so the candidates see the same batches, noise
    and timesteps; the rate with the lowest mean logged training loss wins (a diverged run counts as infinite).
    Only the training objective decides, never the judges. Cached in ``shared`` by the stage-2 settings; returns
    ``{"grid", "mean_loss", "chosen"}``."""
    from b4m.config import to_dict
    from b4m.train.stage2 import train_stage2

    skip = {"out", "overwrite", "stage2_lr", "checkpoint_every", "resume"}
    spec = {k: relative(v, ctx.root) for k, v in to_dict(stage2).items() if k not in skip}
    path = shared / f"sgd_lr_{spec_hash([BENCH_VERSION, list(SGD_LR_GRID), spec, reinit_every])}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    mean_loss: dict[str, float] = {}
    for lr in SGD_LR_GRID:
        folder = shared / "sgd_lr_tuning" / f"{lr:g}"
        try:
            train_stage2(dataclasses.replace(stage2, stage2_lr=lr, out=folder, overwrite=True,
                                             checkpoint_every=0),
                         pipe=ctx.fresh_pipe(), progress=False)  # fmt: skip
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
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    return result


def fit_run(ctx: Context, run: Run, out: Path) -> Path | None:
    """The adapter of ``run`` (``None``: the base model)."""
    from b4m.methods.common import fit_method

    if run.method == BASE:
        return None
    if run.method in B4M_METHODS:
        return _fit_b4m(ctx, run, out)
    if run.method == "lora":  # the content source alone (its style twin is the style source)
        return _source(ctx, run.pair, "content")
    data = ctx.data(run.pair)
    options: dict[str, Any] = {**image_options(data, "content", "style"), "seed": ctx.plan.cfg.seed}
    if run.method in SOURCE_METHODS:
        options["content_lora"] = _source(ctx, run.pair, "content")
        options["style_lora"] = _source(ctx, run.pair, "style")
    if "steps" in run.spec["train"] and run.spec["train"]["steps"] is not None:
        options["steps"] = run.spec["train"]["steps"]
    fitted = fit_method(run.method, pipe=ctx.fresh_pipe(), progress=False, out=out, overwrite=True, **options)
    return fitted.path
