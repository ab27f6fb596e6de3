"""Preview images during training (``--sample-every N``): what the adapter draws now, every N steps and at the
last step, written to ``<out>/samples/step-NNNNN/`` (one PNG per prompt and strength, ``prompts.json`` and a
contact sheet ``sheet.png``), recorded in the run folder's ownership manifest, and sent to the tracker.

**Comparable and harmless.** Every preview image starts from the same noise (``--sample-seed``), so successive
previews differ only by what was learned. A preview changes nothing of the run: the prompts are encoded once
before training (the text encoders then leave the GPU, :mod:`b4m.diffusion.memory`), sampling runs under
``torch.no_grad`` with its own generators inside ``torch.random.fork_rng`` (the global RNG is as it was), the
denoiser is put back in training mode, and stage 2's strength changes are undone by copying the saved parts
back. A run with previews trains the bit-identical adapter (tested).

**Default prompts** (``--sample-prompts`` replaces them): stage-1 content: the content prompt alone and in two
contexts (``on the left``, ``on a blue background``); stage-1 style: the style prompt and its style phrase
(``in ... style``) on the subjects of the first auxiliary contents; stage 2: the combined prompt (content subject
+ style phrase) at content/style strengths (1, 1), (1, 0.5) and (0.5, 1) (B4M's two knobs,
:func:`b4m.adapters.plp.scale_parts`); trained baselines: the prompts they train on, and the combined prompt
when they learn a content and a style.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SAMPLES",
    "PreviewPlan",
    "Previews",
    "baseline_plan",
    "combined_prompt",
    "plp_scales",
    "stage1_plan",
    "stage2_plan",
]

SAMPLES = "samples"
"""The run folder's sub-folder holding the previews."""

CONTEXTS = ("{} on the left", "{}, on a blue background")
STAGE2_SCALES = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0))

ScaleFn = Callable[[float, float], contextlib.AbstractContextManager[None]]


@dataclass
class PreviewPlan:
    """What a preview draws: ``prompts``, each at every ``(content, style)`` strength of ``scales``;
    ``set_scales(c, s)`` is a context in which the adapter has those strengths (``None``: only ``(1, 1)``)."""

    prompts: list[str]
    scales: list[tuple[float, float]] = field(default_factory=lambda: [(1.0, 1.0)])
    set_scales: ScaleFn | None = None

    def with_prompts(self, prompts: Sequence[str]) -> PreviewPlan:
        return PreviewPlan(list(prompts), self.scales, self.set_scales)


_LEAD = re.compile(r"^(a|an)\s+(photo|picture|image|painting|drawing|rendering)\s+of\s+", re.IGNORECASE)


def _subject(prompt: str) -> str:
    """``"a photo of snq teddy on the left"`` -> ``"snq teddy"``: the subject of a caption, without its framing,
    style phrase or attributes."""
    text = _LEAD.sub("", prompt.strip())
    text = re.split(r",| in | on the | on a | on an ", f" {text} ".strip(), maxsplit=1)[0]
    return text.strip() or prompt.strip()


def _style_phrase(prompt: str) -> str | None:
    """``"a cup in wzk papercut style, small"`` -> ``"in wzk papercut style"`` (``None`` without ``in ... style``)."""
    found = re.search(r"\bin\s+[^,]*?\bstyle\b", prompt)
    return found.group(0) if found else None


def combined_prompt(content: str, style: str) -> str:
    """The content's subject in the style: ``"snq teddy in wzk papercut style"``; ``"<content>, <style>"`` when
    the style prompt has no ``in ... style`` phrase."""
    phrase = _style_phrase(style)
    return f"{_subject(content)} {phrase}" if phrase else f"{content}, {style}"


def stage1_plan(role: str, prompt: str, aux_prompts: Sequence[str]) -> PreviewPlan:
    """Stage 1's defaults: content: the prompt in a few contexts; style: the style on a few contents."""
    if role == "content":
        return PreviewPlan([prompt, *(c.format(prompt) for c in CONTEXTS)])
    phrase = _style_phrase(prompt)
    others = list(dict.fromkeys(_subject(p) for p in aux_prompts))[:2]
    return PreviewPlan([prompt, *(f"{s} {phrase}" for s in others)] if phrase else [prompt, *aux_prompts[:2]])


def stage2_plan(content: str, style: str, set_scales: ScaleFn | None) -> PreviewPlan:
    """Stage 2's default: the combined prompt at three content/style strengths."""
    return PreviewPlan([combined_prompt(content, style)], list(STAGE2_SCALES), set_scales)


def baseline_plan(
    prompts: Sequence[str], content: str | None = None, style: str | None = None
) -> PreviewPlan:
    """A trained baseline's defaults: the prompts it trains on, and the combined prompt of a content + style."""
    wanted = list(prompts) + ([combined_prompt(content, style)] if content and style else [])
    return PreviewPlan(list(dict.fromkeys(wanted)))


def plp_scales(adapter: Any) -> ScaleFn:
    """For a :class:`~b4m.adapters.inject.PLPAdapter`: a context in which ``B`` is scaled by ``c`` and ``D`` by
    ``s`` (``dW = [[AC, s AD], [c BC, c s BD]]``), restored exactly (saved copies) on leaving."""

    @contextlib.contextmanager
    def scaled(c: float, s: float) -> Iterator[None]:
        if (c, s) == (1.0, 1.0):
            yield
            return
        saved = [(p, p.detach().clone()) for p in adapter.parameters("BD")]
        with torch.no_grad():
            for p in adapter.parameters("B"):
                p.mul_(c)
            for p in adapter.parameters("D"):
                p.mul_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, copy in saved:
                    p.copy_(copy)

    return scaled


class Previews:
    """The previews of one training loop: prompts encoded by :meth:`encode` (before the encoders leave the GPU),
    images drawn by :meth:`render`."""

    def __init__(
        self,
        pipe: Any,
        plan: PreviewPlan,
        out: Path,
        resolution: int,
        base: str | None,
        seed: int = 0,
        steps: int | None = None,
    ) -> None:
        from b4m.diffusion.sampling import generation_defaults

        self.pipe, self.plan, self.out, self.seed = pipe, plan, Path(out), seed
        pipe.set_progress_bar_config(disable=True)
        defaults = generation_defaults(pipe, base)
        self.steps = steps or defaults["steps"]
        self.guidance = defaults["guidance"]
        self.resolution = resolution
        self.embeds: list[dict[str, torch.Tensor]] | None = None

    @torch.no_grad()
    def encode(self) -> None:
        """Each prompt's embeddings (and the negative ones classifier-free guidance needs), kept on the CPU."""
        if self.embeds is not None:
            return
        from diffusers import StableDiffusionXLPipeline

        from b4m.diffusion import flux

        pipe = self.pipe
        encoder = pipe.text_encoder if pipe.text_encoder is not None else pipe.text_encoder_2
        device = next(encoder.parameters()).device
        self.embeds = []
        for prompt in self.plan.prompts:
            if flux.is_flux(pipe):
                pe, pooled, _ = pipe.encode_prompt(
                    [prompt], prompt_2=None, device=device, max_sequence_length=flux.max_sequence_length(pipe)
                )
                kw = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
            elif isinstance(pipe, StableDiffusionXLPipeline):
                pe, npe, pooled, npooled = pipe.encode_prompt([prompt], device=device)
                kw = {
                    "prompt_embeds": pe,
                    "negative_prompt_embeds": npe,
                    "pooled_prompt_embeds": pooled,
                    "negative_pooled_prompt_embeds": npooled,
                }
            else:
                pe, npe = pipe.encode_prompt([prompt], device, 1, True)
                kw = {"prompt_embeds": pe, "negative_prompt_embeds": npe}
            self.embeds.append({k: v.detach().cpu() for k, v in kw.items()})

    @torch.no_grad()
    def draw(self, autocast: Any = None) -> list[Any]:
        """One image (PIL) per prompt and strength, in that order; the global RNG and the adapter are unchanged."""
        from PIL import Image

        from b4m.diffusion import flux
        from b4m.diffusion.memory import move
        from b4m.diffusion.pipeline import denoiser

        self.encode()
        assert self.embeds is not None
        pipe, model = self.pipe, denoiser(self.pipe)
        device = next(model.parameters()).device
        vae_device = next(pipe.vae.parameters()).device
        was_training = model.training
        model.eval()
        cuda = [device.index or 0] if device.type == "cuda" else []
        images = []
        try:
            if vae_device != device:
                move(pipe.vae, device)  # decoding, and the pipeline's execution device (its first part)
            with torch.random.fork_rng(devices=cuda), autocast or contextlib.nullcontext():
                for kw in self.embeds:
                    for c, s in self.plan.scales:
                        scaled = (
                            self.plan.set_scales(c, s) if self.plan.set_scales else contextlib.nullcontext()
                        )
                        with scaled:
                            images.append(self._one(pipe, model, kw, device, flux))
        finally:
            if vae_device != device:
                move(pipe.vae, vae_device)
            model.train(was_training)
        return [
            Image.fromarray((img.permute(1, 2, 0).float().clamp(0, 1).numpy() * 255).round().astype("uint8"))
            for img in images
        ]

    def _one(
        self, pipe: Any, model: Any, kw: dict[str, torch.Tensor], device: torch.device, flux: Any
    ) -> Any:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        extra: dict[str, Any] = {}
        if flux.is_flux(pipe):
            latents = flux.initial_latents(pipe, [gen], self.resolution)
            extra["max_sequence_length"] = flux.max_sequence_length(pipe)
        else:
            size = self.resolution // pipe.vae_scale_factor
            latents = torch.randn((1, pipe.unet.config.in_channels, size, size), generator=gen)
        dtype = next(model.parameters()).dtype
        out = pipe(
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            height=self.resolution,
            width=self.resolution,
            latents=latents.to(device, dtype),
            output_type="pt",
            **{k: v.to(device) for k, v in kw.items()},
            **extra,
        )
        return out.images[0].float().cpu()

    def write(self, step: int, images: list[Any]) -> Any:
        """Write ``images`` (from :meth:`draw`) and their contact sheet into ``samples/step-NNNNN``, record them in
        the run folder's manifest; returns the sheet."""
        from PIL import Image

        from b4m.io import save_image, write_json
        from b4m.owned import Folder
        from b4m.world.sheet import image_grid

        folder = Folder(self.out).child(SAMPLES).child(f"step-{step:05d}")
        entries, names = [], []
        k = 0
        for i, prompt in enumerate(self.plan.prompts):
            for c, s in self.plan.scales:
                name = f"{i:02d}.png" if len(self.plan.scales) == 1 else f"{i:02d}_c{c:g}_s{s:g}.png"
                save_image(images[k], folder.path / name)
                names.append(name)
                entries.append({"file": name, "prompt": prompt, "content_scale": c, "style_scale": s})
                k += 1
        write_json(folder.path / "prompts.json", {"step": step, "seed": self.seed, "images": entries})
        tiles = [im if im.width >= 128 else im.resize((128, 128 * im.height // im.width), Image.Resampling.NEAREST)
                 for im in images]  # fmt: skip
        labels = [f"{e['file'][:2]} c{e['content_scale']:g} s{e['style_scale']:g}" for e in entries]
        sheet = image_grid(tiles, ncols=len(self.plan.scales) if len(self.plan.scales) > 1 else len(tiles),
                           labels=labels)  # fmt: skip
        save_image(sheet, folder.path / "sheet.png")
        folder.record(*names, "prompts.json", "sheet.png")
        return sheet


def read_prompts_json(folder: Path) -> dict[str, Any]:
    """What a preview folder's ``prompts.json`` says (tests, tools)."""
    return json.loads((Path(folder) / "prompts.json").read_text(encoding="utf-8"))
