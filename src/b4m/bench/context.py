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
            builtin = self.plan.source is None
            self._pipe = load_pipeline(None if builtin else self.plan.base)
            if not builtin:
                self._pipe.to(device())
        return self._pipe

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            from b4m.eval.scoring import WorldScorer

            if self.plan.source is not None:  # the paper's encoders (b4m.eval.protocol)
                from b4m.eval.protocol import load_protocol_scorer

                cfg = self.plan.cfg
                self._scorer = load_protocol_scorer(cfg.clip, cfg.dino, cfg.csd, device())
            else:
                self._scorer = WorldScorer()
        return self._scorer

    def data(self, pair: str) -> dict[str, Any]:
        if self.plan.source is not None:
            return self.plan.source.data(pair)
        if pair not in self._data:
            self._data[pair] = export_pair(self.root, pair, self.plan)
        return self._data[pair]

    def fresh_pipe(self) -> Any:
        return copy.deepcopy(self.pipe)


def device() -> str:
    """Where a real base model samples and the encoders run: this process's GPU if there is one (a shard's,
    :func:`b4m.bench.shards.process_slot`), else the CPU. Training moves its copy through its accelerator."""
    import torch

    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


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
