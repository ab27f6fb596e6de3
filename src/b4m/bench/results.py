"""The bench's results: one row per run (its image-bootstrap intervals; Wilson intervals for the 0/1 accuracies),
the rows aggregated per track x method x arm (the two-level pairs-then-images interval), the paired comparisons
of B4M with every other row (:func:`comparisons`), and where each pair's references are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from b4m.bench.catalogue import METRICS, Plan, run_label
from b4m.bench.runs import Run, slug, spec_hash


def result_row(
    run: Run, record: dict[str, Any], n_boot: int, root: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row of ``run`` from its ``done.json`` record, and its bootstrap replicates (for :func:`aggregate`)."""
    from b4m.eval.paired import wilson
    from b4m.eval.stats import bootstrap

    per = {k: np.asarray(v) for k, v in record["per_image"].items()}
    point, ci, reps = bootstrap(per, n_boot, seed=int(run.key[:8], 16))
    n = len(per["content"])
    for k in (
        "content_acc",
        "style_acc",
        "content_inst",
        "style_inst",
    ):  # 0/1 per image: Wilson, not bootstrap
        if point.get(k) is not None and k in ci:
            ci[k] = wilson(point[k] * n, n)
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
            k: record[k]
            for k in (
                "fit_cpu_s",
                "sample_cpu_s",
                "sgd_lr",
                "sgd_lr_mean_loss",
                "peak_rss_mb",
                "peak_cuda_mb",
            )
            if k in record
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


def comparisons(
    runs: list[Any], records: list[dict[str, Any]], n_boot: int, reference: tuple[str, str] = ("b4m", "full")
) -> list[dict[str, Any]]:
    """Per track: the paired difference ``reference - comparator`` (:func:`b4m.eval.paired.paired_difference`)
    for every other ``(method, arm)`` on the pairs both have, with Holm-adjusted sign-flip p-values across the
    track's comparators and a verdict per metric; plus the reference's identity retention (its content-instance
    accuracy over the stage-1 content adapter's alone, arm ``content-alone``) when that arm ran."""
    from b4m.eval.paired import MARGINS, holm, paired_difference, ratio_of_means, verdict

    per = {(r.track, r.method, r.arm, r.pair): {k: np.asarray(v) for k, v in rec["per_image"].items()}
           for r, rec in zip(runs, records, strict=True)}  # fmt: skip
    out = []
    for track in dict.fromkeys(r.track for r in runs):
        ref_pairs = [p for (t, m, a, p) in per if (t, m, a) == (track, *reference)]
        if not ref_pairs:
            continue
        others = list(dict.fromkeys((m, a) for (t, m, a, _) in per if t == track and (m, a) != reference))
        table = []
        for method, arm in others:
            pairs = [p for p in ref_pairs if (track, method, arm, p) in per]
            if not pairs:
                continue
            diff = paired_difference([per[(track, *reference, p)] for p in pairs],
                                     [per[(track, method, arm, p)] for p in pairs], n_boot=n_boot,
                                     seed=int(spec_hash([track, method, arm])[:8], 16))  # fmt: skip
            table.append({"method": method, "arm": arm, "label": run_label(method, arm), "pairs": pairs,
                          "diff": diff})  # fmt: skip
        for metric in MARGINS:
            rows = [t for t in table if metric in t["diff"]]
            for t, p_adj in zip(rows, holm([t["diff"][metric]["p"] for t in rows]), strict=True):
                t["diff"][metric]["p_holm"] = p_adj
                t["diff"][metric]["verdict"] = verdict(t["diff"][metric], p_adj, MARGINS[metric])
        entry: dict[str, Any] = {"track": track, "reference": run_label(*reference), "comparators": table}
        alone = [p for p in ref_pairs if (track, reference[0], "content-alone", p) in per]
        if alone and all("content_inst" in per[(track, *reference, p)] for p in alone):
            fused = [float(per[(track, *reference, p)]["content_inst"].mean()) for p in alone]
            base = [
                float(per[(track, reference[0], "content-alone", p)]["content_inst"].mean()) for p in alone
            ]
            entry["identity_retention"] = {"pairs": alone, "fused": fused, "content_alone": base,
                                           **ratio_of_means(fused, base, n_boot)}  # fmt: skip
        out.append(entry)
    return out


def seed_variance(
    runs: list[Any],
    records: list[dict[str, Any]],
    difference: tuple[tuple[str, str], tuple[str, str]] = (("b4m", "full"), ("lora", "full")),
) -> list[dict[str, Any]]:
    """How much a pair's score moves with the training seed (the replicates, :attr:`Run.train_seed`) against how
    much it moves between pairs, per track and replicated row, and for the paired ``difference`` (B4M minus the
    plain content LoRA) when both rows were replicated.

    For each verdict metric (:data:`b4m.eval.paired.MARGINS`): ``within_sd``, the square root of the mean over
    the replicated pairs of the sample variance across training seeds (the bench's ``--seed`` and the
    replicates'); ``between_sd``, the sample standard deviation over all the track's pairs of the value at the
    bench's ``--seed`` (which holds the seed variance too). ``per_pair`` lists each pair's values by seed."""
    from b4m.eval.paired import MARGINS
    from b4m.eval.stats import point

    value: dict[tuple[str, str, str, str, int | None], dict[str, float]] = {}
    for r, rec in zip(runs, records, strict=True):
        metrics = point({k: np.asarray(v) for k, v in rec["per_image"].items()})
        value[(r.track, r.method, r.arm, r.pair, r.train_seed)] = {
            k: metrics[k] for k in MARGINS if metrics.get(k) is not None
        }
    replicated = list(dict.fromkeys((r.track, r.method, r.arm) for r in runs if r.train_seed is not None))
    seeds = list(dict.fromkeys(r.train_seed for r in runs if r.train_seed is not None))
    rows: list[tuple[str, str, str, Any]] = [(t, m, a, None) for t, m, a in replicated]
    (ref, other) = difference
    for track in dict.fromkeys(t for t, _, _ in replicated):
        if (track, *ref) in replicated and (track, *other) in replicated:
            rows.append((track, *ref, other))
    out = []
    all_seeds = [None, *seeds]
    for track, method, arm, minus in rows:
        main_pairs = [
            r.pair for r in runs if (r.track, r.method, r.arm, r.train_seed) == (track, method, arm, None)
        ]
        # (pair, seed) -> the row's values, or its difference from ``minus`` where both ran
        at: dict[tuple[str, int | None], dict[str, float]] = {}
        for pair in main_pairs:
            for seed in all_seeds:
                mine = value.get((track, method, arm, pair, seed))
                theirs = value.get((track, *minus, pair, seed)) if minus else None
                if mine is None or (minus and theirs is None):
                    continue
                at[(pair, seed)] = (
                    mine if theirs is None else {k: mine[k] - theirs[k] for k in mine if k in theirs}
                )
        rep_pairs = [p for p in main_pairs if all((p, s) in at for s in all_seeds)]
        if not rep_pairs:
            continue
        per_pair = {p: {k: [at[(p, s)][k] for s in all_seeds] for k in at[(p, None)]} for p in rep_pairs}
        metrics = [k for k in MARGINS if all(k in v for v in per_pair.values())]
        within = {
            k: float(np.sqrt(np.mean([np.var(per_pair[p][k], ddof=1) for p in rep_pairs]))) for k in metrics
        }
        main = {k: [at[(p, None)][k] for p in main_pairs if (p, None) in at] for k in metrics}
        between = {k: float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in main.items()}
        label = run_label(method, arm) + ("" if minus is None else f" minus {run_label(*minus)}")
        out.append({"track": track, "method": method, "arm": arm, "minus": list(minus) if minus else None,
                    "label": label, "seeds": seeds, "pairs": rep_pairs, "per_pair": per_pair,
                    "within_sd": within, "between_sd": between, "n_pairs": len(main_pairs)})  # fmt: skip
    return out
