"""Jobs on the built-in base model: train it, judge fresh samples against its quality bars, draw a sample
grid, locate where its style errors arise, and ship a trained pipeline as the built-in model.

One frozen config per job (``b4m base eval --help`` lists each field); the model's own settings are
:class:`b4m.models.base.config.BaseModelConfig`. The customizability check is :mod:`b4m.eval.customize`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from b4m.config import opt, to_dict
from b4m.diffusion.builtin_base import BASE_INFO

if TYPE_CHECKING:
    import torch

    from b4m.models.base.config import BaseModelConfig

__all__ = [
    "BaseDiagnoseConfig",
    "BaseEvalConfig",
    "BaseGridConfig",
    "BaseShipConfig",
    "diagnose_base",
    "evaluate_base",
    "sample_grid",
    "ship_base",
    "train_base",
]

_PATH_HELP = "base pipeline folder (default: the shipped one, src/b4m/assets/base)"


@dataclass(frozen=True)
class BaseEvalConfig:
    """``b4m base eval``: judge fresh samples of a base pipeline against the quality bars, one row per
    guidance scale and step count."""

    path: str | None = opt(None, _PATH_HELP)
    guidance: list[float] = opt([BASE_INFO.guidance_scale], "classifier-free guidance scales, one row each")
    steps: list[int] = opt([BASE_INFO.num_inference_steps], "sampling steps, one row each")
    n_per_concept: int = opt(16, "samples per held-in content and per style")
    seed: int = opt(1234, "seed of the first sample")
    threads: int = opt(2, "torch CPU threads")
    json: Path | None = opt(None, "write the rows here (JSON), e.g. for b4m base ship --eval-json")
    progress: bool = opt(True, "progress bars")


@dataclass(frozen=True)
class BaseGridConfig:
    """``b4m base grid``: one row per held-in style, then prompts with attributes, then held-out contents."""

    path: str | None = opt(None, _PATH_HELP)
    out: Path = opt(Path("docs/images/base_samples.png"), "PNG to write")
    cols: int = opt(6, "images per row")
    scale: int = opt(2, "pixel magnification of the saved grid")
    seed: int = opt(0, "seed of the prompts' random attributes and of the samples")
    guidance_scale: float | None = opt(None, "classifier-free guidance (default: the folder's recorded one)")
    threads: int = opt(2, "torch CPU threads")
    prompts: bool = opt(False, "also write the prompts next to the image (.txt)")


@dataclass(frozen=True)
class BaseDiagnoseConfig:
    """``b4m base diagnose``: SDEdit style accuracy by noise strength, and the style judge under warps."""

    path: str | None = opt(None, _PATH_HELP)
    strengths: list[float] = opt([0.2, 0.5, 0.7, 0.9, 1.0], "SDEdit noise strengths, one row each")
    n_per_concept: int = opt(8, "held-in scenes per content and per style")
    seed: int = opt(99, "seed of the scenes, renders and samples")
    threads: int = opt(2, "torch CPU threads")
    json: Path | None = opt(None, "write the measurements here (JSON)")


@dataclass(frozen=True)
class BaseShipConfig:
    """``b4m base ship``: copy a trained pipeline into ``src/b4m/assets/base`` with its measured settings."""

    path: Path | None = opt(None, "trained pipeline folder to ship, e.g. runs/base/pipeline (required)")
    guidance_scale: float | None = opt(None, "recommended guidance, as measured by b4m base eval")
    steps: int | None = opt(None, "recommended sampling steps")
    eval_json: Path | None = opt(None, "evaluation results (b4m base eval --json) to store in b4m_base.json")

    def __post_init__(self) -> None:
        if self.path is None:
            raise ValueError("--path is required: the trained pipeline folder, e.g. runs/base/pipeline")


def train_base(cfg: BaseModelConfig, out: str | Path, resume: bool = True, progress: bool = True) -> Path:
    """Train the base model into ``out`` (resuming from its checkpoints unless ``resume=False``); prints the
    machine and the config first, so that a log says what ran where."""
    import torch

    from b4m.models.base.train import train_base_model

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cpus, torch {torch.__version__}")
    print("config:", json.dumps(to_dict(cfg)))
    t0 = time.time()
    path = train_base_model(cfg, out, progress=progress, resume=resume)
    print(f"pipeline written to {path} in {time.time() - t0:.0f} s (this invocation)")
    return Path(path)


def _check_pipeline(path: str | Path | None) -> None:
    """A missing ``--path`` folder is a one-line error before torch loads (None: the shipped model)."""
    from b4m.errors import B4MError

    if path is not None and not (Path(path) / "model_index.json").is_file():
        raise B4MError(
            f"--path {path}: no base pipeline there (model_index.json); pass e.g. runs/base/pipeline"
        )


def _write_json(path: Path | None, data: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def evaluate_base(cfg: BaseEvalConfig) -> list[dict[str, Any]]:
    """One :func:`b4m.models.base.evaluate.evaluate_base_model` row per guidance scale x step count (printed as
    they finish, written to ``cfg.json``)."""
    _check_pipeline(cfg.path)
    import torch

    from b4m.diffusion.builtin_base import load_base_pipeline
    from b4m.models.base.evaluate import evaluate_base_model
    from b4m.models.judges.network import WorldJudges

    torch.set_num_threads(cfg.threads)
    pipe = load_base_pipeline(cfg.path)
    judges = WorldJudges.load()
    rows = []
    for gs in cfg.guidance:
        for steps in cfg.steps:
            t0 = time.time()
            r = evaluate_base_model(
                pipe, judges, n_per_concept=cfg.n_per_concept, seed=cfg.seed, num_inference_steps=steps,
                guidance_scale=gs, progress=cfg.progress,
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
    _write_json(cfg.json, rows)
    return rows


def sample_grid(cfg: BaseGridConfig) -> Path:
    """Write the sample grid PNG (and, with ``cfg.prompts``, its prompts as .txt); returns its path."""
    _check_pipeline(cfg.path)
    import numpy as np
    import torch

    from b4m.diffusion.builtin_base import load_base_pipeline
    from b4m.models.base.sample import generate
    from b4m.world.concepts import HELD_IN_CONTENTS, HELD_IN_STYLES, HELD_OUT_CONTENTS
    from b4m.world.render import Scene, caption
    from b4m.world.sheet import image_grid

    torch.set_num_threads(cfg.threads)
    pipe = load_base_pipeline(cfg.path)
    rng = np.random.default_rng(cfg.seed)
    contents = list(HELD_IN_CONTENTS)
    styles = list(HELD_IN_STYLES)
    prompts = []
    for i, s in enumerate(styles):
        for j in range(cfg.cols):
            prompts.append(caption(Scene(content=contents[(i * 5 + j) % len(contents)], style=s)))
    attr_scenes = [
        Scene(content=contents[int(rng.integers(len(contents)))], style=styles[int(rng.integers(len(styles)))],
              position=p, size=z, background=b)
        for p, z, b in [("left", "small", "white"), ("right", "small", "white"), ("center", "large", "black"),
                        ("left", "medium", "blue"), ("right", "large", "yellow"), ("center", "small", "blue")]
    ]  # fmt: skip
    prompts += [caption(s) for s in attr_scenes]
    prompts += [caption(Scene(content=c, style="flat")) for c in HELD_OUT_CONTENTS]
    images = generate(pipe, prompts, seed=cfg.seed, guidance_scale=cfg.guidance_scale)
    tiles = [im.permute(1, 2, 0).numpy() for im in images]
    grid = image_grid(tiles, ncols=cfg.cols)
    grid = grid.resize((grid.width * cfg.scale, grid.height * cfg.scale))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    if cfg.prompts:
        out.with_suffix(".txt").write_text("\n".join(prompts) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB); rows: {len(styles)} styles, "
          "then attribute prompts, then held-out contents (flat style)")  # fmt: skip
    return out


def _elastic(images: torch.Tensor, px: float, smooth: float, gen: torch.Generator) -> torch.Tensor:
    """Warp each image by a random displacement field: Gaussian noise blurred with ``sigma=smooth`` pixels,
    scaled to an RMS displacement of ``px`` pixels (border padding)."""
    import torch
    import torch.nn.functional as F

    from b4m.models.judges.augment import gaussian_blur

    b, _, h, w = images.shape
    d = gaussian_blur(torch.randn(b, 2, h, w, generator=gen), smooth)
    d = d / d.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * px * 2 / w  # grid units span 2 / w per px
    grid = F.affine_grid(torch.eye(2, 3).expand(b, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid + d.permute(0, 2, 3, 1), padding_mode="border", align_corners=False)


def diagnose_base(cfg: BaseDiagnoseConfig) -> dict[str, Any]:
    """Two measurements behind the style gap: (1) SDEdit from renders: noise a render to a given strength and
    let the model finish it with the true prompt; style accuracy per strength shows at which noise levels the
    model loses the texture. (2) The style judge on elastically warped renders: how much texture distortion
    it tolerates."""
    _check_pipeline(cfg.path)
    import numpy as np
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    from b4m.diffusion.builtin_base import load_base_pipeline, read_base_info
    from b4m.models.base.evaluate import eval_scenes
    from b4m.models.judges.data import render_batch
    from b4m.models.judges.network import WorldJudges
    from b4m.world.render import caption

    torch.set_num_threads(cfg.threads)
    judges = WorldJudges.load()
    scenes = eval_scenes(cfg.n_per_concept, cfg.seed)["held_in"]
    renders = render_batch(scenes, [cfg.seed + i for i in range(len(scenes))])

    def style_acc(images: torch.Tensor) -> float:
        pred = judges.predict(images)["style"]
        return float(np.mean([p == s.style for p, s in zip(pred, scenes, strict=True)]))

    rows: dict[str, Any] = {"n": len(scenes), "renders": style_acc(renders)}
    print(f"{len(scenes)} held-in scenes; style judge on the renders: {rows['renders']:.3f}")
    pipe = load_base_pipeline(cfg.path)
    info = read_base_info(cfg.path)
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    prompts = [caption(s) for s in scenes]
    for strength in cfg.strengths:
        out = []
        for i in range(0, len(scenes), 64):
            out.append(
                i2i(prompts[i : i + 64], image=renders[i : i + 64], strength=strength,
                    num_inference_steps=info.num_inference_steps, guidance_scale=info.guidance_scale,
                    generator=torch.Generator().manual_seed(cfg.seed + i), output_type="pt").images
            )  # fmt: skip
        rows[f"sdedit_{strength}"] = acc = style_acc(torch.cat(out).float().clamp(0, 1))
        print(f"SDEdit strength {strength}: style {acc:.3f}", flush=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    for smooth in (4.0, 2.0):
        for px in (0.5, 1.0, 1.5, 2.0):
            rows[f"warp_{px}px_sigma{smooth}"] = acc = style_acc(_elastic(renders, px, smooth, gen))
            print(f"renders warped {px} px RMS (field sigma {smooth} px): style {acc:.3f}", flush=True)
    _write_json(cfg.json, rows)
    return rows


def ship_base(cfg: BaseShipConfig, dst: str | Path | None = None) -> Path:
    """Copy ``cfg.path`` (and its run's ``train_log.jsonl``) to ``dst`` (default: the built-in model's folder,
    replaced), recording the recommended settings and the evaluation in its ``b4m_base.json``."""
    from b4m.diffusion.builtin_base import INFO_FILE, default_base_path
    from b4m.errors import B4MError

    src = Path(cfg.path)  # type: ignore[arg-type]  # checked by BaseShipConfig
    if not (src / INFO_FILE).is_file():
        raise B4MError(
            f"--path {src}: not a trained base pipeline (no {INFO_FILE}); pass e.g. runs/base/pipeline"
        )
    if cfg.eval_json and not Path(cfg.eval_json).is_file():
        raise B4MError(f"--eval-json {cfg.eval_json}: no such file; write it with b4m base eval --json")
    dst = Path(dst) if dst is not None else default_base_path()
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    log = src.parent / "train_log.jsonl"
    if log.exists():
        shutil.copy(log, dst / "train_log.jsonl")
    info_file = dst / INFO_FILE
    info = json.loads(info_file.read_text())
    if cfg.guidance_scale is not None:
        info["guidance_scale"] = cfg.guidance_scale
    if cfg.steps is not None:
        info["num_inference_steps"] = cfg.steps
    if cfg.eval_json:
        info["quality"] = json.loads(Path(cfg.eval_json).read_text())
    info_file.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"copied {src} -> {dst} ({total / 1e6:.1f} MB)")
    return dst
