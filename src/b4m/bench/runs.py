"""The runs of a bench plan: per pair the base model, each method, then B4M's arms, each with its cache key.

A run's key is a hash of its spec (the bench version, the shipped assets' fingerprint, the pair, the sizes, the
prompt set and the training settings), so a setting that changed gives a new folder, never a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from b4m.bench.catalogue import ARMS, Plan, arm_options, track_of

BENCH_VERSION = 1
"""Part of every cache key: bump it when a change of the bench changes what a cached run would hold."""
SOURCE_METHODS = frozenset({"direct-merge", "ziplora", "klora", "nplora", "duolora"})
MERGE_TRAINED = frozenset({"ziplora", "duolora"})
B4M_METHODS = frozenset({"b4m", "b4m-official"})
BASE = "base"


def spec_hash(spec: Any) -> str:
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
        return spec_hash(self.spec)

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
