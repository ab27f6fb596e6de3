"""``--report-to tensorboard|wandb``: the run's losses, learning rates and preview images through accelerate's
trackers (``Accelerator(log_with=...)``, ``init_trackers``, ``accelerator.log``); the JSONL log stays as it is.

TensorBoard writes into ``<out>/tensorboard/<run name>/``: that folder and its event files are recorded in the
run folder's ownership manifest (:mod:`b4m.owned`) when the loop ends, so that ``--overwrite`` replaces them and
nothing else. Weights & Biases writes where ``wandb`` is configured to (``WANDB_DIR``; b4m passes
``<out>`` as its ``dir``); its files are wandb's and are not recorded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from b4m.options import REPORT_TO

__all__ = [
    "TENSORBOARD",
    "accelerator_kwargs",
    "check_report_to",
    "log_images",
    "record_event_files",
    "start",
]

TENSORBOARD = "tensorboard"
"""The run folder's sub-folder holding TensorBoard's event files."""


def check_report_to(value: str, problems: list[str], option: str = "--report-to") -> None:
    """A tracker that cannot start fails here, in one line, before any model loads."""
    if value not in REPORT_TO:
        problems.append(f"{option} {value}: give one of {', '.join(REPORT_TO)}")
    elif value == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        problems.append(f"{option} tensorboard: tensorboard is not installed (pip install tensorboard)")
    elif value == "wandb" and importlib.util.find_spec("wandb") is None:
        problems.append(
            f"{option} wandb: wandb is not installed (pip install wandb), or use --report-to tensorboard"
        )


def accelerator_kwargs(report_to: str, out: Path) -> dict[str, Any]:
    """What ``Accelerator(...)`` needs for the tracker (nothing for ``none``)."""
    if report_to == "none":
        return {}
    return {"log_with": report_to, "project_dir": str(out / TENSORBOARD)}


def start(accelerator: Any, report_to: str, run_name: str, out: Path, config: dict[str, Any]) -> None:
    """``init_trackers`` with the run's settings as its configuration (TensorBoard: scalars and strings only)."""
    if report_to == "none":
        return
    flat = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in config.items()}
    init: dict[str, Any] = {"wandb": {"dir": str(out)}} if report_to == "wandb" else {}
    if report_to == "tensorboard" and accelerator.is_main_process:
        from b4m.owned import Folder

        Folder(out).child(TENSORBOARD)  # made and recorded as b4m's before TensorBoard writes into it
    accelerator.init_trackers(run_name, config=flat, init_kwargs=init)


def log_images(accelerator: Any, report_to: str, images: dict[str, Any], step: int) -> None:
    """Preview images (``{tag: PIL image}``) to the tracker at ``step``."""
    if report_to == "none" or not accelerator.is_main_process:
        return
    import numpy as np

    tracker = accelerator.get_tracker(report_to)
    if report_to == "tensorboard":
        tracker.log_images(
            {k: np.asarray(v.convert("RGB"))[None] for k, v in images.items()}, step=step, dataformats="NHWC"
        )
    else:
        tracker.log_images({k: [v] for k, v in images.items()}, step=step)


def record_event_files(out: Path, run_name: str) -> None:
    """Record what TensorBoard wrote for ``run_name`` in the manifests of ``<out>/tensorboard/<run_name>``."""
    from b4m.owned import Folder

    folder = Folder(out).child(TENSORBOARD).child(run_name)
    names = sorted(p.name for p in folder.path.iterdir() if p.is_file() and p.name.startswith("events."))
    if names:
        folder.record(*names)
