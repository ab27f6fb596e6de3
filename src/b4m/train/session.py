"""One training session for every trainer (B4M's two stages, the trained baselines): the output folder's claim,
the run's identity and the one resume rule, threads, the accelerator and mixed precision, the frozen pipeline,
the log, checkpoints, and the final save.

**The resume rule** (every training command): the same command run again continues an unfinished run from its
last checkpoint, and on a finished run returns its adapter without training; a run with other options or data
in that folder is refused, naming what differs; ``--overwrite`` starts over. Whatever happens, only what b4m
made is removed or replaced (:mod:`b4m.owned`): an output folder whose ``adapter.safetensors``,
``checkpoints/`` or ``train_log.jsonl`` b4m did not make is refused before any work.

Harnesses that own their folders (the demo, the bench) open runs with ``policy="refresh"``: an identical
finished run is reused, anything else is trained again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from b4m import threads
from b4m.errors import B4MError, warn
from b4m.io import JsonlLog, clean_temp_files
from b4m.owned import Folder, claim
from b4m.train import trackers
from b4m.train.checkpoint import (
    RESUME_HINT,
    clean_stale,
    latest_checkpoint,
    read_checkpoint_info,
    recorded_threads,
    save_checkpoint,
)
from b4m.train.identity import check_same_run, differences
from b4m.train.loop import Checkpoints, base_dtype, make_accelerator
from b4m.train.previews import PreviewPlan
from b4m.train.watch import Watch, watched_writes

__all__ = ["ADAPTER", "CHECKPOINTS", "LOG", "POLICIES", "RESUME_HINT", "Session"]

ADAPTER = "adapter.safetensors"
CHECKPOINTS = "checkpoints"
LOG = "train_log.jsonl"
POLICIES = ("continue", "overwrite", "refresh")


class Session:
    """A training run in ``out``, decided before any heavy work (the constructor reads only small files).

    ``settings`` and ``data`` are the run's identity (:mod:`b4m.train.identity`); ``policy``: ``continue`` (the
    CLI's default), ``overwrite`` (``--overwrite``: start over) or ``refresh`` (harnesses: reuse an identical
    finished run, else start over). After the constructor, :attr:`finished` is the adapter to reuse (nothing
    else to do) or ``None``; :attr:`resume` the checkpoint the run continues from.
    """

    def __init__(
        self,
        out: str | Path,
        settings: Mapping[str, Any],
        data: str,
        *,
        policy: str = "continue",
        checkpoint_every: int = 0,
        option: str = "--out",
        writes: tuple[str, ...] = (),
        options: Any = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.out = Path(out)
        if settings.get("base") in (
            None,
            "builtin",
        ):  # a result made on other shipped weights is another result
            from b4m.diffusion.builtin_base import weights_digest

            settings = {**settings, "base_weights": weights_digest()}
        self.identity = {"settings": dict(settings), "data": data}
        self.options = options
        """The run's config: its watch and memory options (:mod:`b4m.train.watch`) are read from it."""
        writes = (*writes, *watched_writes(options))
        self.folder = claim(self.out, (ADAPTER, CHECKPOINTS, LOG, *writes), option, policy == "overwrite")
        self.finished: Path | None = None
        self.resume: Path | None = None
        self.resume_info: dict[str, Any] = {}
        """The JSON of the checkpoint the run continues from (its ``step``, what the trainer recorded)."""
        self.threads = 0
        self.checkpoint_every = checkpoint_every
        self.writes = writes
        self.accelerator: Any = None
        self.pipe: Any = None
        self._trackers: list[str] = []
        recorded = self.folder.info.get("run")
        if self.folder.owns(ADAPTER) and self.folder.info.get("finished"):
            same = not differences(recorded or {}, self.identity)
            if same and policy != "overwrite":
                self.finished = self.out / ADAPTER
                clean_temp_files(self.out)  # what a killed write left (names only b4m makes)
                clean_stale(self.out / CHECKPOINTS)
                if policy == "continue":
                    warn(
                        f"{option} {self.out} already holds this run's finished adapter (same options and data): "
                        "nothing to train; pass --overwrite to train it again"
                    )
                return
            if policy == "continue":
                raise B4MError(
                    f"{option} {self.out}: holds the finished adapter of another run; differs: "
                    f"{', '.join(differences(recorded or {}, self.identity))}; choose another {option}, or pass "
                    "--overwrite to replace it (only files b4m made are replaced)"
                )
            return
        ckpt = latest_checkpoint(self.out / CHECKPOINTS) if self.folder.owns(CHECKPOINTS) else None
        if ckpt is None or policy == "overwrite":
            return
        info = read_checkpoint_info(ckpt)
        try:
            check_same_run(info, self.identity["settings"], data, ckpt, asked=f"{option} {self.out}")
        except B4MError:
            if policy == "continue":
                raise
            return  # refresh: another run's checkpoints are b4m's and are replaced
        self.resume, self.resume_info = ckpt, info

    # ------------------------------------------------------------------------------------------ starting
    def start(self, base: Any = None, pipe: Any = None, mixed_precision: str = "no") -> Any:
        """Start the run: threads (the recorded count on resume), the accelerator, the folder (what a killed
        write left is cleaned; on a fresh start b4m's own adapter, checkpoints and log of an earlier run are
        removed, nothing else; on resume the log loses what was logged after the checkpoint) and the frozen
        ``pipe`` (loaded from ``base`` if not given, in the mixed-precision dtype on a GPU) on the device, its
        denoiser quantized (``--quantize-base``) and checkpointed (``--gradient-checkpointing``) as the options
        say. Returns the pipeline."""
        from b4m.diffusion.memory import enable_checkpointing, quantize_denoiser
        from b4m.diffusion.pipeline import denoiser, freeze, load_pipeline

        self.threads = threads.apply(recorded=recorded_threads(self.resume.parent) if self.resume else None)
        report_to = getattr(self.options, "report_to", "none")
        self.accelerator = acc = make_accelerator(
            mixed_precision, **trackers.accelerator_kwargs(report_to, self.out)
        )
        self.log = JsonlLog(self.out / LOG, enabled=False)
        if acc.is_main_process:
            self._prepare_folder()
        acc.wait_for_everyone()
        self.pipe = pipe if pipe is not None else load_pipeline(base, dtype=base_dtype(mixed_precision))
        freeze(self.pipe)
        quantize_denoiser(denoiser(self.pipe), getattr(self.options, "quantize_base", "none"), acc.device)
        if getattr(self.options, "gradient_checkpointing", False):
            enable_checkpointing(denoiser(self.pipe))
        self.pipe.to(acc.device)
        return self.pipe

    def watch(self, name: str, plan: PreviewPlan | None = None, resolution: int | None = None) -> Watch:
        """The callback of one training loop named ``name`` (:class:`b4m.train.watch.Watch`): previews of
        ``plan`` (the stage's default prompts) at ``resolution``, the tracker's run ``name`` started on first
        use, the encoders off the GPU while it trains."""
        report_to = getattr(self.options, "report_to", "none")
        if report_to != "none" and name not in self._trackers and not self._trackers:
            trackers.start(self.accelerator, report_to, _run_name(name), self.out, self.identity["settings"])
            self._trackers.append(name)
        return Watch(self, name, plan, resolution)

    def record_tracker(self, flush: bool = False, end: bool = False) -> None:
        """Flush (or end) the tracker and record TensorBoard's files in the manifest (main process only)."""
        if not self._trackers or self.accelerator is None:
            return
        acc = self.accelerator
        report_to = getattr(self.options, "report_to", "none")
        if end:  # not accelerator.end_training(): it also ends the process group the next run may need
            for tracker in acc.trackers:
                tracker.finish()
            acc.trackers = []
        elif flush and report_to == "tensorboard" and acc.is_main_process:
            acc.get_tracker("tensorboard", unwrap=True).flush()
        if report_to == "tensorboard" and acc.is_main_process:
            trackers.record_event_files(self.out, _run_name(self._trackers[0]))
        if end:
            self._trackers = []

    def begin(self) -> None:
        """Start a run that needs no accelerator or pipeline (the merges): the folder only."""
        self._prepare_folder()

    def _prepare_folder(self) -> None:
        parent = Folder(self.out.parent)
        if parent.known and self.out.parent != self.out:
            parent.child(self.out.name)  # a run inside a b4m folder (run b4m's stages, the demo, the bench)
        self.folder.load()
        self.folder.save()
        clean_temp_files(self.out)
        clean_stale(self.out / CHECKPOINTS)
        if self.resume is None:
            kept = []
            for name in (ADAPTER, CHECKPOINTS, LOG, *self.writes):
                kept += self.folder.remove(name)
            if kept:  # claim() refused foreign names; these are a user's files inside b4m's checkpoints/
                warn(f"{self.out}: kept {', '.join(kept)} (b4m did not make it)")
        self.folder.set_info(run=self.identity, finished=False)
        self.log = JsonlLog(self.out / LOG, on_write=self._record_log)
        if self.resume is not None:
            self.log.keep_until(int(self.resume_info["step"]))

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def checkpoints(
        self,
        params: dict[str, Any],
        gen: Any,
        extra: Mapping[str, Any] | None = None,
        resume: bool = True,
        offset: int = 0,
    ) -> Checkpoints:
        """Checkpoints of ``params`` and ``gen`` every ``checkpoint_every`` steps, recording the run's identity,
        its thread count and ``extra``; ``resume``: continue from the run's checkpoint, if it has one."""
        identity = {"threads": self.threads, **self.identity}
        return Checkpoints(
            self.out / CHECKPOINTS,
            params,
            gen,
            self.checkpoint_every,
            identity | dict(extra or {}),
            resume=self.resume if resume else None,
            offset=offset,
        )

    def _record_log(self, path: Path) -> None:
        self.folder.record(path.name)

    # ------------------------------------------------------------------------------------------ saving
    def save(self, write: Callable[[Path, str], Path], checkpoints: Checkpoints | None = None) -> Path:
        """Write the adapter with ``write(path, hint)`` and record it as this run's finished result. If the
        write fails (a full disk), the trained state is kept where the message says: a checkpoint of the last
        step (the same command then only saves), else the trained tensors in the system's temporary folder."""
        path = self.out / ADAPTER
        self.record_tracker(end=True)
        try:
            write(path, RESUME_HINT)
        except B4MError as err:
            if checkpoints is None:
                raise
            raise type(err)(f"{err}; {_rescue(checkpoints)}") from None
        self.folder.record(ADAPTER)
        self.folder.set_info(finished=True)
        return path

    def finish(self, write: Callable[[Path, str], Path], checkpoints: Checkpoints | None = None) -> Path:
        """:meth:`save` on the main process, then every process waits for it; returns the adapter's path."""
        if self.is_main_process:
            self.save(write, checkpoints)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return self.out / ADAPTER


def _run_name(name: str) -> str:
    """A tracker run's name from a loop's name: ``"stage 1 (content)"`` -> ``"stage-1-content"``."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "run"


def _rescue(checkpoints: Checkpoints) -> str:
    """Keep a finished run's trained state after its adapter could not be written."""
    from b4m.io import save_safetensors

    if checkpoints.optimizer is not None:
        try:
            ckpt = save_checkpoint(
                checkpoints.folder,
                checkpoints.done,
                checkpoints.params,
                checkpoints.optimizer,
                checkpoints.generator,
                checkpoints.extra,
            )
        except B4MError:
            pass
        else:
            return f"the trained state is kept in {ckpt}: free space and {RESUME_HINT} (it only saves)"
    rescue = Path(tempfile.mkdtemp(prefix="b4m-rescue-")) / "trained_weights.safetensors"
    try:
        save_safetensors(checkpoints.params, rescue, {"out": str(checkpoints.folder.parent)})
    except B4MError:
        return "the trained weights could not be written anywhere"
    return f"the trained tensors are kept in {rescue}"
