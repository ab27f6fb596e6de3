"""Machinery every method shares, written once: output folders, pipeline set-up, cached image sets, source LoRAs,
the trained baselines' use of the one step loop (:func:`b4m.train.loop.run_steps`) and the atomic save of one
plain LoRA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from b4m.adapters.codec import load_lora
from b4m.adapters.compose import Factors, pad_ranks
from b4m.adapters.files import save_file_for
from b4m.adapters.flux_keys import is_flux_layout
from b4m.checks import check_base, check_out_folder, integer_at_least, raise_problems
from b4m.config import load_config, to_dict
from b4m.data.folders import check_masks, read_image_folder
from b4m.data.repeats import check_repeats
from b4m.diffusion.pipeline import base_family, base_model_name, denoiser, family_of_base, predict
from b4m.errors import B4MError
from b4m.methods.base import Fitted, get_method, resolve_options
from b4m.methods.cache import session_policy
from b4m.paths import portable_config
from b4m.train.checkpoint import RESUME_HINT
from b4m.train.identity import data_fingerprint, run_settings
from b4m.train.loop import (
    CachedSet,
    Checkpoints,
    StepFn,
    cache_set,
    run_steps,
    trigger_words_of,
)
from b4m.train.previews import PreviewPlan, baseline_plan
from b4m.train.recipe import Objective, check_family, check_recipe, loop_options, make_optimizer, save_dtype
from b4m.train.session import ADAPTER, CHECKPOINTS
from b4m.train.session import Session as TrainSession
from b4m.train.watch import check_options

__all__ = [
    "ADAPTER",
    "CHECKPOINTS",
    "MERGE_INPUTS",
    "MERGE_SOURCES",
    "Session",
    "fit_method",
    "named_params",
    "predict",
    "read_source",
    "reused",
    "run_method",
    "save_adapter",
    "train_steps",
]

MERGE_SOURCES = ("content_lora", "style_lora")
"""What the merging methods (direct merge, NP-LoRA, K-LoRA) are made from: a run's identity covers both files."""
MERGE_INPUTS = (*MERGE_SOURCES, "content_images", "style_images")
"""What the trained merging methods (ZipLoRA, DuoLoRA) learn from: a run's identity covers all four."""


def reused(path: Path) -> Fitted:
    """A finished run's adapter, returned without training (the one resume rule, :mod:`b4m.train.session`)."""
    lora = load_lora(path)
    return Fitted(path, merged_delta=lambda: {n: u @ v for n, (u, v) in lora.factors.items()})


def _input_sets(cfg: Any, inputs: Sequence[str]) -> list[tuple[list[Path], list[str]]]:
    """What :func:`~b4m.train.identity.data_fingerprint` hashes: each image folder's files with their prompts,
    each source LoRA file under its option's name."""
    sets = []
    for name in inputs:
        option = "--" + name.replace("_", "-")
        if name.endswith("_lora"):
            sets.append(([Path(getattr(cfg, name))], [option]))
            continue
        images = read_image_folder(getattr(cfg, name), option)
        prompt = getattr(cfg, name.removesuffix("_images") + "_prompt")
        sets.append((list(images.paths), images.prompts(prompt, option)))
    return sets


def check_folders(cfg: Any, which: Iterable[str]) -> None:
    """Fail in a second on a missing or empty image folder, a bad ``--repeats`` or a bad loss mask (another size
    than its image's, all black), before the (slow) model load."""
    problems: list[str] = []
    check_repeats(getattr(cfg, "repeats", []), problems)
    raise_problems(problems)
    for name in which:
        folder = getattr(cfg, f"{name}_images")
        if folder is not None:
            images = read_image_folder(folder, f"--{name}-images")
            if getattr(cfg, "masks", False):
                check_masks(images)


class Session(TrainSession):
    """A method's run in ``--out`` (default ``runs/<method>``): :class:`b4m.train.session.Session` with the
    method's identity (its options and the bytes of ``inputs``: image folders with their prompts, source LoRA
    files), so that every method follows the one resume rule. ``writes``: the files it writes besides the
    adapter. :attr:`finished` set: return :func:`reused`; else :meth:`start` (trained methods: accelerator,
    pipeline) or :meth:`begin` (merges: the folder only)."""

    def __init__(
        self,
        cfg: Any,
        method_id: str,
        inputs: Sequence[str] = (),
        writes: tuple[str, ...] = (),
        policy: str | None = None,
    ) -> None:
        problems: list[str] = []
        every = getattr(cfg, "checkpoint_every", 0)
        integer_at_least(every, "--checkpoint-every", 0, problems, " (0: no checkpoints)")
        check_recipe(cfg, problems)
        check_options(cfg, problems)
        check_base(cfg.base, problems)
        raise_problems(problems)
        check_family(cfg, family_of_base(cfg.base))
        out = Path(cfg.out or Path("runs") / method_id)
        check_out_folder(out)
        super().__init__(
            out,
            run_settings(to_dict(cfg) | {"method": method_id}),
            data_fingerprint(_input_sets(cfg, inputs)),
            policy=policy or session_policy(cfg.overwrite) or ("overwrite" if cfg.overwrite else "continue"),
            checkpoint_every=every,
            writes=writes,
            options=cfg,
        )
        self.cfg = cfg
        self.cached: dict[str, CachedSet] = {}
        """The image sets cached so far, by concept (the previews' default prompts)."""

    def start(self, base: Any = None, pipe: Any = None, mixed_precision: str | None = None) -> Any:  # noqa: ARG002
        """The accelerator (``--mixed-precision``) and the frozen pipeline, as every trainer starts."""
        cfg = self.cfg
        mp = getattr(cfg, "mixed_precision", "no") if mixed_precision is None else mixed_precision
        started = super().start(cfg.base, pipe, mp)
        check_family(cfg, base_family(started, cfg.base))  # a pipeline given: known only now
        return started

    @property
    def objective(self) -> Objective:
        """The run's loss-side options (noise offset, min-SNR, FLUX timestep sampling)."""
        return Objective.of(self.cfg)

    def generator(self, stream: int) -> torch.Generator:
        """The sampling generator of one of the method's streams (images, noise, timesteps): seeded from
        ``--seed`` and ``stream``, and from the process index, so that under ``accelerate launch`` each process
        draws other samples (as stage 1 does); process 0 draws what a single process does."""
        seed = self.cfg.seed * 1000 + stream + 100 * self.accelerator.process_index
        return torch.Generator().manual_seed(seed)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser the method adapts: the UNet, or FLUX's transformer."""
        return denoiser(self.pipe)

    def images(self, which: str) -> CachedSet:
        """The cached content (``which="content"``) or style images with their prompts."""
        folder = getattr(self.cfg, f"{which}_images")
        if folder is None:
            raise B4MError(f"--{which}-images: give the folder of {which} images")
        prompt = getattr(self.cfg, f"{which}_prompt")
        self.cached[which] = cache_set(
            self.pipe, folder, prompt, self.cfg.resolution, f"--{which}-images", data=self.cfg
        )
        return self.cached[which]

    def image_sets(self, *which: str) -> list[CachedSet]:
        """Several image sets a step samples together (e.g. ``"content", "style"``), cached together: with
        ``--buckets`` the first one's bucket is each step's (:mod:`b4m.train.datasets`)."""
        from b4m.train.datasets import cache_all

        entries = []
        for name in which:
            folder = getattr(self.cfg, f"{name}_images")
            if folder is None:
                raise B4MError(f"--{name}-images: give the folder of {name} images")
            entries.append((folder, getattr(self.cfg, f"{name}_prompt"), f"--{name}-images"))
        sets = cache_all(self.pipe, entries, self.cfg.resolution, self.cfg)
        self.cached.update(zip(which, sets, strict=True))
        return sets

    def preview_plan(self) -> PreviewPlan:
        """The previews' default prompts: those of the sets it trains on, and content + style combined."""
        prompts = [s.prompts[0] for s in self.cached.values()]
        both = "content" in self.cached and "style" in self.cached
        return baseline_plan(
            prompts,
            self.cached["content"].prompts[0] if both else None,
            self.cached["style"].prompts[0] if both else None,
        )

    def trigger_words(self, *sets: CachedSet) -> list[str]:
        words: list[str] = []
        for s in sets:
            words += trigger_words_of(s.prompts[0], self.pipe.tokenizer)
        return list(dict.fromkeys(words))


def read_source(path: Path | None, option: str, unet: torch.nn.Module | None = None) -> Factors:
    """A source LoRA as exact factors (:func:`~b4m.adapters.codec.load_lora` folds ``lora_alpha / r`` into
    ``U``), checked against ``unet``'s layers."""
    if path is None:
        raise B4MError(f"{option}: give a LoRA file (.safetensors)")
    lora = load_lora(path)
    factors = dict(lora.factors)
    if unet is not None:
        layers = dict(unet.named_modules())
        for name, (u, v) in factors.items():
            layer = layers.get(name)
            weight = getattr(layer, "weight", None)
            if weight is None or tuple(weight.shape) != (u.shape[0], v.shape[1]):
                raise B4MError(
                    f"{option} {path}: layer {name} does not fit this base model "
                    f"(LoRA {u.shape[0]}x{v.shape[1]}); train the LoRA on the same --base"
                )
    return factors


def align_sources(content: Factors, style: Factors) -> tuple[list[str], Factors, Factors]:
    """The union of both files' layers; a layer missing from one side gets a zero pair of rank 1 there."""
    names = sorted(set(content) | set(style))

    def filled(src: Factors, other: Factors) -> Factors:
        out = dict(src)
        for name in names:
            if name not in out:
                u, v = other[name]
                out[name] = (u.new_zeros(u.shape[0], 1), v.new_zeros(1, v.shape[1]))
        return out

    return names, filled(content, style), filled(style, content)


def train_steps(
    session: Session,
    params: list[torch.nn.Parameter],
    step_fn: StepFn,
    steps: int,
    lr: float,
    desc: str,
    progress: bool,
    weight_decay: float = 0.0,
    after_step: Callable[[int], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> None:
    """The trained baselines' training: the run's ``--train-optimizer`` (AdamW by default) on ``params``, then
    :func:`~b4m.train.loop.run_steps` on ``step_fn`` with the session's accelerator, UNet and log (and
    ``checkpoints``, from :meth:`Session.checkpoints`) and the run's recipe (:func:`~b4m.train.recipe.loop_options`:
    schedule, clipping, accumulation)."""
    acc = session.accelerator
    cfg = session.cfg
    name = getattr(cfg, "train_optimizer", "adamw")
    optimizer = acc.prepare(make_optimizer(name, params, lr, weight_decay))
    run_steps(
        step_fn,
        steps=steps,
        accelerator=acc,
        model=session.unet,
        optimizer=optimizer,
        log=session.log,
        name=desc,
        progress=progress,
        after_step=after_step,
        checkpoints=checkpoints,
        average=params,  # the UNet is not DDP-wrapped: under accelerate launch, gradients are averaged here
        **loop_options(cfg, optimizer, steps),
        watch=session.watch(desc, session.preview_plan(), session.cfg.resolution),
    )


def named_params(
    deltas: Mapping[str, torch.nn.Module], names: Sequence[str] | None = None
) -> dict[str, torch.nn.Parameter]:
    """The parameters of every layer's delta as ``<layer>.<name>`` (``names``, else all of each delta's), in
    the order the optimizer gets them."""
    if names is None:
        return {f"{n}.{k}": p for n, d in deltas.items() for k, p in d.named_parameters()}
    return {f"{n}.{k}": getattr(d, k) for n, d in deltas.items() for k in names}


def save_adapter(
    session: Session,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    method: str,
    cfg: Any,
    name: str = ADAPTER,
    checkpoints: Checkpoints | None = None,
    **meta: Any,
) -> Path:
    """Write one plain LoRA (every layer padded to one rank, scale 1) atomically to ``<out>/<name>`` (default
    the run's adapter, recorded as its finished result), in kohya spelling like every b4m adapter: the one file
    diffusers, ComfyUI and A1111 open as it is (FLUX: diffusers spelling, :func:`~b4m.adapters.files.save_file_for`).
    ``checkpoints``: the trained state to keep if the write fails."""
    if session.pipe is not None:
        family: str | None = base_family(session.pipe, cfg.base)
    else:  # merged from files: FLUX layers keep FLUX's spelling
        family = "flux" if is_flux_layout(factors) else None
    header = {
        "method": method,
        "base_model": base_model_name(cfg.base),
        **({"base_family": family} if family else {}),
        "target_modules": sorted(factors),
        "config": portable_config(to_dict(cfg), session.out),
        **meta,
    }

    def write(path: Path, hint: str) -> Path:
        return save_file_for(family, path, pad_ranks(factors), header, hint, save_dtype(cfg))

    if name == ADAPTER:
        return session.finish(write, checkpoints)
    path = session.out / name
    if session.is_main_process:
        write(path, RESUME_HINT)
        session.folder.record(name)
    return path


def fit_method(
    method_id: str, config: str | Path | None = None, pipe: Any = None, progress: bool = True, **options: Any
) -> Fitted:
    """Build ``method_id``'s config (defaults < file < options), check its inputs, fit it; returns :class:`Fitted`."""
    method = get_method(method_id)
    cfg = resolve_options(load_config(method.config, config, options))
    method.check_needs(cfg)
    return method.fit(cfg, pipe=pipe, progress=progress)


def run_method(
    method_id: str, config: str | Path | None = None, progress: bool = True, **options: Any
) -> Path:
    """Run a registered method by id (``b4m methods`` lists them); returns the adapter file."""
    return fit_method(method_id, config, progress=progress, **options).path
