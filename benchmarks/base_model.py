"""Train, evaluate and ship the world's base text-to-image model (see benchmarks/base_model.md).

    python benchmarks/base_model.py train --out runs/base            # trains; resumes if killed
    python benchmarks/base_model.py eval --path runs/base/pipeline --guidance 1.5 2 3 4
    python benchmarks/base_model.py grid --path runs/base/pipeline --out docs/images/base_samples.png
    python benchmarks/base_model.py ship --path runs/base/pipeline   # copies into src/b4m/assets/base
    python benchmarks/base_model.py diagnose --path runs/base/pipeline   # where style errors arise

``--set key=value`` overrides any :class:`b4m.world.base_model.BaseModelConfig` field (JSON values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from b4m.world import base_model as bm  # noqa: E402


def _config(sets: list[str]) -> bm.BaseModelConfig:
    d = bm.BaseModelConfig().to_dict()
    for item in sets:
        key, _, value = item.partition("=")
        if key not in d:
            raise SystemExit(f"--set {item}: unknown key {key!r}; valid keys: {sorted(d)}")
        try:
            d[key] = json.loads(value)
        except json.JSONDecodeError:
            d[key] = value
    return bm.BaseModelConfig.from_dict(d)


def cmd_train(args: argparse.Namespace) -> None:
    cfg = _config(args.set)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}"
    )
    print("config:", json.dumps(cfg.to_dict()))
    t0 = time.time()
    path = bm.train_base_model(cfg, args.out, progress=not args.no_progress, resume=not args.restart)
    print(f"pipeline written to {path} in {time.time() - t0:.0f} s (this invocation)")


def _load_judges():
    from b4m.eval.judges import WorldJudges

    return WorldJudges.load()


def cmd_eval(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pipe = bm.load_base_pipeline(args.path)
    judges = _load_judges()
    rows = []
    for gs in args.guidance:
        for steps in args.steps:
            t0 = time.time()
            r = bm.evaluate_base_model(
                pipe, judges, n_per_concept=args.n_per_concept, seed=args.seed, num_inference_steps=steps,
                guidance_scale=gs, progress=not args.no_progress,
            )  # fmt: skip
            r["eval_wall_s"] = time.time() - t0
            rows.append(r)
            print(
                f"guidance {gs} steps {steps}: content {r['content_acc']:.3f} style {r['style_acc']:.3f} "
                f"attr {r['attribute_acc_mean']:.3f} {json.dumps(r['attribute_acc'])} "
                f"held-out content {r['held_out_content_acc']:.3f} style {r['held_out_style_acc']:.3f} "
                f"({r['eval_wall_s']:.0f} s)",
                flush=True,
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def cmd_grid(args: argparse.Namespace) -> None:
    from b4m.world.concepts import HELD_IN_CONTENTS, HELD_IN_STYLES, HELD_OUT_CONTENTS
    from b4m.world.render import Scene, caption
    from b4m.world.sheet import image_grid

    torch.set_num_threads(args.threads)
    pipe = bm.load_base_pipeline(args.path)
    rng = np.random.default_rng(args.seed)
    contents = list(HELD_IN_CONTENTS)
    styles = list(HELD_IN_STYLES)
    prompts = []
    for i, s in enumerate(styles):
        for j in range(args.cols):
            prompts.append(caption(Scene(content=contents[(i * 5 + j) % len(contents)], style=s)))
    attr_scenes = [
        Scene(content=contents[int(rng.integers(len(contents)))], style=styles[int(rng.integers(len(styles)))],
              position=p, size=z, background=b)
        for p, z, b in [("left", "small", "white"), ("right", "small", "white"), ("center", "large", "black"),
                        ("left", "medium", "blue"), ("right", "large", "yellow"), ("center", "small", "blue")]
    ]  # fmt: skip
    prompts += [caption(s) for s in attr_scenes]
    prompts += [caption(Scene(content=c, style="flat")) for c in HELD_OUT_CONTENTS]
    images = bm.generate(pipe, prompts, seed=args.seed, guidance_scale=args.guidance_scale)
    tiles = [im.permute(1, 2, 0).numpy() for im in images]
    grid = image_grid(tiles, ncols=args.cols)
    scale = args.scale
    grid = grid.resize((grid.width * scale, grid.height * scale))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    (Path(args.out).with_suffix(".txt")).write_text("\n".join(prompts) + "\n") if args.prompts else None
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} kB); rows: {len(styles)} styles, "
          "then attribute prompts, then held-out contents (flat style)")  # fmt: skip


def _elastic(images: torch.Tensor, px: float, smooth: float, gen: torch.Generator) -> torch.Tensor:
    """Warp each image by a random displacement field: Gaussian noise blurred with ``sigma=smooth`` pixels,
    scaled to an RMS displacement of ``px`` pixels (border padding)."""
    import torch.nn.functional as F

    from b4m.eval.judges import _blur

    b, _, h, w = images.shape
    d = _blur(torch.randn(b, 2, h, w, generator=gen), smooth)
    d = d / d.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * px * 2 / w  # grid units span 2 / w per px
    grid = F.affine_grid(torch.eye(2, 3).expand(b, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid + d.permute(0, 2, 3, 1), padding_mode="border", align_corners=False)


def cmd_diagnose(args: argparse.Namespace) -> None:
    """Two measurements behind the style gap: (1) SDEdit from renders: noise a render to a given strength and
    let the model finish it with the true prompt; style accuracy per strength shows at which noise levels the
    model loses the texture. (2) The style judge on elastically warped renders: how much texture distortion
    it tolerates."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from b4m.eval.judges import render_batch
    from b4m.world.render import caption

    torch.set_num_threads(args.threads)
    judges = _load_judges()
    scenes = bm._eval_scenes(args.n_per_concept, args.seed)["held_in"]
    renders = render_batch(scenes, [args.seed + i for i in range(len(scenes))])

    def style_acc(images: torch.Tensor) -> float:
        pred = judges.predict(images)["style"]
        return float(np.mean([p == s.style for p, s in zip(pred, scenes, strict=True)]))

    rows: dict[str, object] = {"n": len(scenes), "renders": style_acc(renders)}
    print(f"{len(scenes)} held-in scenes; style judge on the renders: {rows['renders']:.3f}")
    pipe = bm.load_base_pipeline(args.path)
    info = bm.read_base_info(args.path)
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    prompts = [caption(s) for s in scenes]
    for strength in args.strengths:
        out = []
        for i in range(0, len(scenes), 64):
            out.append(
                i2i(prompts[i : i + 64], image=renders[i : i + 64], strength=strength,
                    num_inference_steps=info.num_inference_steps, guidance_scale=info.guidance_scale,
                    generator=torch.Generator().manual_seed(args.seed + i), output_type="pt").images
            )  # fmt: skip
        rows[f"sdedit_{strength}"] = acc = style_acc(torch.cat(out).float().clamp(0, 1))
        print(f"SDEdit strength {strength}: style {acc:.3f}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    for smooth in (4.0, 2.0):
        for px in (0.5, 1.0, 1.5, 2.0):
            rows[f"warp_{px}px_sigma{smooth}"] = acc = style_acc(_elastic(renders, px, smooth, gen))
            print(f"renders warped {px} px RMS (field sigma {smooth} px): style {acc:.3f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def cmd_ship(args: argparse.Namespace) -> None:
    src = Path(args.path)
    dst = bm.default_base_path()
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    log = src.parent / "train_log.jsonl"
    if log.exists():
        shutil.copy(log, dst / "train_log.jsonl")
    info_file = dst / bm.INFO_FILE
    info = json.loads(info_file.read_text())
    if args.guidance_scale is not None:
        info["guidance_scale"] = args.guidance_scale
    if args.steps is not None:
        info["num_inference_steps"] = args.steps
    if args.eval_json:
        info["quality"] = json.loads(Path(args.eval_json).read_text())
    info_file.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"copied {src} -> {dst} ({total / 1e6:.1f} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the VAE, UNet and text encoder (resumes if killed)")
    t.add_argument("--out", default="runs/base")
    t.add_argument("--set", action="append", default=[], help="config override key=value")
    t.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="judge fresh samples against the quality bars")
    e.add_argument("--path", default=None)
    e.add_argument("--guidance", type=float, nargs="+", default=[bm.BASE_INFO.guidance_scale])
    e.add_argument("--steps", type=int, nargs="+", default=[bm.BASE_INFO.num_inference_steps])
    e.add_argument("--n-per-concept", type=int, default=16)
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--json", default=None)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=cmd_eval)
    g = sub.add_parser("grid", help="write a sample grid (styles, attributes, held-out contents)")
    g.add_argument("--path", default=None)
    g.add_argument("--out", default="docs/images/base_samples.png")
    g.add_argument("--cols", type=int, default=6)
    g.add_argument("--scale", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance-scale", type=float, default=None)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--prompts", action="store_true", help="also write the prompts next to the image")
    g.set_defaults(fn=cmd_grid)
    s = sub.add_parser("ship", help="copy a trained pipeline into src/b4m/assets/base")
    s.add_argument("--path", required=True)
    s.add_argument("--guidance-scale", type=float, default=None, help="recommended guidance (measured)")
    s.add_argument("--steps", type=int, default=None, help="recommended sampling steps")
    s.add_argument("--eval-json", default=None, help="evaluation results to store in b4m_base.json")
    s.set_defaults(fn=cmd_ship)
    d = sub.add_parser("diagnose", help="SDEdit style accuracy by noise level; style judge under warps")
    d.add_argument("--path", default=None)
    d.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.5, 0.7, 0.9, 1.0])
    d.add_argument("--n-per-concept", type=int, default=8)
    d.add_argument("--seed", type=int, default=99)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--json", default=None)
    d.set_defaults(fn=cmd_diagnose)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
