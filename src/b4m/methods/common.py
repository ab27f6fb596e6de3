"""Machinery every method shares, written once: output folders, pipeline set-up, cached image sets, source LoRAs,
the trained baselines' use of the one step loop (:func:`b4m.train.loop.run_steps`) and the atomic save of one
plain LoRA.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from b4m import threads
from b4m.adapters.codec import load_lora
from b4m.adapters.compose import Factors, pad_ranks
from b4m.adapters.files import save_file_for
from b4m.adapters.flux_keys import is_flux_layout
from b4m.checks import check_out_folder, integer_at_least, raise_problems
from b4m.config import load_config, to_dict
from b4m.data.folders import read_image_folder
from b4m.diffusion.pipeline import base_family, base_model_name, denoiser, freeze, load_pipeline, predict
from b4m.errors import B4MError
from b4m.methods.base import Fitted, get_method, resolve_options
from b4m.paths import portable_config
from b4m.train.checkpoint import (
    claim_output,
    clean_stale,
    latest_checkpoint,
    read_checkpoint_info,
    recorded_threads,
)
from b4m.train.identity import check_same_run, data_fingerprint, run_settings
from b4m.train.loop import (
    CachedSet,
    Checkpoints,
    StepFn,
    TrainLog,
    cache_set,
    make_accelerator,
    run_steps,
    trigger_words_of,
)

__all__ = [
    "ADAPTER",
    "CHECKPOINTS",
    "MERGE_INPUTS",
    "Run",
    "Session",
    "claim_out",
    "claim_run",
    "fit_method",
    "named_params",
    "predict",
    "read_source",
    "run_method",
    "save_adapter",
    "train_steps",
]

ADAPTER = "adapter.safetensors"
CHECKPOINTS = "checkpoints"
MERGE_INPUTS = ("content_lora", "style_lora", "content_images", "style_images")
"""What the trained merging methods (ZipLoRA, DuoLoRA) learn from: a run's identity covers all four."""


def claim_out(cfg: Any, method_id: str) -> Path:
    """The output folder, checked as the stages check theirs (:func:`~b4m.checks.check_out_folder`,
    :func:`~b4m.train.checkpoint.claim_output`): never a file or an unwritable place, and a finished adapter
    is replaced only with ``--overwrite``."""
    out = _out_folder(cfg, method_id)
    claim_output(out, resume=False, overwrite=cfg.overwrite)
    return out


def _out_folder(cfg: Any, method_id: str) -> Path:
    """``--out`` (default ``runs/<method>``), checked to be a folder b4m may write."""
    out = Path(cfg.out or Path("runs") / method_id)
    check_out_folder(out)
    return out


@dataclass
class Run:
    """A trained method's run in ``out``: the checkpoint it continues from (``resume``, ``None`` for a fresh
    start) and, once :meth:`identify` has run, what makes it this run (checkpoints record both)."""

    out: Path
    method_id: str
    resume: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.out / CHECKPOINTS

    def identify(self, cfg: Any, inputs: Sequence[str]) -> None:
        """Record the run's settings and the fingerprint of ``inputs`` (names of :data:`~b4m.methods.base.NEEDS`:
        image folders with their prompts, source LoRA files); refuse a checkpoint of another run, naming what
        differs."""
        self.settings = run_settings(to_dict(cfg) | {"method": self.method_id})
        self.data = data_fingerprint(_input_sets(cfg, inputs))
        if self.resume is not None:
            self.info = read_checkpoint_info(self.resume)
            check_same_run(self.info, self.settings, self.data, self.resume, asked=f"--out {self.out}")


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


def claim_run(cfg: Any, method_id: str) -> Run:
    """:func:`claim_out` for a method that trains: an unfinished run in the output folder (checkpoints, no
    adapter) is continued rather than refused, unless ``--overwrite`` starts it over. Whether it is this
    command's run is checked by :meth:`Run.identify`, once the inputs are known to be readable."""
    problems: list[str] = []
    integer_at_least(cfg.checkpoint_every, "--checkpoint-every", 0, problems, " (0: no checkpoints)")
    raise_problems(problems)
    out = _out_folder(cfg, method_id)
    resume = None if cfg.overwrite or (out / ADAPTER).is_file() else latest_checkpoint(out / CHECKPOINTS)
    if resume is None:
        claim_output(out, resume=False, overwrite=cfg.overwrite)
    return Run(out, method_id, resume)


def check_folders(cfg: Any, which: Iterable[str]) -> None:
    """Fail in a second on a missing or empty image folder, before the (slow) model load."""
    for name in which:
        folder = getattr(cfg, f"{name}_images")
        if folder is not None:
            read_image_folder(folder, f"--{name}-images")


class Session:
    """One trained method's run: the accelerator, the frozen pipeline on its device, and the output folder's
    log and checkpoints (``inputs``: what :meth:`Run.identify` fingerprints, checked before the model loads)."""

    def __init__(self, cfg: Any, run: Run, pipe: Any = None, inputs: Sequence[str] = ()) -> None:
        run.identify(cfg, inputs)
        self.cfg = cfg
        self.run = run
        self.out = run.out
        self.threads = threads.apply(recorded=recorded_threads(run.folder) if run.resume else None)
        self.accelerator = make_accelerator("no")
        self.pipe = pipe if pipe is not None else load_pipeline(cfg.base)
        freeze(self.pipe)
        self.pipe.to(self.accelerator.device)
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale(run.folder)  # what a killed checkpoint write left behind
        if run.resume is None:  # claim_run allowed it: --overwrite, or no checkpoint there
            shutil.rmtree(run.folder, ignore_errors=True)
            (self.out / "train_log.jsonl").unlink(missing_ok=True)
        self.log = TrainLog(self.out / "train_log.jsonl", enabled=self.accelerator.is_main_process)

    def checkpoints(
        self,
        params: dict[str, torch.Tensor],
        gen: torch.Generator,
        extra: Mapping[str, Any] | None = None,
        resume: bool = True,
        offset: int = 0,
    ) -> Checkpoints:
        """Checkpoints of ``params`` and ``gen`` every ``--checkpoint-every`` steps, recording the run's identity
        and ``extra`` (values are read when each checkpoint is written); ``resume``: continue from the run's
        checkpoint, if it has one."""
        identity = {"threads": self.threads, "settings": self.run.settings, "data": self.run.data}
        return Checkpoints(
            self.run.folder,
            params,
            gen,
            self.cfg.checkpoint_every,
            identity | dict(extra or {}),
            resume=self.run.resume if resume else None,
            offset=offset,
        )

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
        return cache_set(self.pipe, folder, prompt, self.cfg.resolution, f"--{which}-images")

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
    """The trained baselines' training: AdamW on ``params``, then :func:`~b4m.train.loop.run_steps` on
    ``step_fn`` with the session's accelerator, UNet and log (and ``checkpoints``, from
    :meth:`Session.checkpoints`)."""
    acc = session.accelerator
    optimizer = acc.prepare(torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
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
    session_or_out: Session | Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    method: str,
    cfg: Any,
    **meta: Any,
) -> Path:
    """Write one plain LoRA (every layer padded to one rank, scale 1) atomically to ``<out>/adapter.safetensors``,
    in kohya spelling like every b4m adapter: the one file diffusers, ComfyUI and A1111 open as it is (FLUX:
    diffusers spelling, :func:`~b4m.adapters.files.save_file_for`)."""
    out = session_or_out.out if isinstance(session_or_out, Session) else Path(session_or_out)
    main = not isinstance(session_or_out, Session) or session_or_out.accelerator.is_main_process
    path = out / ADAPTER
    if main:
        if isinstance(session_or_out, Session):
            family: str | None = base_family(session_or_out.pipe, cfg.base)
        else:  # merged from files: FLUX layers keep FLUX's spelling
            family = "flux" if is_flux_layout(factors) else None
        header = {
            "method": method,
            "base_model": base_model_name(cfg.base),
            **({"base_family": family} if family else {}),
            "target_modules": sorted(factors),
            "config": portable_config(to_dict(cfg), out),
            **meta,
        }
        save_file_for(family, path, pad_ranks(factors), header)
    if isinstance(session_or_out, Session):
        session_or_out.accelerator.wait_for_everyone()
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


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
