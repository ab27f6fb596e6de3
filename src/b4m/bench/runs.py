"""The runs of a bench plan: per pair the base model, each method and its option arms, then B4M's arms, each with
its cache key.

A run's key is a hash of its spec (the bench version, the shipped assets' fingerprint, the pair, the sizes, the
prompt set and the training settings), so a setting that changed gives a new folder, never a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from b4m.bench.catalogue import ARMS_OF, Plan, arm_options, run_label, split_arm, track_of
from b4m.methods.cache import assets_fingerprint

BENCH_VERSION = 1
"""Part of every cache key: bump it when a change of the bench changes what a cached run would hold."""
BASE = "base"
"""The base model's row (prompt only): a harness notion, not a method."""


def spec_hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        return spec_hash(self.spec)

    @property
    def track(self) -> str:
        return self.spec.get("track") or track_of(self.pair)

    @property
    def label(self) -> str:
        return run_label(self.method, self.arm)

    @property
    def train_seed(self) -> int | None:
        """A training-seed replicate's seed (``None``: a run at the bench's ``--seed``, part of the main analysis)."""
        return self.spec.get("train_seed")

    def folder(self, root: Path) -> Path:
        return root / "runs" / slug(self.pair) / f"{self.method}_{self.arm.replace('/', '-')}_{self.key}"


def _prompt_set(content: str, style: str) -> tuple[list[str], list[dict[str, str]]]:
    """The demo's prompt set for a pair (its trigger words and attribute requests)."""
    from b4m.world.refs import PairRefs, prompt_set

    return prompt_set(PairRefs(content=content, style=style))


def _train_spec(method: str, arm: str, p: Plan) -> dict[str, Any]:
    """What a run trains with, read from the method's catalogue entry: its ``--steps`` budget (a full training
    or a merger fit), its sources' budget, for a method whose config has B4M's stage-2 group the stage-2 steps,
    and the arm's overrides (B4M's arms, or another method's option arm: they go to the method's own fit, never
    to its sources)."""
    from b4m.methods.catalogue import CATALOGUE

    if method == BASE:
        return {}
    s, info = p.sizes, CATALOGUE[method]
    fields = {f.name for f in dataclasses.fields(info.config)}
    spec: dict[str, Any] = {}
    if info.budget is not None:
        spec["steps"] = s["steps" if info.budget == "train" else "merge_steps"]
    if info.sources:
        spec["sources_steps"] = s["steps"]
    if "stage2_steps" in fields:
        spec["stage2_steps"] = s["stage2_steps"]
    return spec | arm_options(arm, p.cfg.sgd_lr, method)


def _items(p: Plan) -> list[tuple[str, str]]:
    """The ``(method, arm)`` rows of every pair: the base model, each method followed by its option arms
    (``METHOD:key=value`` -> ``(METHOD, "key=value")``), then B4M's arms."""
    own: dict[str, list[str]] = {}
    for a in p.arms:
        method, arm = split_arm(a)
        own.setdefault(method, []).append(arm)
    b4m = own.pop(ARMS_OF, [])
    items = [(BASE, "full")]
    for m in p.methods:
        items += [(m, "full"), *[(m, a) for a in own.get(m, [])]]
    if ARMS_OF in p.methods or any(a != "full" for a in b4m):
        items += [(ARMS_OF, a) for a in b4m if a != "full"]
    return items


def bench_runs(p: Plan) -> list[Run]:
    """Every run of the plan, in report order: per pair the base model, each method and its option arms, then
    B4M's arms."""
    runs = []
    fingerprint = assets_fingerprint()
    for content, style in p.pairs:
        pair = f"{content}:{style}"
        if p.source is not None:  # --pairs-file: b4m.bench.pairs_file
            from b4m.bench.pairs_file import common_spec

            common = common_spec(p, pair)
            for method, arm in _items(p):
                spec = {**common, "method": method, "arm": arm, "train": _train_spec(method, arm, p)}
                runs.append(Run(method, arm, pair, spec))
            continue
        prompts, attributes = _prompt_set(content, style)
        common = {
            "version": BENCH_VERSION,
            "assets": fingerprint,
            "pair": pair,
            "seed": p.cfg.seed,
            "refs": [p.sizes["n_content"], p.sizes["n_style"]]
            + ([p.cfg.aux_data] if p.cfg.aux_data != "plain" else []),  # plain: the keys runs always had
            "sample": {"seeds": p.sizes["seeds"], "steps": p.sizes["sample_steps"], "prompts": prompts,
                       "attributes": attributes},
        }  # fmt: skip
        for method, arm in _items(p):
            spec = {**common, "method": method, "arm": arm, "train": _train_spec(method, arm, p)}
            runs.append(Run(method, arm, pair, spec))
    return runs + _replicate_runs(p, runs)


def _replicate_runs(p: Plan, runs: list[Run]) -> list[Run]:
    """The training-seed replicates (:attr:`Plan.replicates`), after every main run: the replicated methods' rows
    of the first pairs again, each with a ``train_seed`` in its spec (so its own cache key); the same pair, so
    the same shard."""
    rep = p.replicates
    if rep is None:
        return []
    pairs = list(dict.fromkeys(r.pair for r in runs))[: rep.pairs]
    return [
        Run(r.method, r.arm, r.pair, {**r.spec, "train_seed": seed})
        for seed in rep.seeds
        for pair in pairs
        for r in runs
        if r.pair == pair and r.method in rep.methods
    ]
