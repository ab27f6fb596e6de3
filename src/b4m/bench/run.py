"""The bench protocol: every method and arm on every pair, same references, same sources, same seeds.

For each content-style pair (B4M paper Sec. 5: the personal-instance track and the new-class track):

1. export the references once with the demo's exporter (content, style and the auxiliary MCP folders);
2. train the shared sources once: ``lora`` on the content and ``lora`` on the style images (the inputs of
   direct-merge, ziplora, klora, nplora and duolora), and B4M's stage-1 adapters per stage-1 setting (arms that
   change only stage-2 knobs share them);
3. per method x arm: fit (the registry's ``fit``; B4M's two stages with the shared stage 1), generate the
   prompt set x N seeds at equal noise, score with the world's judges per image (:mod:`b4m.eval.scoring`);
4. aggregate with bootstrap intervals (:mod:`b4m.eval.stats`), compare B4M with every other row over the pairs
   (:mod:`b4m.eval.paired`), count each row's training budget (:mod:`b4m.bench.budgets`) and write
   ``results.json``, ``results.md`` and ``report.html`` (:mod:`b4m.bench.report`).

Every finished unit (a source, a stage 1, a run) lives in a folder named by a hash of its settings, with a
``done.json`` written last: an interrupted bench continues where it stopped with the same command, and a
setting that changed is recomputed, never read stale. ``b4m bench`` writes only into an ``--out`` it made.

This module runs the protocol (:func:`run_bench`); the jobs are in the package's other modules:
:mod:`b4m.bench.runs` (the plan's runs and their cache keys), :mod:`b4m.bench.folder` (``--out`` and the
``done.json`` records), :mod:`b4m.bench.context` (the shared pipeline, judges and references),
:mod:`b4m.bench.fit` (sources, B4M's stages, the ``rp-sgd`` rate), :mod:`b4m.bench.execute` (fit, sample and
score one run), :mod:`b4m.bench.results` (rows and their aggregation), :mod:`b4m.bench.budgets` (training
image-steps and fit seconds per row) and :mod:`b4m.bench.shards` (several processes). :func:`run_bench` calls
:func:`execute` through this module, so replacing ``b4m.bench.run.execute`` (as the tests do) replaces it for
the whole bench.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from b4m.bench.budgets import budgets
from b4m.bench.catalogue import BenchConfig, plan
from b4m.bench.context import Context
from b4m.bench.execute import execute
from b4m.bench.folder import STAMP, claim, done, finish, start_run
from b4m.bench.results import aggregate, comparisons, reference_folders, result_row, seed_variance
from b4m.bench.runs import BENCH_VERSION, Run, bench_runs
from b4m.bench.shards import SHARDS, process_slot, wait_for
from b4m.io import write_text

__all__ = ["BENCH_VERSION", "Run", "bench_runs", "run_bench"]


def run_bench(
    cfg: BenchConfig | None = None, progress: bool = True, argv: list[str] | None = None
) -> dict[str, Any]:
    """Run (or resume) the bench; returns the results also written to ``<out>/results.json``."""
    from tqdm.auto import tqdm

    from b4m.bench.report import write_html, write_markdown
    from b4m.config import to_dict

    cfg = cfg or BenchConfig()
    p = plan(cfg)  # every option checked before any model loads
    if cfg.dry_run:  # the plan and its cost, nothing written
        from b4m.bench.costs import describe

        return {"dry_run": describe(p)}
    root = Path(cfg.out)
    rank, world = process_slot(cfg.shard)
    started = time.time()
    if rank == 0:
        claim(root)  # failure notes of an earlier launch stay in SHARDS: wait_for reads only newer ones
    else:
        wait_for(lambda: (root / STAMP).is_file(), "shard 0 to claim --out", root, started, progress)
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
            if done(folder) is None:
                start_run(folder)  # an interrupted run's partial files are b4m's and are recomputed
                finish(folder, {"spec": run.spec, **execute(ctx, run, folder)})
                computed += 1
    except Exception as err:
        if world > 1:  # tell shard 0, which is waiting for this shard's runs
            (root / SHARDS).mkdir(exist_ok=True)
            write_text(root / SHARDS / f"{rank}-of-{world}.failed", f"{type(err).__name__}: {err}\n")
        raise
    if rank != 0:
        return {"shard": f"{rank}/{world}", "computed": computed}
    if world > 1:
        wait_for(lambda: all(done(r.folder(root)) is not None for r in runs), "the other shards' runs", root,
                  started, progress)  # fmt: skip
    all_records = [done(r.folder(root)) for r in runs]
    main = [i for i, r in enumerate(runs) if r.train_seed is None]  # the replicates feed only seed_variance
    variance = seed_variance(runs, all_records)
    runs, records = [runs[i] for i in main], [all_records[i] for i in main]
    rows, reps = [], []
    for run, record in zip(runs, records, strict=True):
        row, rep = result_row(run, record, p.sizes["bootstrap"], root)
        rows.append(row)
        reps.append(rep)
    command = "b4m bench" + ("" if argv is None else " " + " ".join(argv))
    results = {
        "title": "b4m bench: content-style customization on the built-in world",
        **(_pairs_file_titles(p) if p.source is not None else {}),
        "command": command,
        "config": to_dict(cfg),
        "sizes": p.sizes,
        "pairs": [f"{c}:{s}" for c, s in p.pairs],
        "methods": list(p.methods),
        "arms": list(p.arms),
        "prompts": {r.pair: r.spec["sample"]["prompts"] for r in runs},
        "rows": rows,
        "aggregated": aggregate(rows, reps),
        "comparisons": comparisons(runs, records, p.sizes["bootstrap"]),
        "budgets": budgets(runs, records),
        **({"seed_variance": variance} if variance else {}),
        "computed": computed,
        "references": reference_folders(root, p),
    }
    write_text(root / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(root / "results.md", write_markdown(results))
    write_text(root / "report.html", write_html(results, root))
    return results


def _pairs_file_titles(p: Any) -> dict[str, str]:
    """What the reports say of a ``--pairs-file`` bench: its title and how it scores (:mod:`b4m.eval.protocol`)."""
    csd = " and CSD (style (CSD))" if p.cfg.csd else ""
    return {
        "title": f"b4m bench: content-style customization on {p.base}",
        "heading": f"b4m bench: methods on the pairs of {p.cfg.pairs_file}, base {p.base}",
        "scoring": (
            f"Scores are the paper's encoders (b4m.eval.protocol): content = DINOv2 {p.cfg.dino} CLS cosine to the "
            f"content references, style = CLIP {p.cfg.clip} image cosine to the style references{csd}, prompt = "
            "CLIP text-image cosine to the prompt with each identifier replaced by its class words; each the "
            "pairwise average over every generated x reference image (as Table 1 computes them), the cosine to "
            "the references' centroid in the (centroid) columns; leak = the content features' cosine to the style "
            "references and the style features' to the content references (lower is better; compare with the "
            "base model)."
        ),
    }
