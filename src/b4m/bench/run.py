"""The bench protocol: every method and arm on every pair, same references, same sources, same seeds.

For each content-style pair (B4M paper Sec. 5: the personal-instance track and the new-class track):

1. export the references once with the demo's exporter (content, style and the auxiliary MCP folders);
2. train the shared sources once: ``lora`` on the content and ``lora`` on the style images (the inputs of
   direct-merge, ziplora, klora, nplora and duolora), and B4M's stage-1 adapters per stage-1 setting (arms that
   change only stage-2 knobs share them);
3. per method x arm: fit (the registry's ``fit``; B4M's two stages with the shared stage 1), generate the
   prompt set x N seeds at equal noise, score with the world's judges per image (:mod:`b4m.eval.scoring`);
4. aggregate with bootstrap intervals (:mod:`b4m.eval.stats`) and write ``results.json``, ``results.md`` and
   ``report.html`` (:mod:`b4m.bench.report`).

Every finished unit (a source, a stage 1, a run) lives in a folder named by a hash of its settings, with a
``done.json`` written last: an interrupted bench continues where it stopped with the same command, and a
setting that changed is recomputed, never read stale. ``b4m bench`` writes only into an ``--out`` it made.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from b4m.bench.catalogue import (
    ARMS,
    METRICS,
    SGD_LR_GRID,
    STAGE2_KNOBS,
    TUNED,
    BenchConfig,
    Plan,
    arm_options,
    parse_shard,
    plan,
    track_of,
)
from b4m.errors import B4MError, DivergedError
from b4m.eval.scoring import atomic_write_text
from b4m.io import save_image
from b4m.owned import Folder

__all__ = ["BENCH_VERSION", "Run", "bench_runs", "run_bench"]

BENCH_VERSION = 1
"""Part of every cache key: bump it when a change of this module changes what a cached run would hold."""
STAMP = "bench.json"
DONE = "done.json"
SOURCE_METHODS = frozenset({"direct-merge", "ziplora", "klora", "nplora", "duolora"})
MERGE_TRAINED = frozenset({"ziplora", "duolora"})
B4M_METHODS = frozenset({"b4m", "b4m-official"})
BASE = "base"


def _hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def assets_fingerprint() -> str:
    """A hash of the shipped base model's and judges' records (``b4m_base.json``, ``judges.json``, which change
    with every retrain): part of every cache key, so that runs cached on an older base or older judges are
    recomputed, never read stale."""
    from b4m.diffusion.builtin_base import INFO_FILE, default_base_path

    judges = Path(__file__).resolve().parent.parent / "assets" / "judges" / "judges.json"
    h = hashlib.sha256()
    for f in (default_base_path() / INFO_FILE, judges):
        h.update(f.read_bytes() if f.exists() else b"-")
    return h.hexdigest()[:16]


def slug(pair: str) -> str:
    """A folder name for a pair: ``teddy#3:papercut#5`` -> ``teddy-3_papercut-5``."""
    return pair.replace("#", "-").replace(":", "_")


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of the bench: a method (``base``: the base model, prompt only) x arm x pair."""

    method: str
    arm: str
    pair: str
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return _hash(self.spec)

    @property
    def track(self) -> str:
        return track_of(self.pair)

    @property
    def label(self) -> str:
        if self.method == BASE:
            return "base model (prompt only)"
        if self.arm == "full":
            return self.method
        return f"{self.method}: {ARMS[self.arm][0] if self.arm in ARMS else self.arm}"

    def folder(self, root: Path) -> Path:
        return root / "runs" / slug(self.pair) / f"{self.method}_{self.arm.replace('/', '-')}_{self.key}"


def _prompt_set(content: str, style: str) -> tuple[list[str], list[dict[str, str]]]:
    """The demo's prompt set for a pair (its trigger words and attribute requests)."""
    from b4m.demo import PROMPT_ATTRIBUTES, DemoConfig, content_phrase, style_phrase
    from b4m.world.render import Scene, caption

    demo = DemoConfig(content=content, style=style)
    prompts = [caption(Scene.of(content, style, **a), content_word=content_phrase(demo),
                       style_word=style_phrase(demo)) for a in PROMPT_ATTRIBUTES]  # fmt: skip
    return prompts, [dict(a) for a in PROMPT_ATTRIBUTES]


def _train_spec(method: str, arm: str, p: Plan) -> dict[str, Any]:
    s = p.sizes
    if method == BASE:
        return {}
    if method in B4M_METHODS:
        return {"steps": s["steps"], "stage2_steps": s["stage2_steps"], **arm_options(arm, p.cfg.sgd_lr)}
    if method in MERGE_TRAINED:
        return {"steps": s["merge_steps"], "sources_steps": s["steps"]}
    if method in SOURCE_METHODS:
        return {"sources_steps": s["steps"]}
    return {"steps": s["steps"]}


def bench_runs(p: Plan) -> list[Run]:
    """Every run of the plan, in report order: per pair the base model, each method, then B4M's arms."""
    runs = []
    fingerprint = assets_fingerprint()
    for content, style in p.pairs:
        pair = f"{content}:{style}"
        prompts, attributes = _prompt_set(content, style)
        common = {
            "version": BENCH_VERSION,
            "assets": fingerprint,
            "pair": pair,
            "seed": p.cfg.seed,
            "refs": [p.sizes["n_content"], p.sizes["n_style"]],
            "sample": {"seeds": p.sizes["seeds"], "steps": p.sizes["sample_steps"], "prompts": prompts,
                       "attributes": attributes},
        }  # fmt: skip
        items = [(BASE, "full"), *[(m, "full") for m in p.methods]]
        if "b4m" in p.methods or any(a != "full" for a in p.arms):
            items += [("b4m", a) for a in p.arms if a != "full"]
        for method, arm in items:
            spec = {**common, "method": method, "arm": arm, "train": _train_spec(method, arm, p)}
            runs.append(Run(method, arm, pair, spec))
    return runs


# --------------------------------------------------------------------------------------------- the folder


def _claim(out: Path) -> None:
    """``--out`` must be new, empty, or a folder an earlier ``b4m bench`` made (then it resumes)."""
    from b4m.checks import check_out_folder

    check_out_folder(out)
    if out.is_dir() and any(out.iterdir()):
        try:
            stamp = json.loads((out / STAMP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = None
        if not isinstance(stamp, dict) or stamp.get("made_by") != "b4m bench":
            first = sorted(p.name for p in out.iterdir())[0]
            raise B4MError(
                f"--out {out}: holds {first}, which b4m bench did not make; choose a new or empty --out "
                "(the bench never writes over your files)"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STAMP, json.dumps({"made_by": "b4m bench", "version": BENCH_VERSION}) + "\n")


def _done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finish(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    atomic_write_text(folder / DONE, json.dumps(record) + "\n")
    Folder(folder).record(DONE)
    return record


def _start_run(folder: Path) -> None:
    """A run's folder, empty: what an interrupted run left there is removed, if b4m made it (:mod:`b4m.owned`);
    anything else is refused."""
    if folder.exists():
        kept = Folder(folder).clear() if Folder(folder).known else sorted(p.name for p in folder.iterdir())
        if kept:
            raise B4MError(
                f"{folder}: holds {', '.join(kept[:3])}, which b4m did not make; move it away and rerun"
            )
    Folder(folder).save()


# --------------------------------------------------------------------------------------------- heavy work


class Context:
    """What runs share, loaded on first use (a fully cached bench loads no model): the base pipeline, the
    judges, and per pair the exported references."""

    def __init__(self, root: Path, p: Plan, progress: bool) -> None:
        self.root, self.plan, self.progress = root, p, progress
        self._pipe: Any = None
        self._scorer: Any = None
        self._data: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        """What a fit decided that its record should keep (run key -> e.g. the tuned ``sgd_lr``)."""

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            from b4m import threads
            from b4m.diffusion.pipeline import load_pipeline

            threads.apply()
            self._pipe = load_pipeline(None)
        return self._pipe

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            from b4m.eval.scoring import WorldScorer

            self._scorer = WorldScorer()
        return self._scorer

    def data(self, pair: str) -> dict[str, Any]:
        if pair not in self._data:
            self._data[pair] = export_pair(self.root, pair, self.plan)
        return self._data[pair]

    def fresh_pipe(self) -> Any:
        return copy.deepcopy(self.pipe)


def export_pair(root: Path, pair: str, p: Plan) -> dict[str, Any]:
    """The pair's reference folders, exported (or reused) by the demo's exporter under ``root/data``."""
    from b4m.demo import DemoConfig, export_world_data

    content, _, style = pair.partition(":")
    demo = DemoConfig(content=content, style=style, seed=p.cfg.seed, n_content=p.sizes["n_content"],
                      n_style=p.sizes["n_style"])  # fmt: skip
    return export_world_data(demo, root / "data" / slug(pair))


def _source(ctx: Context, pair: str, concept: str) -> Path:
    """The shared plain LoRA of one concept of ``pair`` (trained once per step budget)."""
    from b4m.methods.common import ADAPTER, fit_method

    data = ctx.data(pair)
    spec = {"version": BENCH_VERSION, "pair": pair, "concept": concept, "seed": ctx.plan.cfg.seed,
            "steps": ctx.plan.sizes["steps"], "refs": [ctx.plan.sizes["n_content"], ctx.plan.sizes["n_style"]]}  # fmt: skip
    folder = ctx.root / "sources" / slug(pair) / f"lora-{concept}_{_hash(spec)}"
    if _done(folder) is None:
        fit_method("lora", pipe=ctx.fresh_pipe(), progress=False, out=folder, overwrite=True, concept=concept,
                   steps=ctx.plan.sizes["steps"], seed=ctx.plan.cfg.seed,
                   **_images(data, concept))  # fmt: skip
        _finish(folder, {"spec": spec})
    return folder / ADAPTER


def _images(data: dict[str, Any], *which: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in which:
        out[f"{w}_images"] = data[w]
        out[f"{w}_prompt"] = data[f"{w}_prompt"]
    return out


def _relative(value: Any, root: Path) -> Any:
    if isinstance(value, Path | str) and str(value).startswith(str(root)):
        return str(Path(value).relative_to(root))
    if isinstance(value, list | tuple):
        return [_relative(v, root) for v in value]
    return value


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
        **_images(data, "content", "style"),
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
    s1_spec = {k: _relative(v, ctx.root) for k, v in to_dict(cfg).items() if k not in skip}
    shared = ctx.root / "stage1" / slug(run.pair) / f"{run.method}_{_hash([BENCH_VERSION, s1_spec])}"
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
    spec = {k: _relative(v, ctx.root) for k, v in to_dict(stage2).items() if k not in skip}
    path = shared / f"sgd_lr_{_hash([BENCH_VERSION, list(SGD_LR_GRID), spec, reinit_every])}.json"
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
    options: dict[str, Any] = {**_images(data, "content", "style"), "seed": ctx.plan.cfg.seed}
    if run.method in SOURCE_METHODS:
        options["content_lora"] = _source(ctx, run.pair, "content")
        options["style_lora"] = _source(ctx, run.pair, "style")
    if "steps" in run.spec["train"] and run.spec["train"]["steps"] is not None:
        options["steps"] = run.spec["train"]["steps"]
    fitted = fit_method(run.method, pipe=ctx.fresh_pipe(), progress=False, out=out, overwrite=True, **options)
    return fitted.path


def execute(ctx: Context, run: Run, folder: Path) -> dict[str, Any]:
    """Fit, generate and score one run; returns its record (per-image scores, timings), written by the caller."""
    from b4m.data.folders import load_images, read_image_folder
    from b4m.diffusion.sampling import generation_defaults
    from b4m.eval.scoring import generate_with
    from b4m.world.sheet import image_grid

    t0 = time.perf_counter()
    adapter = fit_run(ctx, run, folder / "fit")
    fit_s = time.perf_counter() - t0
    gen = generation_defaults(ctx.pipe, None)
    sample = run.spec["sample"]
    seeds, res = sample["seeds"], gen["resolution"]
    t0 = time.perf_counter()
    images = generate_with(ctx.pipe, adapter, sample["prompts"], seeds, 0, sample["steps"] or gen["steps"],
                           gen["guidance"], res)  # fmt: skip
    sample_s = time.perf_counter() - t0
    data = ctx.data(run.pair)
    content_refs = load_images(read_image_folder(data["content"]).paths, res)
    style_refs = load_images(read_image_folder(data["style"]).paths, res)
    content, _, style = run.pair.partition(":")
    per = ctx.scorer.per_image(images, content_refs, style_refs, content, style,
                               [a for a in sample["attributes"] for _ in range(seeds)],
                               [q for q in sample["prompts"] for _ in range(seeds)])  # fmt: skip
    grid = image_grid(list(images), ncols=seeds)
    save_image(grid, folder / "samples.png")
    Folder(folder).record("samples.png")
    return {
        "per_image": {k: [float(x) for x in v] for k, v in per.items()},
        "fit_s": fit_s,
        "sample_s": sample_s,
        "adapter": None if adapter is None else _relative(str(adapter), ctx.root),
        **ctx.notes.pop(run.key, {}),
    }


# --------------------------------------------------------------------------------------------- results


def _row(run: Run, record: dict[str, Any], n_boot: int, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from b4m.eval.stats import bootstrap

    per = {k: np.asarray(v) for k, v in record["per_image"].items()}
    point, ci, reps = bootstrap(per, n_boot, seed=int(run.key[:8], 16))
    metrics = {k: point.get(k) for k in METRICS}
    row = {
        "method": run.method,
        "arm": run.arm,
        "label": run.label,
        "pair": run.pair,
        "track": run.track,
        **metrics,
        "leakage": {k[5:]: metrics[k] for k in METRICS if k.startswith("leak_")},
        "n": len(per["content"]),
        "ci": {k: ci[k] for k in METRICS if k in ci},
        "fit_s": record["fit_s"],
        "sample_s": record["sample_s"],
        "key": run.key,
        "samples": str((run.folder(root) / "samples.png").relative_to(root)),
        **{k: record[k] for k in ("sgd_lr", "sgd_lr_mean_loss") if k in record},
    }
    return row, reps


def _aggregate(rows: list[dict[str, Any]], reps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per track x method x arm: the mean over pairs, with the two-level (pairs, then images) interval."""
    from b4m.eval.stats import pair_bootstrap

    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["track"], r["method"], r["arm"]), []).append(i)
    out = []
    for (track, method, arm), idx in groups.items():
        mean, ci = pair_bootstrap([rows[i] for i in idx], [reps[i] for i in idx],
                                  seed=int(_hash([track, method, arm])[:8], 16))  # fmt: skip
        metrics = {k: mean.get(k) for k in METRICS}
        out.append({
            "method": method,
            "arm": arm,
            "label": rows[idx[0]]["label"],
            "track": track,
            "pairs": [rows[i]["pair"] for i in idx],
            **metrics,
            "leakage": {k[5:]: metrics[k] for k in METRICS if k.startswith("leak_")},
            "n": sum(rows[i]["n"] for i in idx),
            "ci": ci,
        })  # fmt: skip
    return out


def run_bench(
    cfg: BenchConfig | None = None, progress: bool = True, argv: list[str] | None = None
) -> dict[str, Any]:
    """Run (or resume) the bench; returns the results also written to ``<out>/results.json``."""
    from tqdm.auto import tqdm

    from b4m.bench.report import write_html, write_markdown
    from b4m.config import to_dict

    cfg = cfg or BenchConfig()
    p = plan(cfg)  # every option checked before any model loads
    root = Path(cfg.out)
    rank, world = process_slot(cfg.shard)
    started = time.time()
    if rank == 0:
        _claim(root)  # failure notes of an earlier launch stay in SHARDS: _wait_for reads only newer ones
    else:
        _wait_for(lambda: (root / STAMP).is_file(), "shard 0 to claim --out", root, started, progress)
    runs = bench_runs(p)
    pairs = list(dict.fromkeys(r.pair for r in runs))
    mine = [
        r for r in runs if pairs.index(r.pair) % world == rank
    ]  # pairs are independent: whole pairs per shard
    ctx = Context(root, p, progress)
    bar = tqdm(
        mine, desc="bench" if world == 1 else f"bench {rank}/{world}", unit="run", disable=not progress
    )
    computed = 0
    try:
        for run in bar:
            bar.set_postfix_str(f"{run.pair} {run.method} {run.arm}")
            folder = run.folder(root)
            if _done(folder) is None:
                _start_run(folder)  # an interrupted run's partial files are b4m's and are recomputed
                _finish(folder, {"spec": run.spec, **execute(ctx, run, folder)})
                computed += 1
    except Exception as err:
        if world > 1:  # tell shard 0, which is waiting for this shard's runs
            (root / SHARDS).mkdir(exist_ok=True)
            atomic_write_text(root / SHARDS / f"{rank}-of-{world}.failed", f"{type(err).__name__}: {err}\n")
        raise
    if rank != 0:
        return {"shard": f"{rank}/{world}", "computed": computed}
    if world > 1:
        _wait_for(lambda: all(_done(r.folder(root)) is not None for r in runs), "the other shards' runs", root,
                  started, progress)  # fmt: skip
    records = [_done(r.folder(root)) for r in runs]
    rows, reps = [], []
    for run, record in zip(runs, records, strict=True):
        row, rep = _row(run, record, p.sizes["bootstrap"], root)
        rows.append(row)
        reps.append(rep)
    command = "b4m bench" + ("" if argv is None else " " + " ".join(argv))
    results = {
        "title": "b4m bench: content-style customization on the built-in world",
        "command": command,
        "config": to_dict(cfg),
        "sizes": p.sizes,
        "pairs": [f"{c}:{s}" for c, s in p.pairs],
        "methods": list(p.methods),
        "arms": list(p.arms),
        "prompts": {r.pair: r.spec["sample"]["prompts"] for r in runs},
        "rows": rows,
        "aggregated": _aggregate(rows, reps),
        "computed": computed,
        "references": _reference_folders(root, p),
    }
    atomic_write_text(root / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(root / "results.md", write_markdown(results))
    atomic_write_text(root / "report.html", write_html(results, root))
    return results


SHARDS = "shards"
"""Where a failing shard leaves its error for shard 0 (``<rank>-of-<world>.failed``)."""
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def process_slot(shard: str = "") -> tuple[int, int]:
    """``(rank, world)`` of this bench process: from ``--shard K/N``, else from the launcher's environment
    (``accelerate launch`` / torchrun set ``RANK`` and ``WORLD_SIZE``), else ``(0, 1)``.

    Launched that way, the process then forgets the launcher's process group: every training inside a shard is
    single-process (the shards train *different* pairs, so DDP's gradient averaging across them would be wrong),
    on the GPU of its ``LOCAL_RANK`` when there are GPUs."""
    import os

    if shard:
        return parse_shard(shard)  # type: ignore[return-value]  # checked by plan()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    for key in _DIST_ENV:
        os.environ.pop(key, None)
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    return rank, world


def _wait_for(ready: Any, what: str, root: Path, since: float, progress: bool, poll_s: float = 2.0) -> None:
    """Block until ``ready()``; a shard's failure note written after ``since`` stops the wait with its error."""
    shown = False
    while not ready():
        failed = [f for f in sorted((root / SHARDS).glob("*.failed")) if f.stat().st_mtime >= since - 1]
        if failed:
            note = failed[0].read_text(encoding="utf-8").strip()
            raise B4MError(
                f"bench shard {failed[0].stem}: {note}; fix it and rerun the same command (it resumes)"
            )
        if progress and not shown:
            print(f"b4m bench: waiting for {what} ...", flush=True)
            shown = True
        time.sleep(poll_s)


def _reference_folders(root: Path, p: Plan) -> dict[str, dict[str, str]]:
    """Where the references of each pair are (without re-exporting them: a cached bench loads nothing)."""
    return {f"{c}:{s}": {k: f"data/{slug(f'{c}:{s}')}/{k}" for k in ("content", "style")} for c, s in p.pairs}
