"""Point values and 95 % percentile-bootstrap intervals of the bench's metrics (numpy only).

Scores come per image (:func:`b4m.eval.scoring.per_image`): alignments, accuracies and leakage are means
over images; prompt alignment is hits over asked attributes (``prompt_hit`` / ``prompt_asked``, the definition of
:func:`b4m.eval.metrics.score_world`); ``mean`` and ``hmean`` combine content, style and prompt alignment per
resample. Intervals (Efron's percentile bootstrap):

- **over images** (:func:`bootstrap`): resample a run's images with replacement;
- **over pairs and images** (:func:`pair_bootstrap`, the aggregated rows): resample the pairs with replacement,
  then each chosen pair's images (a two-level bootstrap; with one pair it is the image bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["MEAN_KEYS", "METRICS", "PROTOCOL_KEYS", "aggregate", "bootstrap", "pair_bootstrap", "point"]

MEAN_KEYS: tuple[str, ...] = (
    "content",
    "style",
    "content_acc",
    "style_acc",
    "content_inst",
    "style_inst",
    "leak_content",
    "leak_content_acc",
    "leak_style",
    "leak_style_acc",
)
"""Per-image metrics whose aggregate is their mean."""
PROTOCOL_KEYS: tuple[str, ...] = ("style_csd", "content_centroid", "style_centroid", "style_csd_centroid")
"""Per-image metrics only the paper's encoders give (:mod:`b4m.eval.protocol`), also means over images."""
METRICS: tuple[str, ...] = (*MEAN_KEYS[:2], "prompt", "mean", "hmean", *PROTOCOL_KEYS, *MEAN_KEYS[2:])
"""Every metric :func:`aggregate` returns, in the order tables show them (``leak_*``: leakage; lower is better)."""
LEVEL = 0.95


def aggregate(per: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of image indices ``idx`` (``(B, n)``): arrays of shape ``(B,)``."""
    out = {k: np.asarray(per[k], dtype=float)[idx].mean(-1) for k in (*MEAN_KEYS, *PROTOCOL_KEYS) if k in per}
    hit = np.asarray(per["prompt_hit"], dtype=float)[idx].sum(-1)
    asked = np.asarray(per["prompt_asked"], dtype=float)[idx].sum(-1)
    out["prompt"] = np.where(asked > 0, hit / np.maximum(asked, 1e-12), 1.0)
    c, s, p = out["content"], out["style"], out["prompt"]
    out["mean"] = (c + s + p) / 3
    # the harmonic mean of b4m.eval.metrics.Scores.hmean (each part floored at 1e-6)
    out["hmean"] = 3 / sum(1 / np.maximum(v, 1e-6) for v in (c, s, p))
    return out


def point(per: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The metrics over all images (equal to :func:`b4m.eval.metrics.score_world` on the same images)."""
    n = len(per["content"])
    return {k: float(v[0]) for k, v in aggregate(per, np.arange(n)[None]).items()}


def _interval(reps: np.ndarray) -> list[float]:
    lo, hi = np.percentile(reps, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def bootstrap(
    per: Mapping[str, np.ndarray], n_boot: int = 2000, seed: int = 0
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, np.ndarray]]:
    """``(point values, 95 % intervals over images, the resampled values (n_boot,) per metric)``."""
    n = len(per["content"])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = aggregate(per, idx)
    return point(per), {k: _interval(v) for k, v in reps.items()}, reps


def pair_bootstrap(
    points: Sequence[Mapping[str, float | None]],
    reps: Sequence[Mapping[str, np.ndarray]],
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The mean over pairs of each metric (only metrics every pair has), and its two-level 95 % interval:
    resample the pairs, and for each take one of its image-bootstrap resamples ``reps[j][k][b]``."""
    keys = [k for k in reps[0] if all(k in r for r in reps) and all(p.get(k) is not None for p in points)]
    n_pairs, n_boot = len(reps), len(reps[0][keys[0]])
    pick = np.random.default_rng(seed).integers(0, n_pairs, size=(n_boot, n_pairs))
    mean, ci = {}, {}
    for k in keys:
        stacked = np.stack([r[k] for r in reps], axis=1)  # (n_boot, n_pairs)
        mean[k] = float(np.mean([p[k] for p in points]))
        ci[k] = _interval(np.take_along_axis(stacked, pick, axis=1).mean(1))
    return mean, ci
