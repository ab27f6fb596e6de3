"""What the runs of one bench process share, loaded on first use: the base pipeline, the judges, and per pair
the exported references."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from b4m.bench.catalogue import Plan
from b4m.bench.runs import slug


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
    """The pair's reference folders, exported (or reused) by the world's exporter under ``root/data``."""
    from b4m.world.refs import PairRefs, export_world_data

    content, _, style = pair.partition(":")
    refs = PairRefs(content=content, style=style, seed=p.cfg.seed, n_content=p.sizes["n_content"],
                    n_style=p.sizes["n_style"], aux_data=p.cfg.aux_data)  # fmt: skip
    return export_world_data(refs, root / "data" / slug(pair))


def image_options(data: dict[str, Any], *which: str) -> dict[str, Any]:
    """``{"<w>_images": ..., "<w>_prompt": ...}`` for each ``w`` of ``which`` (``"content"``, ``"style"``) from a
    pair's exported references."""
    out: dict[str, Any] = {}
    for w in which:
        out[f"{w}_images"] = data[w]
        out[f"{w}_prompt"] = data[f"{w}_prompt"]
    return out


def relative(value: Any, root: Path) -> Any:
    """``value`` with paths under ``root`` made relative to it (cache keys and records hold no absolute paths)."""
    if isinstance(value, Path | str) and str(value).startswith(str(root)):
        return str(Path(value).relative_to(root))
    if isinstance(value, list | tuple):
        return [relative(v, root) for v in value]
    return value
