"""``b4m eval``: score one adapter against content and style reference folders and a prompt file.

What is measured (B4M, Xu et al., ACM TOG 2025, Sec. 5 and Table 1; definitions of :mod:`b4m.eval.metrics`):

- **content / style / prompt alignment**, their mean and harmonic mean; with the built-in world's judges
  (default) the judges' content and style embeddings stand in for DINOv2 and CLIP, and prompt alignment is the
  fraction of the prompt's attributes (position, size, background) found in the image. With ``--clip`` and
  ``--dino`` (a local folder or a hub id, :mod:`b4m.eval.encoders`) they are the paper's: DINOv2 cosine to the
  content references, CLIP image cosine to the style references, CLIP image-text cosine to the prompt;
- **accuracies** (world judges only): the content / style judge names the target class, and the identity heads
  the target personal instance (``teddy#3``);
- **leakage**, each direction: ``leak_content`` is the cosine of the generated images' content embeddings to the
  *style* references' content centroid (the style images' subjects showing up), ``leak_content_acc`` the fraction
  the content judge labels with a content class it finds in the style references (the target's class excluded);
  ``leak_style`` / ``leak_style_acc`` are the mirror: the content references' style (a photo) showing up.
  Cosines have a floor above 0 even without leakage: compare them with the base model's.

Every score comes per image, so :mod:`b4m.eval.stats` gives 95 % bootstrap intervals over the images.

This module is the command (:class:`EvalConfig`, :func:`evaluate`); :mod:`b4m.eval.inputs` reads the prompt file
and the references' concepts, :mod:`b4m.eval.scorers` scores the images (both re-exported here).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from b4m.config import opt
from b4m.errors import B4MError
from b4m.eval.inputs import prompt_attributes, read_prompts, reference_concept
from b4m.eval.scorers import EncoderScorer, WorldScorer, load_scorer
from b4m.io import write_text
from b4m.owned import check_file, record_file

__all__ = [
    "EncoderScorer",
    "EvalConfig",
    "WorldScorer",
    "evaluate",
    "format_table",
    "generate_with",
    "load_scorer",
    "prompt_attributes",
    "read_prompts",
    "reference_concept",
]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of ``b4m eval``."""

    adapter: Path | None = opt(
        None, "adapter file (.safetensors), or a generation-time method's file (K-LoRA); none: the base model"
    )
    content_images: Path | None = opt(None, "folder of content reference images")
    style_images: Path | None = opt(None, "folder of style reference images")
    prompts: Path | None = opt(
        None,
        "prompt file: one prompt per line ('#' starts a comment), or .jsonl lines {\"prompt\": ..., "
        '"attributes": {"position": "left"}}; world prompts name their attributes in words',
    )
    content: str | None = opt(
        None,
        "target content for the judges' accuracies, e.g. teddy#3 (default: from the references' metadata)",
    )
    style: str | None = opt(
        None, "target style, e.g. papercut#5 (default: from the style references' metadata.jsonl)"
    )
    n: int = opt(4, "images per prompt (seeds seed..seed+n-1)")
    seed: int = opt(0, "seed of the first image of each prompt")
    base: str = opt("builtin", "base model: 'builtin', or a diffusers SD/SDXL folder or hub id")
    steps: int | None = opt(None, "sampling steps (built-in model: its recorded default; SD/SDXL: 25)")
    guidance: float | None = opt(None, "classifier-free guidance (built-in: recorded default; SD/SDXL: 5.0)")
    resolution: int | None = opt(None, "image size in pixels (built-in: 32; SDXL 1024; SD 512)")
    content_scale: float = opt(1.0, "strength of the content part B (b4m adapters)")
    style_scale: float = opt(1.0, "strength of the style part D (b4m adapters)")
    clip: str | None = opt(
        None, "CLIP model folder or hub id; with --dino, real encoders replace the world's judges"
    )
    dino: str | None = opt(None, "DINOv2 model folder or hub id (with --clip)")
    judges: Path | None = opt(None, "world judges folder (default: the shipped ones)")
    device: str = opt("cpu", "device of the generation and of the encoders: cpu, cuda, cuda:1...")
    bootstrap: int = opt(2000, "bootstrap resamples of the 95 %% intervals")
    out: Path = opt(Path("eval.json"), "output JSON file")
    overwrite: bool = opt(False, "replace --out if it exists and b4m made it")


# --------------------------------------------------------------------------------------------- generation


def generate_with(
    pipe: Any,
    adapter: Path | None,
    prompts: Sequence[str],
    n: int,
    seed: int,
    steps: int,
    guidance: float,
    resolution: int,
    content_scale: float = 1.0,
    style_scale: float = 1.0,
    progress: bool = False,
) -> Any:
    """``(len(prompts) * n, 3, H, W)`` images of a copy of ``pipe`` with ``adapter`` (a LoRA, or a generation-time
    method's file such as K-LoRA's, installed by its sampling hook); ``pipe`` itself stays untouched."""
    import copy

    import torch

    from b4m.diffusion.sampling import load_adapter, sample
    from b4m.methods.base import sampling_hook_for

    work = copy.deepcopy(pipe)
    if adapter is not None:
        hook = sampling_hook_for(adapter)
        if hook is not None:
            hook(work, adapter)
        else:
            load_adapter(work, adapter, content_scale, style_scale)
    images = sample(work, list(prompts), n=n, seed=seed, steps=steps, guidance=guidance, resolution=resolution,
                    progress=progress)  # fmt: skip
    return torch.cat(images)


def _check(cfg: EvalConfig) -> tuple[list[str], list[dict[str, str]], str | None, str | None]:
    from b4m.checks import check_out_folder, finite, integer_at_least
    from b4m.data.folders import read_image_folder
    from b4m.world.instances import parse_concept

    problems: list[str] = []
    if cfg.content_images is None or cfg.style_images is None:
        problems.append("--content-images and --style-images: give both reference folders")
    if cfg.prompts is None:
        problems.append("--prompts: give a prompt file (one prompt per line)")
    if cfg.adapter is not None and not Path(cfg.adapter).is_file():
        problems.append(f"--adapter {cfg.adapter}: no such file")
    if (cfg.clip is None) != (cfg.dino is None):
        problems.append("--clip and --dino: give both (real encoders) or neither (the world's judges)")
    integer_at_least(cfg.n, "-n", 1, problems, " images per prompt")
    integer_at_least(cfg.steps, "--steps", 1, problems)
    integer_at_least(cfg.bootstrap, "--bootstrap", 100, problems)
    finite(cfg.guidance, "--guidance", problems)
    for option, value, kind in (("--content", cfg.content, "content"), ("--style", cfg.style, "style")):
        if value is not None:
            try:
                parse_concept(value, kind)
            except ValueError as err:
                problems.append(f"{option}: {err}")
    if problems:
        raise B4MError("; ".join(problems))
    out = Path(cfg.out)
    if out.is_dir() or out.suffix != ".json":
        problems.append(f"--out {out}: give the path of a .json file")
    if problems:
        raise B4MError("; ".join(problems))
    check_out_folder(out.parent)
    check_file(out, "--out", cfg.overwrite)
    read_image_folder(cfg.content_images, "--content-images")
    read_image_folder(cfg.style_images, "--style-images")
    prompts, attributes = read_prompts(cfg.prompts)
    content = cfg.content or reference_concept(cfg.content_images, "content")
    style = cfg.style or reference_concept(cfg.style_images, "style")
    return prompts, attributes, content, style


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Generate ``cfg.n`` images per prompt with the adapter, score them, write ``cfg.out`` (JSON); returns it."""
    from b4m import threads
    from b4m.adapters.codec import load_lora
    from b4m.config import to_dict
    from b4m.data.folders import load_images, read_image_folder
    from b4m.diffusion.pipeline import load_pipeline
    from b4m.diffusion.sampling import check_base_model, generation_defaults
    from b4m.eval.stats import bootstrap
    from b4m.methods.base import sampling_hook_for
    from b4m.prompts import check_prompts

    prompts, attributes, content, style = _check(cfg)
    if cfg.adapter is not None and sampling_hook_for(cfg.adapter) is None:
        check_base_model(load_lora(cfg.adapter), cfg.base)  # a bad file fails before the model loads
    threads.apply()
    scorer = load_scorer(cfg.clip, cfg.dino, cfg.judges, cfg.device)
    pipe = load_pipeline(cfg.base).to(cfg.device)
    check_prompts(pipe.tokenizer, prompts, "--prompts")
    gen = generation_defaults(pipe, cfg.base)
    res = cfg.resolution or gen["resolution"]
    images = generate_with(pipe, cfg.adapter, prompts, cfg.n, cfg.seed, cfg.steps or gen["steps"],
                           gen["guidance"] if cfg.guidance is None else cfg.guidance, res,
                           cfg.content_scale, cfg.style_scale, progress)  # fmt: skip
    content_refs = load_images(read_image_folder(cfg.content_images).paths, res)
    style_refs = load_images(read_image_folder(cfg.style_images).paths, res)
    per = scorer.per_image(images, content_refs, style_refs, content, style,
                           [a for a in attributes for _ in range(cfg.n)],
                           [p for p in prompts for _ in range(cfg.n)])  # fmt: skip
    scores, ci, _ = bootstrap(per, cfg.bootstrap, cfg.seed)
    results = {
        "adapter": None if cfg.adapter is None else str(cfg.adapter),
        "judges": scorer.name,
        "content": content,
        "style": style,
        "scores": {**scores, "n": int(images.shape[0])},
        "ci": ci,
        "prompts": prompts,
        "attributes": attributes,
        "config": to_dict(cfg),
    }
    record_file(write_text(Path(cfg.out), json.dumps(results, indent=2) + "\n"))
    return results


def format_table(results: dict[str, Any]) -> str:
    """A short table: one line per metric, value and 95 % interval."""
    lines = [f"{'metric':<18}{'value':>8}   95 % interval"]
    for key, value in results["scores"].items():
        if key == "n":
            continue
        lo, hi = results["ci"].get(key, (value, value))
        lines.append(f"{key:<18}{value:8.3f}   [{lo:.3f}, {hi:.3f}]")
    lines.append(f"{'images':<18}{results['scores']['n']:8d}   judges: {results['judges']}")
    return "\n".join(lines)
