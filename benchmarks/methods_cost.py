"""Wall time of every registered method on the built-in world, with each method's defaults (its presets).

The demo's data (held-out content teddy, held-out style papercut, three auxiliary styles and contents, seed 0)
is exported once; ``lora`` trains the content and the style source LoRAs that the merging methods read; every
other method runs once through ``b4m.run_method``. Results go to a Markdown table (seconds per method; the
sources' time is listed under ``lora`` and is not included in the merges' times).

    B4M_THREADS=1 python benchmarks/methods_cost.py --out runs/methods_cost --md benchmarks/methods_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    import torch

    import b4m
    from b4m.methods import all_methods
    from b4m.world.export import export_concept

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/methods_cost"))
    parser.add_argument("--md", type=Path, default=Path("benchmarks/methods_cost.md"))
    parser.add_argument("--methods", nargs="+", help="subset of method ids (default: all)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train every trained method this many steps (default: its preset)",
    )
    args = parser.parse_args(argv)
    out = args.out
    data = out / "data"

    def once(folder: Path, **kw) -> Path:
        if not (folder / "metadata.jsonl").is_file():
            export_concept(folder, seed=0, overwrite=True, **kw)
        return folder

    images = {
        "content_images": once(data / "content", content="teddy", n=4, content_word="teddy"),
        "content_prompt": "a photo of a teddy",
        "style_images": once(data / "style", style="papercut", n=3, style_word="papercut"),
    }
    aux = {
        "aux_styles": [
            str(once(data / f"aux-style-{s}", style=s, n=1)) for s in ("stripes", "dots", "checker")
        ],
        "aux_contents": [
            str(once(data / f"aux-content-{c}", content=c, n=1)) for c in ("car", "house", "fish")
        ],
    }
    trained = {"lora", "joint", "ziplora", "duolora", "qrlora", "b4m", "b4m-official"}
    quick = {} if args.steps is None else {"steps": args.steps}
    times: dict[str, tuple[float, float]] = {}  # id -> (CPU seconds, wall seconds)
    t0, c0 = time.perf_counter(), time.process_time()
    c = b4m.run_method("lora", out=out / "lora-content", overwrite=True, progress=False, **images)
    s = b4m.run_method(
        "lora",
        concept="style",
        out=out / "lora-style",
        overwrite=True,
        progress=False,
        style_images=images["style_images"],
    )
    times["lora"] = ((time.process_time() - c0) / 2, (time.perf_counter() - t0) / 2)
    sources = {"content_lora": c, "style_lora": s}
    inputs = {  # cheapest first
        "direct-merge": sources,
        "nplora": sources,
        "klora": sources,
        "ziplora": images | sources,
        "duolora": images | sources,
        "joint": images,
        "qrlora": images,
        "b4m": images | aux,
        "b4m-official": images | aux,
    }
    for method_id in args.methods or list(inputs):
        t0, c0 = time.perf_counter(), time.process_time()
        extra = quick if method_id in trained else {}
        if quick and method_id.startswith("b4m"):
            extra = {"steps": args.steps, "stage2_steps": args.steps}
        b4m.run_method(
            method_id, out=out / method_id, overwrite=True, progress=False, **inputs[method_id], **extra
        )
        times[method_id] = (time.process_time() - c0, time.perf_counter() - t0)
        print(f"{method_id}: {times[method_id][0]:.1f} CPU s, {times[method_id][1]:.1f} s wall", flush=True)
        (out / "times.json").write_text(json.dumps(times, indent=2))

    methods = all_methods()
    lines = [
        "# Cost of every method on the built-in world",
        "",
        "CPU time (and wall time) of one run with the method's defaults on the built-in base model (32 px, the",
        f"demo's data), `B4M_THREADS={os.environ.get('B4M_THREADS', '?')}` ({torch.get_num_threads()} torch "
        f"thread), {platform.machine()} CPU. The 2-core machine was **shared with other heavy jobs** that ran at a",
        "higher priority, so wall times are inflated and noisy; the CPU seconds of the single-threaded process are",
        "the comparable cost. `lora` is one source LoRA (the mean of the content and the style one); the merges'",
        "times exclude their sources.",
        ""
        if args.steps is None
        else f"**Quick run: every trained method (both B4M stages) ran {args.steps} steps**, not its preset.",
        "",
        "    B4M_THREADS=1 python benchmarks/methods_cost.py --out runs/methods_cost --md benchmarks/methods_cost.md",
        "",
        "| method | trains | CPU s | wall s |",
        "|---|---|---:|---:|",
    ]
    for method_id, (cpu, wall) in times.items():
        cells = [f"{x:.0f}" if x >= 1 else "< 1" for x in (cpu, wall)]
        lines.append(f"| `{method_id}` | {methods[method_id].trains} | {cells[0]} | {cells[1]} |")
    args.md.write_text("\n".join(lines) + "\n")
    (out / "times.json").write_text(json.dumps(times, indent=2))
    print(args.md)
    return args.md


if __name__ == "__main__":
    main()
