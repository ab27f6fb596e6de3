"""Machinery shared by every trained adapter (B4M's two stages and the trained baselines): device set-up, logging,
the guards against a diverged run, and the one step loop (:func:`run_steps`); the cached training sets and batch
sampling live in :mod:`b4m.train.batches` and are re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from b4m.errors import DivergedError
from b4m.io import JsonlLog
from b4m.train.batches import Batch, CachedSet, cache_set, sample_batch, trigger_words_of
from b4m.train.checkpoint import RESUME_HINT, latest_checkpoint, load_checkpoint, save_checkpoint

__all__ = [
    "RESUME_HINT",
    "Batch",
    "CachedSet",
    "Checkpoints",
    "StepFn",
    "TrainLog",
    "cache_set",
    "check_finite_loss",
    "check_finite_params",
    "average_gradients",
    "base_dtype",
    "make_accelerator",
    "run_steps",
    "sample_batch",
    "trigger_words_of",
]

TrainLog = JsonlLog
"""The training log (``train_log.jsonl``): :class:`b4m.io.JsonlLog`."""


def base_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the frozen base weights load in: the mixed-precision dtype on a GPU (what diffusers' training
    scripts call ``weight_dtype``: FLUX.1-dev's transformer is 24 GB in bf16, 48 GB in fp32), fp32 on a CPU.
    Adapter weights stay fp32 either way (:func:`b4m.adapters.inject.inject_plp`)."""
    if not torch.cuda.is_available():
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def make_accelerator(mixed_precision: str, **kwargs: Any) -> Accelerator:
    """An Accelerator (DDP under ``accelerate launch``); autocast only where a GPU is present; ``kwargs`` go to
    ``Accelerator`` (the tracker's ``log_with`` and ``project_dir``, :mod:`b4m.train.trackers`).

    Without a GPU, ``cpu=True`` lets processes started by ``accelerate launch``/torchrun form a gloo DDP group
    (accelerate only picks the CPU backend when told it runs on the CPU).
    """
    on_gpu = torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision if on_gpu else "no", cpu=not on_gpu, **kwargs)


def _last_checkpoint_note(ckpt_dir: Path | None) -> str:
    ckpt = None if ckpt_dir is None else latest_checkpoint(ckpt_dir)
    if ckpt is None:
        return "no checkpoint was written yet and nothing was saved"
    return f"kept the last good checkpoint {ckpt} (the adapter was not saved)"


def check_finite_loss(
    loss: torch.Tensor, step: int, stage: str, ckpt_dir: Path | None, lr_option: str = "--lr"
) -> None:
    """Stop the run at a NaN/infinite loss, saying so, before it can reach the weights or a checkpoint."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise DivergedError(
            f"{stage}: the loss is not finite at step {step}; stopped and {_last_checkpoint_note(ckpt_dir)}; "
            f"lower {lr_option} (or check the images) and rerun with --overwrite"
        )


def check_finite_params(
    params: Mapping[str, torch.Tensor], step: int, stage: str, ckpt_dir: Path | None, lr_option: str = "--lr"
) -> None:
    """Stop before a checkpoint or the adapter would hold NaN/infinite weights."""
    for name, p in params.items():
        if not bool(torch.isfinite(p.detach()).all()):
            raise DivergedError(
                f"{stage}: weight {name} is not finite after step {step}; stopped and "
                f"{_last_checkpoint_note(ckpt_dir)}; lower {lr_option} and rerun with --overwrite"
            )


def maybe(condition: bool, ctx: Any) -> Any:
    return ctx if condition else contextlib.nullcontext()


Record = Mapping[str, torch.Tensor | float]
StepFn = Callable[[int], tuple[torch.Tensor, Record]]
"""One training step's loss: ``step_fn(step) -> (loss, record)``, ``step`` counted from 0. ``record`` holds the
extra values to log (tensors are read with ``.item()`` only on the steps that log, so return them detached)."""


class Watcher(Protocol):
    """What :func:`run_steps` calls around its steps (:class:`b4m.train.watch.Watch`)."""

    def begin(self, start: int) -> None: ...

    def step(self, done: int, steps: int, entry: Mapping[str, Any] | None, optimizer: Any) -> None: ...

    def end(self) -> None: ...


class Optimizer(Protocol):
    """What the loop asks of an optimizer (torch's, accelerate's wrapper, stage 2's preconditioned one)."""

    def step(self) -> Any: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Checkpoints:
    """A run's resumable state for :func:`run_steps`: the trained tensors by name and the sampling generator,
    saved into ``folder`` every ``every`` steps (0: never) with ``extra`` (the run's identity) in its JSON;
    ``resume`` is the checkpoint to continue from (checked to be this run's by the caller).

    ``offset``: the steps of the run's earlier loops (a run of several loops, QR-LoRA's content then style,
    names its checkpoints by the run's step count, so the newest checkpoint is always the last one written)."""

    folder: Path
    params: dict[str, torch.Tensor]
    generator: torch.Generator
    every: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    resume: Path | None = None
    offset: int = 0
    optimizer: Any = None
    """Set by :func:`run_steps`: what a rescue checkpoint after a failed final save needs."""
    done: int = 0
    """Set by :func:`run_steps`: the run's step count when the loop ended."""


def run_steps(
    step_fn: StepFn,
    *,
    steps: int,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Optimizer,
    log: TrainLog,
    name: str,
    desc: str | None = None,
    progress: bool = True,
    after_step: Callable[[int], dict[str, Any] | None] | None = None,
    checkpoints: Checkpoints | None = None,
    average: Sequence[torch.Tensor] | None = None,
    lr_option: str = "--lr",
    accumulation: int = 1,
    max_grad_norm: float | None = None,
    lr_scheduler: Any = None,
    watch: Watcher | None = None,
) -> None:
    """The one training loop: steps ``start .. steps - 1`` of ``step_fn``, ``start`` being 0 or the step of
    ``checkpoints.resume`` less ``checkpoints.offset`` (parameters, optimizer and generator restored from it
    first).

    Each step, in this order: ``step_fn`` under the accelerator's autocast; stop with a
    :class:`~b4m.errors.B4MError` naming ``name`` if the loss is not finite (before it reaches the weights);
    ``accelerator.backward``; under several processes, the gradients of ``average`` replaced by their mean over
    the processes (for a ``model`` not wrapped in DDP by ``accelerator.prepare``); ``optimizer.step()``; ``zero_grad(set_to_none=True)``; ``after_step(step)`` (a dict it returns joins the step's record); a
    ``{"step", "loss", **record}`` line in ``log`` every 10th and at the last step; then, on the main process
    only and never at the last step, a checkpoint every ``checkpoints.every`` steps, after checking that every
    parameter is finite (which is checked once more after the last step). ``model`` is in train mode during
    the loop and in eval mode after; the progress bar (``desc``, default ``name``) shows on the main process
    when ``progress``; ``lr_option`` names the learning-rate option in a diverged run's message. The caller builds the optimizer, owns the log file and saves the final adapter.

    The training recipe (:func:`b4m.train.recipe.loop_options`; the defaults change nothing): ``accumulation``
    calls of ``step_fn`` per step, each loss divided by it before its backward pass (under DDP only the last
    synchronises), their mean logged; ``max_grad_norm``: the gradients' global norm clipped to it
    (``accelerator.clip_grad_norm_``, after the averaging, before ``optimizer.step()``; the norm before clipping is
    logged as ``grad_norm``); ``lr_scheduler``: stepped after every ``optimizer.step()``, its state saved in each
    checkpoint and restored on resume, the rate of the step logged as ``lr``. A step is one optimizer step.
    ``watch`` (:class:`b4m.train.watch.Watch`): ``watch.begin(start)`` before the first step, ``watch.step(done,
    steps, entry, optimizer)`` after each (``entry``: what the log got this step, else ``None``), ``watch.end()``
    after the last: previews, the tracker, the encoders off the GPU meanwhile.
    """
    start = 0
    if checkpoints is not None and checkpoints.resume is not None:
        info = load_checkpoint(checkpoints.resume, checkpoints.params, optimizer, checkpoints.generator)
        start = info["step"] - checkpoints.offset
        if lr_scheduler is not None:
            if "lr_scheduler" in info:
                lr_scheduler.load_state_dict(info["lr_scheduler"])
            else:  # a checkpoint written without one (a rescue after the last step): replay the schedule
                for _ in range(start):
                    lr_scheduler.step()
    clipped = _optimizer_params(optimizer) if max_grad_norm else []
    folder = None if checkpoints is None else checkpoints.folder
    bar = tqdm(
        range(start, steps),
        desc=desc or name,
        disable=not progress or not accelerator.is_main_process,
        initial=start,
        total=steps,
    )
    if watch is not None:
        watch.begin(start)
    model.train()
    for step in bar:
        done = step + 1
        if accumulation == 1:
            with accelerator.autocast():
                loss, record = step_fn(step)
            check_finite_loss(loss, done, name, folder, lr_option)
            accelerator.backward(loss)
        else:
            loss, record = _accumulate(
                step_fn, step, accumulation, accelerator, model, (done, name, folder, lr_option)
            )
        if average is not None:
            average_gradients(average, accelerator)
        extra: dict[str, Any] = {}
        if max_grad_norm:
            extra["grad_norm"] = accelerator.clip_grad_norm_(clipped, max_grad_norm)
        optimizer.step()
        if lr_scheduler is not None:
            extra["lr"] = lr_scheduler.get_last_lr()[0]
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            extra |= after_step(step) or {}
        entry = None
        if done % 10 == 0 or done == steps:  # .item() syncs the device: not every step
            entry = {
                "step": done,
                "loss": loss.item(),
                **{k: _scalar(v) for k, v in {**record, **extra}.items()},
            }
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            log.write(**entry)
        if watch is not None:
            watch.step(done, steps, entry, optimizer)
        if checkpoints is not None and _checkpoint_due(checkpoints.every, done, steps, accelerator):
            check_finite_params(checkpoints.params, done, name, folder, lr_option)
            state = {} if lr_scheduler is None else {"lr_scheduler": lr_scheduler.state_dict()}
            save_checkpoint(
                checkpoints.folder,
                checkpoints.offset + done,
                checkpoints.params,
                optimizer,
                checkpoints.generator,
                {**checkpoints.extra, **state},
            )
    model.eval()
    if watch is not None:
        watch.end()
    if checkpoints is not None:
        check_finite_params(checkpoints.params, steps, name, folder, lr_option)
        checkpoints.optimizer, checkpoints.done = optimizer, checkpoints.offset + steps


def _accumulate(
    step_fn: StepFn,
    step: int,
    k: int,
    accelerator: Accelerator,
    model: torch.nn.Module,
    where: tuple[int, str, Path | None, str],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``k`` calls of ``step_fn`` whose gradients add up to the gradient of their mean loss (each backward pass
    gets ``loss / k``); DDP synchronises on the last only. Returns the mean loss and the mean of each record."""
    losses, records = [], []
    for micro in range(k):
        sync = contextlib.nullcontext() if micro == k - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                loss, record = step_fn(step)
            check_finite_loss(loss, *where)
            accelerator.backward(loss / k)
        losses.append(loss.detach())
        records.append(record)
    mean = {key: sum(r[key] for r in records) / k for key in records[0]}
    return torch.stack(losses).mean(), mean


def _optimizer_params(optimizer: Any) -> list[torch.Tensor]:
    """Every parameter ``optimizer`` updates (inside accelerate's or stage 2's wrapper), for clipping."""
    from b4m.train.recipe import torch_optimizer

    return [p for group in torch_optimizer(optimizer).param_groups for p in group["params"]]


def average_gradients(params: Sequence[torch.Tensor], accelerator: Accelerator) -> None:
    """Replace each gradient of ``params`` by its mean over the processes, in one all-reduce (DDP's averaging,
    for models that stay unwrapped: the trained baselines call the UNet several times per step, with and
    without their deltas, which DDP's reducer does not allow). A missing gradient counts as zero, so every
    process sends the same tensor shape."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= accelerator.num_processes
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def _scalar(value: torch.Tensor | float) -> float:
    return value.item() if isinstance(value, torch.Tensor) else value


def _checkpoint_due(every: int, done: int, steps: int, accelerator: Accelerator) -> bool:
    """A checkpoint after step ``done``? The last step saves the adapter instead; other processes hold the
    same state under DDP, so only the main one writes."""
    return bool(every) and done % every == 0 and done < steps and accelerator.is_main_process
