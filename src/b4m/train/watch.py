"""The callback every training loop (:func:`b4m.train.loop.run_steps`) calls: previews, the tracker, and the text
encoders and VAE leaving the GPU while it trains.

:meth:`Watch.begin` (before the first step): the preview prompts are encoded, then the text encoders and the VAE
go to the CPU (every output of theirs is cached by then). :meth:`Watch.step` (after each optimizer step): on the
steps that write the JSONL log, the same values and the learning rates go to the tracker; every
``--sample-every`` steps and at the last step, a preview. :meth:`Watch.end` (after the last step): the encoders
come back (a caller's pipeline is whole again) and the tracker's files are recorded in the run's manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from b4m.train import trackers
from b4m.train.previews import PreviewPlan, Previews

__all__ = ["Watch", "check_options"]


def check_options(cfg: Any, problems: list[str]) -> None:
    """The watch and memory options of ``cfg`` (those it has), checked before any model loads."""
    from b4m.diffusion.memory import check_quantize

    every = getattr(cfg, "sample_every", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        problems.append(f"--sample-every {every}: give a whole number of steps, at least 0 (0: no previews)")
    steps = getattr(cfg, "sample_steps", None)
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        problems.append(f"--sample-steps {steps}: give a whole number of sampling steps, at least 1")
    for prompt in getattr(cfg, "sample_prompts", []) or []:
        if not str(prompt).strip():
            problems.append("--sample-prompts: a prompt is empty; give words the base model knows")
            break
    if hasattr(cfg, "report_to"):
        trackers.check_report_to(cfg.report_to, problems)
    if hasattr(cfg, "quantize_base"):
        check_quantize(cfg.quantize_base, problems)


def watched_writes(cfg: Any) -> tuple[str, ...]:
    """What the watch options make b4m write in the run folder (claimed and replaced like the adapter)."""
    from b4m.train.previews import SAMPLES

    names = (SAMPLES,) if getattr(cfg, "sample_every", 0) else ()
    return names + ((trackers.TENSORBOARD,) if getattr(cfg, "report_to", "none") == "tensorboard" else ())


class Watch:
    """What one training loop reports and previews (made by :meth:`b4m.train.session.Session.watch`)."""

    def __init__(
        self,
        session: Any,
        name: str,
        plan: PreviewPlan | None,
        resolution: int | None,
    ) -> None:
        cfg = session.options
        self.session = session
        self.name = name
        self.report_to = getattr(cfg, "report_to", "none")
        self.every = int(getattr(cfg, "sample_every", 0) or 0)
        self.previews: Previews | None = None
        if self.every and plan is not None and session.is_main_process:
            given = list(getattr(cfg, "sample_prompts", []) or [])
            if given:
                from b4m.prompts import check_prompts

                check_prompts(session.pipe.tokenizer, given, "--sample-prompts")
                plan = plan.with_prompts(given)
            self.previews = Previews(
                session.pipe,
                plan,
                session.out,
                resolution or 512,
                getattr(cfg, "base", None),
                seed=getattr(cfg, "sample_seed", 0),
                steps=getattr(cfg, "sample_steps", None),
            )
        self._moved: dict[str, Any] = {}

    # --------------------------------------------------------------------------------------------- the loop
    def begin(self, start: int) -> None:  # noqa: ARG002 - the step the loop starts from
        from b4m.diffusion.memory import release_encoders

        if self.previews is not None:
            self.previews.encode()
        self._moved = release_encoders(self.session.pipe)

    def step(self, done: int, steps: int, entry: Mapping[str, Any] | None, optimizer: Any) -> None:
        acc = self.session.accelerator
        if entry is not None and self.report_to != "none":
            values = {f"train/{k}": float(v) for k, v in entry.items() if k != "step" and _finite(v)}
            for i, group in enumerate(getattr(optimizer, "param_groups", []) or []):
                if "lr" in group:
                    values[f"lr/group{i}"] = float(group["lr"])
            acc.log(values, step=done)
        if self.previews is not None and (done % self.every == 0 or done == steps):
            images = self.previews.draw(acc.autocast())
            sheet = self.previews.write(done, images)
            trackers.log_images(acc, self.report_to, {"samples": sheet}, done)

    def end(self) -> None:
        from b4m.diffusion.memory import restore_encoders

        restore_encoders(self.session.pipe, self._moved)
        self._moved = {}
        self.session.record_tracker(flush=True)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
