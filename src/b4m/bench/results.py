"""The bench's results: one row per run (its image-bootstrap intervals), the rows aggregated per track x method x
arm (the two-level pairs-then-images interval), and where each pair's references are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from b4m.bench.catalogue import METRICS, Plan
from b4m.bench.runs import Run, slug, spec_hash


def result_row(
    run: Run, record: dict[str, Any], n_boot: int, root: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row of ``run`` from its ``done.json`` record, and its bootstrap replicates (for :func:`aggregate`)."""
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
        **{
            k: record[k] for k in ("sgd_lr", "sgd_lr_mean_loss", "peak_rss_mb", "peak_cuda_mb") if k in record
        },
    }
    return row, reps


def aggregate(rows: list[dict[str, Any]], reps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per track x method x arm: the mean over pairs, with the two-level (pairs, then images) interval."""
    from b4m.eval.stats import pair_bootstrap

    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["track"], r["method"], r["arm"]), []).append(i)
    out = []
    for (track, method, arm), idx in groups.items():
        mean, ci = pair_bootstrap([rows[i] for i in idx], [reps[i] for i in idx],
                                  seed=int(spec_hash([track, method, arm])[:8], 16))  # fmt: skip
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


def reference_folders(root: Path, p: Plan) -> dict[str, dict[str, str]]:
    """Where the references of each pair are (without re-exporting them: a cached bench loads nothing); a
    ``--pairs-file`` pair's are its own folders."""
    if p.source is not None:
        return {f"{c}:{s}": {k: str(v) for k, v in p.source.data(f"{c}:{s}").items() if k in ("content", "style")}
                for c, s in p.pairs}  # fmt: skip
    return {f"{c}:{s}": {k: f"data/{slug(f'{c}:{s}')}/{k}" for k in ("content", "style")} for c, s in p.pairs}
