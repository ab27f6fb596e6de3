"""Paired comparisons of two methods over content-style pairs (numpy only): the analysis
``docs/measuring.md`` asks for, so that a row is "better", "worse", "equivalent" or "undecided" only by a test.

Every method of a bench sees the same pairs, references, training seed, prompts and sampling noise, so image
``i`` of method A and image ``i`` of method B come from the same prompt x seed cell. The estimate of a
difference is the mean over pairs of the per-pair difference ``metric(A) - metric(B)``:

- its interval (:func:`paired_difference`): a two-level percentile bootstrap that resamples the pairs, then each
  chosen pair's cells, **with the same cell draw for both methods**;
- its test: an exact sign-flip permutation test over the pairs' differences (Monte Carlo above 16 pairs), with
  Holm's step-down adjustment across the comparators of one table (:func:`holm`);
- "equivalent" only from two one-sided tests: the 90 % interval inside a margin declared before the run
  (:data:`MARGINS`).

0/1 outcomes of one run (the judges naming the instance) get Wilson score intervals (:func:`wilson`): a bootstrap
of 0/20 would claim a zero-width interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from b4m.eval.stats import aggregate

__all__ = [
    "ALPHA",
    "MARGINS",
    "PAIRED_METRICS",
    "holm",
    "paired_difference",
    "ratio_of_means",
    "sign_flip_p",
    "verdict",
    "wilson",
]

ALPHA = 0.05
"""The family-wise error rate of the verdicts (after Holm's adjustment)."""
PAIRED_METRICS: tuple[str, ...] = ("hmean", "content_inst", "style_inst", "content", "style", "prompt")
"""The metrics whose paired differences the bench reports (the first three carry the verdicts)."""
MARGINS: dict[str, float] = {"hmean": 0.05, "content_inst": 0.10, "style_inst": 0.10}
"""Equivalence margins, declared before any test-suite run (``docs/suites.md``): a difference whose 90 %
interval lies inside ``±margin`` is "equivalent"."""

_EXACT_UP_TO = 16


def wilson(hits: float, n: int, level: float = 0.95) -> list[float]:
    """Wilson's score interval of a proportion ``hits / n`` (``hits`` may be a mean times ``n``)."""
    if n <= 0:
        return [0.0, 1.0]
    z = _z(level)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _z(level: float) -> float:
    """The standard normal quantile of ``(1 + level) / 2`` (bisection on ``math.erf``; no scipy)."""
    target, lo, hi = (1 + level) / 2, 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target else (lo, mid)
    return (lo + hi) / 2


def sign_flip_p(diffs: Sequence[float], n_random: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of "the mean difference is 0" by flipping the signs of the pairs' differences: exact
    (all ``2^n`` sign vectors) up to 16 pairs, else ``n_random`` random ones (the observed one included)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(d.mean())
    if n <= _EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, n))
        signs[0] = 1.0
    stats = np.abs(signs @ d / n)
    return float(np.mean(stats >= observed - 1e-12))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _per_pair_replicates(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    metrics: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One pair: the point difference of each metric and ``n_boot`` cell-bootstrap replicates of it, drawn with
    the same cells for both methods."""
    n = len(a["content"])
    if len(b["content"]) != n:
        raise ValueError(f"paired runs hold {n} and {len(b['content'])} images: not the same cells")
    every = np.arange(n)[None]
    pa, pb = aggregate(a, every), aggregate(b, every)
    idx = rng.integers(0, n, size=(n_boot, n))
    ra, rb = aggregate(a, idx), aggregate(b, idx)
    point = {m: float(pa[m][0] - pb[m][0]) for m in metrics}
    return point, {m: ra[m] - rb[m] for m in metrics}


def paired_difference(
    a: Sequence[Mapping[str, np.ndarray]],
    b: Sequence[Mapping[str, np.ndarray]],
    metrics: Sequence[str] = PAIRED_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """Per metric: the mean over pairs of ``A - B`` (``a[j]``, ``b[j]``: the per-image scores of pair ``j``,
    cells aligned), the per-pair differences, the 95 % and 90 % intervals of the two-level paired bootstrap and
    the sign-flip p-value over pairs (unadjusted)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_difference needs the same pairs, at least one, for both methods")
    rng = np.random.default_rng(seed)
    metrics = [m for m in metrics if all(m in x for x in (*a, *b)) or m in ("hmean", "prompt")]
    points, reps = zip(
        *(_per_pair_replicates(x, y, metrics, n_boot, rng) for x, y in zip(a, b, strict=True)), strict=True
    )
    pick = rng.integers(0, len(a), size=(n_boot, len(a)))
    out: dict[str, dict[str, object]] = {}
    for m in metrics:
        per_pair = [p[m] for p in points]
        stacked = np.stack([r[m] for r in reps], axis=1)  # (n_boot, n_pairs)
        boot = np.take_along_axis(stacked, pick, axis=1).mean(1)
        out[m] = {
            "diff": float(np.mean(per_pair)),
            "per_pair": per_pair,
            "ci95": [float(x) for x in np.percentile(boot, [2.5, 97.5])],
            "ci90": [float(x) for x in np.percentile(boot, [5.0, 95.0])],
            "p": sign_flip_p(per_pair, seed=seed),
        }
    return out


def verdict(diff: Mapping[str, object], p_adjusted: float, margin: float | None) -> str:
    """``better`` / ``worse`` (Holm-adjusted p below :data:`ALPHA` and the 95 % interval excluding 0),
    ``equivalent`` (the 90 % interval inside ``±margin``), else ``undecided at this size``."""
    lo, hi = diff["ci95"]  # type: ignore[misc]
    if p_adjusted < ALPHA and (lo > 0 or hi < 0):
        return "better" if diff["diff"] > 0 else "worse"  # type: ignore[operator]
    lo90, hi90 = diff["ci90"]  # type: ignore[misc]
    if margin is not None and -margin < lo90 and hi90 < margin:
        return "equivalent"
    return "undecided at this size"


def ratio_of_means(
    num: Sequence[float], den: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> dict[str, object]:
    """``sum(num) / sum(den)`` over pairs with a 95 % pair-bootstrap interval (identity retention: the fused
    adapter's instance accuracy over the content adapter's alone, pairs weighted by what the content adapter
    had to lose); ``None`` when the content adapter never showed the subject."""
    x, y = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if y.sum() <= 0:
        return {"ratio": None, "ci95": None, "per_pair": [None] * len(x)}
    pick = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    sx, sy = x[pick].sum(1), y[pick].sum(1)
    boot = sx[sy > 0] / sy[sy > 0]
    return {
        "ratio": float(x.sum() / y.sum()),
        "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
        "per_pair": [None if d <= 0 else float(n / d) for n, d in zip(x, y, strict=True)],
    }
