"""``b4m demo``: the whole B4M pipeline on the built-in world, from reference folders to a scored report.

1. export a personal content instance and a personal style instance (of classes the base model knows, as in
   the paper: *my* teddy, *my* paper cut-out style; base training never rendered them) to ordinary image
   folders, plus auxiliary folders of other styles and contents for multi-correspondence learning (a
   held-out class name instead runs the harder "new class" track);
2. stage 1: train the content PLP and the style PLP;
3. stage 2: fuse them and fine-tune with the Riemannian preconditioner;
4. generate the new subject in the new style under several prompts, with the base model for comparison;
5. score both with the judges and write ``report.html``, ``results.json`` and PNG grids.

B4M runs through the method registry like any method (``fit_cached("b4m")``): its fits live in ``<out>/fits``, keyed
by what decides them (settings, the bytes of the images and the shipped base), each stage-1 adapter by its own
concept alone. A second run reuses every finished fit whose options and inputs are unchanged (another style reuses
the content's stage 1) and trains again whatever changed, the stages after it included; the report names the
adapter file. The demo writes only names it owns (:mod:`b4m.owned`): a folder whose ``content/``,
``data/``, ``report.html``... b4m did not make is refused before any work, with or without ``--overwrite``, and
everything else in the folder is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from b4m import threads
from b4m.config import opt, to_dict
from b4m.errors import B4MError
from b4m.options import ORTH_CHOICES, STAGE2_OPTIMIZERS
from b4m.world.refs import (
    PROMPT_ATTRIBUTES,
    class_of,
    content_phrase,
    data_folders,
    export_world_data,
    style_phrase,
)

if TYPE_CHECKING:  # torch loads when the demo runs, not for `b4m demo --help`
    import torch

__all__ = [
    "PROMPT_ATTRIBUTES",
    "DemoConfig",
    "content_phrase",
    "export_world_data",
    "run_demo",
    "style_phrase",
]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of ``b4m demo`` (every one has a default: the demo runs with no arguments)."""

    out: Path = opt(Path("demo"), "output folder")
    content: str = opt(
        "teddy#3",
        "content to learn: a personal instance (teddy#3) or a held-out class (see 'b4m world list')",
    )
    style: str = opt(
        "papercut#5", "style to learn: a personal instance (papercut#5) or a held-out style family"
    )
    content_word: str = opt(
        "snq", "identifier put before the content's class word: 'a photo of a snq teddy' ('': none)"
    )
    style_word: str = opt(
        "wzk", "identifier put before the style's word: 'a cup in wzk papercut style' ('': none)"
    )
    n_content: int = opt(4, "content reference images")
    n_style: int = opt(3, "style reference images")
    aux_styles: list[str] = opt(["stripes", "dots", "checker"], "auxiliary styles for the content stage")
    aux_contents: list[str] = opt(["car", "house", "fish"], "auxiliary contents for the style stage")
    steps: int | None = opt(None, "stage-1 steps (default: the built-in preset)")
    stage2_steps: int | None = opt(None, "stage-2 steps (default: the built-in preset)")
    lr: float | None = opt(None, "stage-1 learning rate (default: the built-in preset)")
    stage2_lr: float | None = opt(None, "stage-2 learning rate (default: the built-in preset)")
    rank: int | None = opt(None, "LoRA rank (default: the built-in preset)")
    n: int = opt(4, "images per prompt")
    seed: int = opt(0, "seed of data export, training and sampling")
    # Ablation knobs (the paper's Table 1 arms), defaults = full B4M:
    orth: str = opt(
        "exact", "frozen parts: exact, approx (official code) or none (w/o Orth)", choices=ORTH_CHOICES
    )
    mcp: bool = opt(True, "multi-correspondence learning in stage 1 (--no-mcp: w/o MCP)")
    optimizer: str = opt("riemannian-adamw", "stage-2 optimizer; adamw is w/o RP", choices=STAGE2_OPTIMIZERS)
    overwrite: bool = opt(
        False,
        "export and train everything again, replacing only what the demo made (files it did not make are never "
        "touched; without this, unchanged stages are reused)",
    )


def _class(name: str) -> str:
    return class_of(name)


def _check_concepts(cfg: DemoConfig) -> None:
    from b4m.world.concepts import HELD_IN_CONTENTS, HELD_OUT_STYLES, STYLES
    from b4m.world.instances import learnable_concept_problem

    problems = []
    for option, kind, value in (("--content", "content", cfg.content), ("--style", "style", cfg.style)):
        if (why := learnable_concept_problem(value, kind)) is not None:
            problems.append(f"{option}: {why}")
    for s in cfg.aux_styles:
        if s not in STYLES or s in HELD_OUT_STYLES:
            problems.append(f"--aux-styles {s}: not a held-in style")
    for c in cfg.aux_contents:
        if c not in HELD_IN_CONTENTS:
            problems.append(f"--aux-contents {c}: not a held-in content")
    from b4m.checks import check_rank, finite, integer_at_least

    for option, value, least in (
        ("-n", cfg.n, 1),
        ("--n-content", cfg.n_content, 1),
        ("--n-style", cfg.n_style, 1),
        ("--steps", cfg.steps, 1),
        ("--stage2-steps", cfg.stage2_steps, 0),
    ):
        integer_at_least(value, option, least, problems)
    finite(cfg.lr, "--lr", problems, positive=True)
    finite(cfg.stage2_lr, "--stage2-lr", problems, positive=True)
    check_rank(cfg.rank, 0.5, problems)
    if problems:
        raise B4MError("; ".join(problems))


FITS = "fits"
"""The demo's fit cache inside ``--out`` (:func:`b4m.methods.cache.fit_cached`)."""
# The demo's own options that are B4M's too, passed on by name; its out, overwrite, content and style mean
# something else here.
_B4M_OPTIONS = ("steps", "stage2_steps", "lr", "stage2_lr", "rank", "seed", "orth", "mcp", "optimizer")
_FILES = (
    "results.json",
    "report.html",
    "ref_content.png",
    "ref_style.png",
    "grid_0.png",
    "grid_1.png",
    "grid_2.png",
)


def _claim(cfg: DemoConfig) -> Any:
    """Check, before any work, that every name the demo writes in ``--out`` is absent or the demo's own;
    returns the folder's :class:`~b4m.owned.Folder`, made."""
    from b4m.checks import check_out_folder
    from b4m.owned import claim

    out = Path(cfg.out)
    check_out_folder(out)
    folder = claim(out, ("data", FITS, *_FILES), overwrite=cfg.overwrite, what="b4m demo")
    if folder.owns("data"):
        claim(out / "data", tuple(data_folders(cfg)), "--out", cfg.overwrite, "b4m demo")
    folder.save()
    return folder


def _save_grid(images: list[torch.Tensor], path: Path, scale: int = 3) -> str:
    from PIL import Image

    from b4m.io import save_image
    from b4m.world.sheet import image_grid

    flat = [img for row in images for img in row]
    ncols = images[0].shape[0]
    grid = image_grid(flat, ncols=ncols)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    save_image(grid, path)
    return path.name


def _summary(cfg: DemoConfig, scores: dict[str, dict[str, Any]]) -> str:
    """What the report says first: what was learned, then what the judges saw (numbers, not a claim)."""
    base, b4m = scores["base model (prompt only)"], scores["B4M (fused, stage 2)"]

    def named(row: dict[str, Any], kind: str) -> float:
        inst = row[f"{kind}_inst"]
        return row[f"{kind}_acc"] if inst is None else inst

    what = []
    for name in (cfg.content, cfg.style):
        cls = _class(name)
        what.append(f"this {cls} ({name})" if "#" in name else f"{cls} (a class it never saw)")
    return (
        f"The base model knows neither {what[0]} nor {what[1]}; B4M learned each from the reference folders "
        f"below and fused them into one LoRA. The judges name {cfg.content} in {named(b4m, 'content'):.0%} and "
        f"{cfg.style} in {named(b4m, 'style'):.0%} of its images (base model, prompt only: "
        f"{named(base, 'content'):.0%} and {named(base, 'style'):.0%})."
    )


def run_demo(cfg: DemoConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the demo; returns the results dict also written to ``<out>/results.json``."""
    import torch

    from b4m.data.folders import load_images, read_image_folder
    from b4m.diffusion.pipeline import load_pipeline
    from b4m.diffusion.sampling import generation_defaults, load_adapter, sample
    from b4m.eval.metrics import score_world
    from b4m.eval.report import write_report
    from b4m.io import write_text
    from b4m.methods.cache import fit_cached
    from b4m.models.judges.network import WorldJudges
    from b4m.world.render import Scene, caption

    cfg = cfg or DemoConfig()
    threads.apply()  # once for the whole demo: its stages and scores then run with the same count
    out = Path(cfg.out)
    _check_concepts(cfg)
    folder = _claim(cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = export_world_data(cfg, out / "data", fresh=cfg.overwrite)
    timings["export references"] = time.perf_counter() - t0
    if cfg.overwrite and (kept := folder.remove(FITS)):  # train everything again
        raise B4MError(f"--out {out}: {FITS}/ holds {', '.join(kept)}, which b4m did not make; move it away")

    t = time.perf_counter()
    folder.child(FITS)
    fitted = fit_cached(
        "b4m",
        out / FITS,
        progress=progress,
        content_images=data["content"],
        content_prompt=data["content_prompt"],
        style_images=data["style"],
        style_prompt=data["style_prompt"],
        aux_styles=[str(p) for p in data["aux_styles"]],
        aux_contents=[str(p) for p in data["aux_contents"]],
        **{k: getattr(cfg, k) for k in _B4M_OPTIONS},
    )
    fused = fitted.path
    timings["B4M: stage 1 (content, style), stage 2 (fuse + RP)"] = time.perf_counter() - t

    t = time.perf_counter()
    prompts, wanted = [], []
    for attrs in PROMPT_ATTRIBUTES:
        scene = Scene.of(cfg.content, cfg.style, **attrs)
        prompts.append(caption(scene, content_word=content_phrase(cfg), style_word=style_phrase(cfg)))
        wanted.append(attrs)
    pipe = load_pipeline(None)
    gen = generation_defaults(pipe, None)
    kw = {
        "n": cfg.n,
        "seed": cfg.seed,
        "steps": gen["steps"],
        "guidance": gen["guidance"],
        "resolution": gen["resolution"],
        "progress": progress,
    }
    outputs = {"base model (prompt only)": sample(pipe, prompts, **kw)}
    load_adapter(pipe, fitted.parts["content"], adapter_name="content")
    outputs["content adapter alone"] = sample(pipe, prompts, **kw)
    pipe.delete_adapters("content")
    load_adapter(pipe, fused)
    outputs["B4M (fused, stage 2)"] = sample(pipe, prompts, **kw)
    timings["generate"] = time.perf_counter() - t

    judges = WorldJudges.load()
    res = gen["resolution"]
    content_refs = load_images(read_image_folder(data["content"]).paths, res)
    style_refs = load_images(read_image_folder(data["style"]).paths, res)
    scores, grids = {}, {}
    attrs_per_image = [a for a in wanted for _ in range(cfg.n)]
    for k, (label, images) in enumerate(outputs.items()):
        flat = torch.cat(images)
        scores[label] = score_world(
            judges, flat, content_refs, style_refs, cfg.content, cfg.style, attrs_per_image
        ).as_dict()
        grids[label] = _save_grid(images, out / f"grid_{k}.png")
    refs = {
        "content references": _save_grid([content_refs], out / "ref_content.png"),
        "style references": _save_grid([style_refs], out / "ref_style.png"),
    }
    folder.record(*grids.values(), *refs.values())
    results = {
        "title": f"b4m demo: '{content_phrase(cfg)}' ({cfg.content}) in "
        f"'{style_phrase(cfg)}' style ({cfg.style})",
        "summary": _summary(cfg, scores),
        "prompts": prompts,
        "scores": scores,
        "grids": grids,
        "references": refs,
        "timings": timings,
        "adapter": str(fused),
        "adapters": {**{role: str(path) for role, path in fitted.parts.items()}, "fused": str(fused)},
        "config": to_dict(cfg),
        "commands": ["b4m demo" + (f" --out {cfg.out}" if str(cfg.out) != "demo" else "")],
    }
    write_text(out / "results.json", json.dumps(results, indent=2))
    write_report(out / "results.json")
    folder.record("results.json", "report.html")
    return results
