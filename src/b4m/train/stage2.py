"""Stage 2 of B4M: fuse ``LoRA_f = [A; B_content] x [C, D_style]`` and fine-tune it (Sec. 4.2 end, 4.3).

The fused adapter keeps ``B`` of the content adapter and ``D`` of the style adapter exactly. Fine-tuning then
updates both for a few dozen steps on content images (content prompt) and style images (style prompt), one of
each per step in one batched forward, with the Riemannian preconditioner of Eq. 13-14 (``riemannian.py``).
The official stage 2 zeroes its gradients before preconditioning (so never applies it) and re-initialises half
of the fused layers; b4m does neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from b4m.adapters.codec import LoraFile
from b4m.adapters.files import check_fusable, read_plp_file, save_plp
from b4m.adapters.inject import inject_plp
from b4m.adapters.plp import PLPSpec, mcp_routing
from b4m.checks import (
    check_base,
    check_out_folder,
    check_resolution,
    finite,
    integer_at_least,
    raise_problems,
)
from b4m.config import to_dict
from b4m.data.folders import check_images, read_image_folder
from b4m.data.repeats import check_repeats
from b4m.diffusion.pipeline import (
    base_family,
    base_model_name,
    denoiser,
    family_of_base,
    per_sample_loss,
    training_scheduler,
)
from b4m.errors import B4MError
from b4m.options import Stage2Config, resolve_preset, split_deviations
from b4m.paths import portable, portable_config, resolve_recorded
from b4m.train.datasets import cache_all
from b4m.train.identity import data_fingerprint, run_settings
from b4m.train.loop import CachedSet, StepFn, maybe, run_steps, sample_batch
from b4m.train.previews import plp_scales, stage2_plan
from b4m.train.recipe import Objective, check_family, check_recipe, loop_options, save_dtype
from b4m.train.riemannian import make_stage2_optimizer
from b4m.train.session import Session
from b4m.train.watch import check_options

__all__ = ["fuse", "train_stage2"]


def fuse(content_path: str | Path, style_path: str | Path) -> tuple[LoraFile, PLPSpec]:
    """``LoRA_f``: for every layer, ``U = U_content = [A; B_content]`` and ``V = V_style = [C, D_style]``.

    Refuses adapters with different basis ids, ranks, rho, targets or base models (``check_fusable``), and
    a content/style pair given the wrong way round. The recorded image folders are returned as paths to open
    (relative to where each adapter lies).
    """
    content, spec = read_plp_file(content_path)
    style, _ = read_plp_file(style_path)
    for lora, want, option in ((content, "content", "--content"), (style, "style", "--style")):
        role = lora.meta.get("role")
        if role is not None and role != want:
            raise B4MError(f"{option} {lora.path}: this is a {role} adapter; give the {want} adapter here")
    check_fusable(content, style)
    factors = {m: (content.factors[m][0], style.factors[m][1]) for m in content.factors}
    words = list(dict.fromkeys(content.meta.get("trigger_words", []) + style.meta.get("trigger_words", [])))
    meta = {
        k: content.meta[k]
        for k in (
            "rank",
            "rho",
            "orth",
            "basis_seed",
            "basis_id",
            "target_modules",
            "base_model",
            "base_family",
        )
        if k in content.meta
    }

    def part(lora: LoraFile) -> dict[str, Any]:
        images = resolve_recorded(lora.meta.get("images"), Path(lora.path).parent)  # type: ignore[arg-type]
        return {"prompt": lora.meta.get("prompt"), "images": None if images is None else str(images)}

    meta.update(
        method="b4m",
        role="fused",
        trigger_words=words,
        content=part(content) | {"file": Path(content_path).name},
        style=part(style) | {"file": Path(style_path).name},
    )
    return LoraFile(factors=factors, meta=meta), spec


def _recorded(value: Any, lora_meta: dict, key: str, option: str, required: bool = True) -> Any:
    """The option's value, else what the stage-1 adapter recorded (its images folder, its prompt)."""
    if value is not None:
        return value
    recorded = lora_meta.get(key)
    if required and not recorded:
        raise B4MError(f"{option}: not given, and the adapter file records no {key}; pass {option}")
    return recorded


def _check(cfg: Stage2Config, pipe: Any = None) -> None:
    problems: list[str] = []
    integer_at_least(cfg.stage2_steps, "--stage2-steps", 0, problems, " (0: fuse only)")
    finite(cfg.stage2_lr, "--stage2-lr", problems, positive=True)
    finite(cfg.delta, "--delta", problems)
    finite(cfg.delta_rel, "--delta-rel", problems)
    integer_at_least(cfg.reinit_every, "--reinit-every", 0, problems, " (0: none)")
    integer_at_least(cfg.checkpoint_every, "--checkpoint-every", 0, problems, " (0: no checkpoints)")
    check_options(cfg, problems)
    check_repeats(cfg.repeats, problems)
    check_recipe(cfg, problems)
    if pipe is None:
        check_base(cfg.base, problems)
    if not problems or not problems[-1].startswith("--base"):  # a missing base has no size to check against
        check_resolution(cfg.resolution, cfg.base, "--resolution", problems, pipe=pipe)
    raise_problems(problems)
    check_family(cfg, base_family(pipe, cfg.base) if pipe is not None else family_of_base(cfg.base))


def train_stage2(
    cfg: Stage2Config,
    pipe: Any = None,
    progress: bool = True,
    policy: str | None = None,
) -> Path:
    """Fuse ``cfg.content`` and ``cfg.style``, fine-tune ``cfg.stage2_steps`` steps, save; returns the file.

    Everything (options, output folder, both adapters, the training images) is checked before the model
    loads; a resumable checkpoint is saved every ``cfg.checkpoint_every`` steps. ``cfg.reinit_every=k > 0``
    reproduces the official code (``b4m run b4m-official``, k = 2: half the layers): ``B`` and ``D`` of every
    k-th fused layer (sorted by name) are reset to their stage-1 start, zero, before fine-tuning."""
    if cfg.content is None or cfg.style is None:
        raise B4MError("give both --content and --style adapter files (from 'b4m train content/style')")
    cfg = resolve_preset(cfg)
    _check(cfg, pipe)
    out = Path(cfg.out or Path("runs") / "fused")
    check_out_folder(out)
    fused, spec = fuse(cfg.content, cfg.style)
    if fused.meta.get("base_model") not in (None, base_model_name(cfg.base)):
        raise B4MError(
            f"--base {cfg.base}: the adapters were trained on {fused.meta['base_model']}; use that base model"
        )
    c_meta, s_meta = fused.meta["content"], fused.meta["style"]
    sources = []
    if cfg.stage2_steps > 0:
        for option, value, meta, prompt_opt, prompt in (
            ("--content-images", cfg.content_images, c_meta, "--content-prompt", cfg.content_prompt),
            ("--style-images", cfg.style_images, s_meta, "--style-prompt", cfg.style_prompt),
        ):
            folder = _recorded(value, meta, "images", option)
            prompt = _recorded(prompt, meta, "prompt", prompt_opt, required=False)
            images = read_image_folder(folder, option)
            check_images(images, masks=cfg.masks)
            sources.append((folder, prompt, option, images, images.prompts(prompt, option)))
    session = Session(
        out,
        run_settings(to_dict(cfg)) | {"fused": fused.meta.get("basis_id")},
        data_fingerprint([(imgs.paths, prompts) for *_, imgs, prompts in sources])
        + "-"
        + _factors_digest(fused),
        policy=policy or ("overwrite" if cfg.overwrite else "continue"),
        checkpoint_every=cfg.checkpoint_every,
        options=cfg,
    )
    if session.finished is not None:
        return session.finished

    pipe = session.start(cfg.base, pipe, cfg.mixed_precision)
    accelerator = session.accelerator
    adapter = inject_plp(denoiser(pipe), spec, name="b4m", only=list(fused.factors))
    adapter.load_factors(fused.factors, source=f"{cfg.content} + {cfg.style}")
    if cfg.reinit_every > 0:
        with torch.no_grad():
            for i, module in enumerate(sorted(adapter.module_names)):
                if i % cfg.reinit_every == 0:
                    adapter.up(module).learnable.zero_()
                    adapter.down(module).learnable.zero_()

    checkpoints = None
    if cfg.stage2_steps > 0:
        entries = [(folder, prompt, option) for folder, prompt, option, *_ in sources]
        sets = cache_all(pipe, entries, cfg.resolution, cfg)  # one bucket a step: the content image's
        pairs = [
            (adapter.up(m).learnable, adapter.down(m).learnable, adapter.up(m).frozen, adapter.down(m).frozen)
            for m in adapter.module_names
        ]
        for p in adapter.parameters("BD"):  # a part left out (--stage2-parts) keeps its fused values
            p.requires_grad_(False)
        for p in adapter.parameters(cfg.stage2_parts):
            p.requires_grad_(True)
        optimizer = make_stage2_optimizer(
            pairs,
            cfg.optimizer,
            lr=cfg.stage2_lr,
            weight_decay=cfg.stage2_weight_decay,
            operands=cfg.operands,
            delta=cfg.delta,
            delta_rel=cfg.delta_rel,
            normalize=cfg.normalize,
        )
        unet = accelerator.prepare(denoiser(pipe))
        scheduler = training_scheduler(pipe)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + accelerator.process_index)
        checkpoints = session.checkpoints(adapter.named_parts(), gen)
        run_steps(
            _step_fn(unet, scheduler, sets, gen, Objective.of(cfg), own=cfg.stage2_routing == "own"),
            after_step=UpdateNorms(adapter),
            steps=cfg.stage2_steps,
            accelerator=accelerator,
            model=unet,
            optimizer=optimizer,
            log=session.log,
            name="stage 2",
            desc="stage 2 (fuse + RP)",
            progress=progress,
            checkpoints=checkpoints,
            lr_option="--stage2-lr",
            **loop_options(cfg, optimizer, cfg.stage2_steps, stage2=True),
            watch=session.watch(
                "stage 2",
                stage2_plan(sets[0].prompts[0], sets[1].prompts[0], plp_scales(adapter)),
                cfg.resolution,
            ),
        )

    extra_meta = {
        k: v
        for k, v in fused.meta.items()
        if k not in ("rank", "rho", "orth", "basis_seed", "basis_id", "target_modules")
    }
    for part in ("content", "style"):
        images = extra_meta[part].get("images")
        extra_meta[part] = extra_meta[part] | {"images": images and portable(images, out)}
    settings, deviations = split_deviations(cfg)  # a run as the paper describes it records no deviation
    extra_meta.update(deviations)

    def write(path: Path, hint: str) -> Path:
        return save_plp(
            adapter,
            path,
            hint=hint,
            dtype=save_dtype(cfg),
            stage=2,
            config=portable_config(settings, out),
            **extra_meta,
        )

    return session.finish(write, checkpoints)


def _step_fn(
    unet: torch.nn.Module,
    scheduler: Any,
    sets: list[CachedSet],
    gen: torch.Generator,
    objective: Objective | None = None,
    own: bool = False,
) -> StepFn:
    """``L_content + L_style`` on one content and one style sample, in one batched forward; ``own``: the content
    sample (first) reaches only ``B`` and the style sample only ``D`` (:func:`~b4m.adapters.plp.mcp_routing`)."""

    def step(_: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = sample_batch(sets, [1, 1], gen, scheduler, objective)
        with maybe(own, mcp_routing(1, "B")):
            losses = per_sample_loss(unet, scheduler, *batch, mask=batch.mask, objective=objective)
        return losses.sum(), {"loss_content": losses[0].detach(), "loss_style": losses[1].detach()}

    return step


class UpdateNorms:
    """Each stage-2 step's update of the content part ``B`` and the style part ``D`` (Frobenius norms over every
    layer, ``update_B`` / ``update_D``) and their sizes (``norm_B`` / ``norm_D``), for the train log: what the
    Riemannian preconditioner's balancing (paper Sec. 4.3, Eq. 13-14) does to the two parts' steps."""

    def __init__(self, adapter: Any) -> None:
        self.parts = {k: adapter.parameters(k) for k in "BD"}
        self.last = self._snapshot()

    def _snapshot(self) -> dict[str, list[torch.Tensor]]:
        return {k: [p.detach().float().clone() for p in ps] for k, ps in self.parts.items()}

    def __call__(self, _: int) -> dict[str, torch.Tensor]:
        now = self._snapshot()
        out = {}
        for k in "BD":  # tensors: the loop reads them only on the steps it logs (no device sync each step)
            moved = [((a - b) ** 2).sum() for a, b in zip(now[k], self.last[k], strict=True)]
            out[f"update_{k}"] = torch.stack(moved).sum().sqrt()
            out[f"norm_{k}"] = torch.stack([(a**2).sum() for a in now[k]]).sum().sqrt()
        self.last = now
        return out


def _factors_digest(lora: LoraFile) -> str:
    """A short hash of the fused factors: a resumed stage 2 must start from the same two adapters."""
    import hashlib

    h = hashlib.sha256()
    for module in sorted(lora.factors):
        for t in lora.factors[module]:
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
