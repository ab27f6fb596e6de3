"""The Python API: one function per CLI command, each taking a config file and/or keyword options.

import b4m
content = b4m.train_content(images="refs/teddy", prompt="a photo of a snq teddy", aux=["s1", "s2", "s3"])
style = b4m.train_style(images="refs/paper", prompt="a cup in wzk papercut style", aux=["c1", "c2", "c3"])
fused = b4m.fuse(content=content, style=style)
b4m.generate(adapter=fused, prompt=["a snq teddy in wzk papercut style"], n=4)
b4m.load_into(pipe, fused, content_scale=1.0, style_scale=0.6)     # any diffusers pipeline, stock LoRA loading
b4m.export(fused, "teddy_paper_s06.safetensors", style_scale=0.6)  # the strengths baked into one file
b4m.export(fused, "parts", split=True)                             # style / content / interaction LoRAs
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from b4m import threads
from b4m.checks import check_out_folder, check_resolution, finite, integer_at_least, raise_problems
from b4m.config import load_config
from b4m.errors import B4MError
from b4m.io import save_image
from b4m.options import GenerateConfig, Stage1Config, Stage2Config
from b4m.owned import claim
from b4m.prompts import check_prompts

__all__ = ["demo", "export", "fuse", "generate", "load_into", "run_method", "train_content", "train_style"]


def train_content(config: str | Path | None = None, progress: bool = True, **options: Any) -> Path:
    """Stage 1, content: the target images train ``B``, auxiliary styles train ``D``. Returns the adapter file."""
    from b4m.train.stage1 import train_stage1

    return train_stage1(load_config(Stage1Config, config, options), "content", progress=progress)


def train_style(config: str | Path | None = None, progress: bool = True, **options: Any) -> Path:
    """Stage 1, style: the target images train ``D``, auxiliary contents train ``B``. Returns the adapter file."""
    from b4m.train.stage1 import train_stage1

    return train_stage1(load_config(Stage1Config, config, options), "style", progress=progress)


def fuse(config: str | Path | None = None, progress: bool = True, **options: Any) -> Path:
    """Stage 2: fuse a content and a style adapter and fine-tune with Riemannian preconditioning."""
    from b4m.train.stage2 import train_stage2

    return train_stage2(load_config(Stage2Config, config, options), progress=progress)


def generate(config: str | Path | None = None, progress: bool = True, **options: Any) -> list[Path]:
    """Generate ``n`` images per prompt; writes PNGs and ``grid.png`` into ``out``. Returns the image paths."""
    from PIL import Image

    from b4m.adapters.codec import load_lora
    from b4m.diffusion.pipeline import load_pipeline
    from b4m.diffusion.sampling import check_base_model, generation_defaults, load_adapter, sample
    from b4m.world.sheet import image_grid

    cfg = load_config(GenerateConfig, config, options)
    problems: list[str] = []
    if not cfg.prompt or not all(p.strip() for p in cfg.prompt):
        problems.append("--prompt: give at least one prompt, none of them empty")
    integer_at_least(cfg.n, "-n", 1, problems, " images per prompt")
    integer_at_least(cfg.steps, "--steps", 1, problems, " sampling steps")
    finite(cfg.guidance, "--guidance", problems)
    for name, value in (("--content-scale", cfg.content_scale), ("--style-scale", cfg.style_scale)):
        if not math.isfinite(value):
            problems.append(f"{name} {value}: give a finite number")
    check_resolution(cfg.resolution, cfg.base, "--resolution", problems)
    raise_problems(problems)
    out = Path(cfg.out)
    check_out_folder(out)
    names = [out / f"{i:02d}_{j:02d}.png" for i in range(len(cfg.prompt)) for j in range(cfg.n)]
    folder = claim(out, [p.name for p in (*names, out / "grid.png")], "--out", cfg.overwrite)
    clash = [p for p in [*names, out / "grid.png"] if p.exists()]
    if clash and not cfg.overwrite:
        raise B4MError(
            f"--out {out}: {clash[0].name} and others exist (b4m made them); choose another --out or pass "
            "--overwrite to replace them"
        )
    from b4m.methods.base import sampling_hook_for

    hook = sampling_hook_for(cfg.adapter) if cfg.adapter is not None else None  # generation-time methods
    if cfg.adapter is not None and hook is None:
        check_base_model(load_lora(cfg.adapter), cfg.base)  # a bad file fails before the model loads
    threads.apply()
    pipe = load_pipeline(cfg.base)
    defaults = generation_defaults(pipe, cfg.base)
    if hook is not None:
        hook(pipe, cfg.adapter)
    elif cfg.adapter is not None:
        load_adapter(pipe, cfg.adapter, cfg.content_scale, cfg.style_scale)
    check_prompts(pipe.tokenizer, cfg.prompt, "--prompt")
    try:
        out.mkdir(parents=True, exist_ok=True)  # before sampling: a folder that cannot be made loses nothing
    except OSError as err:
        raise B4MError(f"--out {out}: cannot create it ({err.strerror}); choose another --out") from None
    images = sample(
        pipe,
        cfg.prompt,
        n=cfg.n,
        seed=cfg.seed,
        steps=cfg.steps or defaults["steps"],
        guidance=defaults["guidance"] if cfg.guidance is None else cfg.guidance,
        resolution=cfg.resolution or defaults["resolution"],
        progress=progress,
    )
    flat = [img for row in images for img in row]
    grid = image_grid(flat, ncols=cfg.n)
    if grid.width < 512:  # tiny built-in images: enlarge the grid so people can look at it
        k = max(1, 512 // grid.width)
        grid = grid.resize((grid.width * k, grid.height * k), Image.Resampling.NEAREST)
    pictures = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for img in flat]
    for path, picture in zip([*names, out / "grid.png"], [*pictures, grid], strict=True):
        save_image(picture, path)
        folder.record(path.name)
    return names


def demo(config: str | Path | None = None, progress: bool = True, **options: Any) -> dict[str, Any]:
    """The full demo on the built-in world (see :mod:`b4m.demo`)."""
    from b4m.demo import DemoConfig, run_demo

    return run_demo(load_config(DemoConfig, config, options), progress=progress)


def run_method(method: str, config: str | Path | None = None, progress: bool = True, **options: Any) -> Path:
    """Run any registered method by id (``b4m methods`` lists them) with the shared option names
    (``base``, ``out``, ``content_images``, ``style_images``, ``content_lora``, ``style_lora``, ``steps``, ``lr``,
    ``rank``, ``seed``, ``overwrite``...); returns the adapter file. ``b4m.run_method("b4m", ...)`` is B4M."""
    from b4m.methods import run_method as _run

    return _run(method, config, progress=progress, **options)


def load_into(
    pipe: Any,
    adapter: str | Path,
    content_scale: float = 1.0,
    style_scale: float = 1.0,
    adapter_name: str = "b4m",
) -> str:
    """Load the b4m adapter file ``adapter`` into a diffusers pipeline (SD, SDXL, FLUX) at a content strength
    (scales ``B``) and a style strength (scales ``D``), through the pipeline's own ``load_lora_weights``: the
    scaled factors are an ordinary LoRA state dict, so everything diffusers does with LoRAs (``set_adapters``,
    ``fuse_lora``, ``delete_adapters``) works on it. Returns ``adapter_name``.

    ``dW = [[AC, s AD], [c BC, c s BD]]`` for ``content_scale`` ``c`` and ``style_scale`` ``s``; scales other than
    1 need a b4m PLP adapter (a plain LoRA: use ``pipe.set_adapters(name, weight)``).
    """
    from b4m.diffusion.sampling import load_adapter

    problems: list[str] = []
    for name, value in (("content_scale", content_scale), ("style_scale", style_scale)):
        if not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{name}={value!r}: give a finite number (1 keeps the trained strength)")
    if not isinstance(adapter_name, str) or not adapter_name:
        problems.append(f"adapter_name={adapter_name!r}: give a non-empty name")
    raise_problems(problems)
    load_adapter(pipe, adapter, float(content_scale), float(style_scale), adapter_name=adapter_name)
    return adapter_name


def export(
    adapter: str | Path,
    out: str | Path,
    content_scale: float | None = None,
    style_scale: float | None = None,
    split: bool = False,
    base_model_version: str | None = None,
    overwrite: bool = False,
) -> Any:
    """``b4m export``: ``adapter`` as an ordinary LoRA in kohya spelling for ComfyUI / A1111 / diffusers.

    - neither scale nor ``split``: the file as it is (:func:`b4m.adapters.convert.convert` to kohya); returns ``out``;
    - ``content_scale`` and/or ``style_scale``: those strengths baked in (``B`` scaled by the content strength,
      ``D`` by the style strength); returns ``out``;
    - ``split=True``: ``out`` is a folder; the style (``A D``), content (``B C``) and interaction (``B D``) blocks,
      and the frozen ``A C`` where it is not zero, each as its own LoRA, to be loaded together at strengths
      ``S``, ``C``, ``C*S`` and ``1``; returns the list of :class:`b4m.adapters.knobs.SplitFile`.
    """
    from b4m.adapters import knobs
    from b4m.adapters.convert import convert

    given = [
        flag
        for flag, v in (("--content-scale", content_scale), ("--style-scale", style_scale))
        if v is not None
    ]
    if split and given:
        raise B4MError(
            f"{given[0]}: --split writes the parts unscaled, so that you choose the strengths when you load them; "
            f"drop {given[0]}, or export without --split to bake the strengths into one file"
        )
    if split:
        return knobs.export_split(adapter, out, base_model_version, overwrite)
    if given:
        return knobs.export_scaled(adapter, out, content_scale, style_scale, base_model_version, overwrite)
    return convert(adapter, out, "kohya", base_model_version, overwrite, "--out")
