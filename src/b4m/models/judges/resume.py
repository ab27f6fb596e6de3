"""Checkpoints of a judges training run (:func:`b4m.models.judges.train.train_judges`), so that the same command
continues a stopped run to the weights an uninterrupted run would have reached.

A checkpoint is :mod:`b4m.train.checkpoint`'s (safetensors + JSON, the newest one kept, in a folder b4m owns)
holding, besides the judges' weights, the optimizer and the augmentation generator, everything else the loop
carries from one step to the next: the image pool with its labels (it is refreshed every step), the one-cycle
schedule, the scene sampler's NumPy generator, the next render seed, the loss log and the elapsed seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from b4m.errors import B4MError
from b4m.models.judges.config import JudgesTrainConfig
from b4m.owned import Folder
from b4m.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_info,
    read_checkpoint_params,
    save_checkpoint,
)

__all__ = ["CHECKPOINTS", "RUNTIME_FIELDS", "LoopState", "Resumer"]

CHECKPOINTS = "checkpoints"
"""The sub-folder of ``--out`` where a run keeps its newest checkpoint (removed once the judges are saved)."""
RUNTIME_FIELDS = ("threads", "checkpoint_every", "n_eval")
"""Settings a resumed run may change: they do not change the trained weights (the thread count a run started
with is kept, :mod:`b4m.threads`; ``n_eval`` only sizes the evaluation after training)."""


@dataclass
class LoopState:
    """What the training loop carries between steps besides the attached objects (:meth:`Resumer.attach`)."""

    step: int
    next_seed: int
    render_s: float
    elapsed_s: float
    log: list[dict[str, Any]] = field(default_factory=list)


def run_identity(config: JudgesTrainConfig) -> dict[str, Any]:
    """The settings that make a training run this run (the recipe's, :class:`JudgesTrainConfig`, but
    :data:`RUNTIME_FIELDS`), as JSON."""
    names = [f.name for f in dataclasses.fields(JudgesTrainConfig) if f.name not in RUNTIME_FIELDS]
    values = {k: getattr(config, k) for k in names}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


class Resumer:
    """The checkpoints of one run in ``out_dir / CHECKPOINTS`` (none when ``out_dir`` is None or ``every`` is 0).

    Made before any heavy work: it refuses, in one line, a stopped run's checkpoint made with other settings
    (``overwrite`` removes b4m's checkpoints there instead) and a damaged one."""

    def __init__(
        self, out_dir: str | Path | None, config: JudgesTrainConfig, overwrite: bool = False
    ) -> None:
        self.every = int(config.checkpoint_every) if out_dir is not None else 0
        self.folder = Path(out_dir) / CHECKPOINTS if out_dir is not None else None
        self.identity = run_identity(config)
        self.found: Path | None = None
        self.info: dict[str, Any] = {}
        if self.folder is None:
            return
        if overwrite:
            Folder(self.folder).clear()
            return
        self.found = latest_checkpoint(self.folder)
        if self.found is None:
            return
        self.info = read_checkpoint_info(self.found)
        old = self.info.get("identity") or {}
        differ = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
        if differ:
            k = differ[0]
            raise B4MError(
                f"{self.folder}: holds a stopped judges run with other settings (--{k.replace('_', '-')} "
                f"{old.get(k)} there, {self.identity.get(k)} now); rerun with its settings to continue it, or pass "
                "--overwrite to start over"
            )

    @property
    def threads(self) -> int | None:
        """The torch thread count the stopped run started with (None: a fresh run)."""
        value = self.info.get("threads")
        return int(value) if isinstance(value, int) and value > 0 else None

    def restore_pool(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """The stopped run's image pool and labels (None for a fresh run: render one)."""
        if self.found is None:
            return None
        try:
            label_names = [str(k) for k in self.info["labels"]]
        except (KeyError, TypeError):
            raise B4MError(
                f"{self.found}: damaged checkpoint (no pool labels); pass --overwrite to start over"
            ) from None
        saved = read_checkpoint_params(self.found, ["pool", *(f"label.{k}" for k in label_names)])
        return saved["pool"], {k: saved[f"label.{k}"] for k in label_names}

    def attach(
        self,
        judges: torch.nn.Module,
        opt: torch.optim.Optimizer,
        sched: Any,
        gen: torch.Generator,
        rng: np.random.Generator,
        pool: torch.Tensor,
        labels: dict[str, torch.Tensor],
    ) -> None:
        """The run's training objects, which :meth:`restore` loads in place and :meth:`save` writes (``pool`` and
        ``labels``: the image pool the loop refreshes in place, from :meth:`restore_pool` on a resumed run)."""
        self.judges, self.opt, self.sched, self.gen, self.rng = judges, opt, sched, gen, rng
        self.pool, self.labels = pool, labels

    def restore(self) -> LoopState | None:
        """Load the stopped run's weights, optimizer, schedule and generators into the attached objects; its loop
        state (None: a fresh run)."""
        if self.found is None:
            return None
        params = {f"judges.{k}": v for k, v in self.judges.state_dict().items()}
        info = load_checkpoint(self.found, params, self.opt, self.gen)
        try:
            self.sched.load_state_dict(info["scheduler"])
            self.rng.bit_generator.state = info["numpy_rng"]
            return LoopState(
                step=int(info["step"]),
                next_seed=int(info["next_seed"]),
                render_s=float(info["render_s"]),
                elapsed_s=float(info["elapsed_s"]),
                log=list(info["log"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise B4MError(
                f"{self.found}: damaged checkpoint ({type(err).__name__}: {err}); pass --overwrite to start over"
            ) from None

    def due(self, step: int, steps: int) -> bool:
        """Whether a checkpoint is written after ``step`` steps (every ``every`` steps, and after the last, so that
        a run stopped while it evaluates does not train again)."""
        return bool(self.every) and (step % self.every == 0 or step == steps)

    def save(self, state: LoopState, threads: int) -> None:
        """Write the attached objects and ``state`` as the run's newest checkpoint."""
        assert self.folder is not None
        params = {f"judges.{k}": v for k, v in self.judges.state_dict().items()}
        params |= {"pool": self.pool, **{f"label.{k}": v for k, v in self.labels.items()}}
        extra = {
            "identity": self.identity,
            "labels": list(self.labels),
            "threads": threads,
            "scheduler": self.sched.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "next_seed": state.next_seed,
            "render_s": state.render_s,
            "elapsed_s": state.elapsed_s,
            "log": state.log,
        }
        save_checkpoint(self.folder, state.step, params, self.opt, self.gen, extra)

    def finish(self) -> None:
        """Remove the run's checkpoints (and their folder, if nothing else is in it) once the judges are saved."""
        if self.folder is not None and self.folder.is_dir():
            Folder(self.folder).clear()
