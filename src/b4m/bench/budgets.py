"""The bench's training budgets: per track and row (method x arm), the training sample-gradients per pair beside
the measured fit wall and CPU seconds per pair (``results["budgets"]``, the "Budgets" table of ``results.md``).

Sample-gradients are image-steps: the images of every training step, summed over the run's own training and every
sub-fit it is built on (:func:`b4m.bench.costs.training_fits`: the two source LoRAs of a merge, B4M's two stage-1
runs and its stage 2, ``rp-sgd``'s tuning candidates), read from each run's spec, so they say what the row's
adapter cost to train whatever the cache did. Images per step are :data:`b4m.bench.costs.SAMPLES_PER_STEP`'s:
B4M's stage 1 at the target plus 3 auxiliary samples, the built-in world's batch (a ``--pairs-file`` concept with
another number of auxiliary folders trains one plus that many a step; it is counted at 4 here as in
``--dry-run``). An arm that samples a part of B4M's fit (``content-alone``,
``fusion-rows``...) trains nothing itself: its row has the budget of the fit it samples, marked
``sampling_only``.

The seconds are measured (the runs' records, :mod:`b4m.bench.resources`), over the runs that recorded them: a
sub-fit shared between runs (the sources, B4M's stage 1, the fit a sampling-only arm samples) is paid by the
first run that trains it and read from the cache by the others, so a row's seconds depend on the run order and
on what an earlier bench left in the cache; its image-steps do not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["budgets"]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def budgets(runs: list[Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per track (in run order): one entry per ``(method, arm)`` with its pairs, ``image_steps`` (training
    sample-gradients per pair, the mean over its runs), ``fits`` (the trainings of its first run: name, kind,
    steps, images per step, image-steps), ``sampling_only``, and the mean measured ``fit_s`` / ``fit_cpu_s``
    per pair with the number of runs each is the mean of (``None``, 0: no run recorded it)."""
    from b4m.bench.catalogue import PART
    from b4m.bench.costs import training_fits
    from b4m.bench.runs import BASE

    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run.track, run.method, run.arm), []).append(i)
    out = []
    for track in dict.fromkeys(run.track for run in runs):
        rows = []
        for (t, method, arm), idx in groups.items():
            if t != track:
                continue
            train = [runs[i].spec.get("train") or {} for i in idx]
            fits = [
                [] if method == BASE else training_fits(method, tr, runs[i].spec.get("base") or "builtin")
                for i, tr in zip(idx, train, strict=True)
            ]
            timed = {k: [float(records[i][k]) for i in idx if records[i].get(k) is not None]
                     for k in ("fit_s", "fit_cpu_s")}  # fmt: skip
            rows.append({
                "method": method,
                "arm": arm,
                "label": runs[idx[0]].label,
                "pairs": [runs[i].pair for i in idx],
                "image_steps": _mean([float(sum(f["image_steps"] for f in run_fits)) for run_fits in fits]),
                "fits": [{k: f[k] for k in ("fit", "kind", "steps", "per_step", "image_steps")} for f in fits[0]],
                "sampling_only": PART in train[0],
                **{k: _mean(v) for k, v in timed.items()},
                **{f"{k}_runs": len(v) for k, v in timed.items()},
            })  # fmt: skip
        out.append({"track": track, "rows": rows})
    return out
