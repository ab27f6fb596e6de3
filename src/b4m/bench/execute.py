"""One bench run: fit, generate the prompt set x N seeds at equal noise, score every image with the judges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from b4m.bench.context import Context, relative
from b4m.bench.fit import fit_run
from b4m.bench.runs import Run
from b4m.io import save_image
from b4m.owned import Folder


def execute(ctx: Context, run: Run, folder: Path) -> dict[str, Any]:
    """Fit, generate and score one run; returns its record (per-image scores, timings), written by the caller."""
    from b4m.bench.resources import measure
    from b4m.data.folders import load_images, read_image_folder
    from b4m.diffusion.sampling import generation_defaults
    from b4m.eval.scoring import generate_with
    from b4m.world.sheet import image_grid

    with measure() as fit_cost:
        adapter = fit_run(ctx, run, folder / "fit")
    real = ctx.plan.source is not None  # --pairs-file: a real base model and the paper's encoders
    gen = generation_defaults(ctx.pipe, ctx.plan.base if real else None)
    sample = run.spec["sample"]
    seeds, res = sample["seeds"], (ctx.plan.cfg.resolution if real else None) or gen["resolution"]
    with measure() as sample_cost:
        images = generate_with(ctx.pipe, adapter, sample["prompts"], seeds, 0, sample["steps"] or gen["steps"],
                               gen["guidance"], res)  # fmt: skip
    data = ctx.data(run.pair)
    content_refs = load_images(read_image_folder(data["content"]).paths, res)
    style_refs = load_images(read_image_folder(data["style"]).paths, res)
    content, _, style = run.pair.partition(":")
    per = ctx.scorer.per_image(images, content_refs, style_refs, content, style,
                               [a for a in sample["attributes"] for _ in range(seeds)],
                               [q for q in sample.get("score_prompts", sample["prompts"]) for _ in range(seeds)])  # fmt: skip
    grid = image_grid(list(images), ncols=seeds)
    save_image(grid, folder / "samples.png")
    Folder(folder).record("samples.png")
    return {
        "per_image": {k: [float(x) for x in v] for k, v in per.items()},
        "fit_s": fit_cost["wall_s"],
        "sample_s": sample_cost["wall_s"],
        "fit_cpu_s": fit_cost["cpu_s"],
        "sample_cpu_s": sample_cost["cpu_s"],
        **{
            k: max(fit_cost[k], sample_cost[k])
            for k in ("peak_rss_mb", "peak_cuda_mb")
            if fit_cost[k] is not None
        },
        "adapter": None if adapter is None else relative(str(adapter), ctx.root),
        **ctx.notes.pop(run.key, {}),
    }
