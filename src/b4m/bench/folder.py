"""The bench's output folder: ``--out`` claimed (new, empty, or an earlier bench's), and every finished unit
(a source, a stage 1, a run) marked by a ``done.json`` written last, so an interrupted bench resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from b4m.bench.runs import BENCH_VERSION
from b4m.errors import B4MError
from b4m.io import write_text
from b4m.owned import Folder

STAMP = "bench.json"
DONE = "done.json"


def claim(out: Path) -> None:
    """``--out`` must be new, empty, or a folder an earlier ``b4m bench`` made (then it resumes)."""
    from b4m.checks import check_out_folder

    check_out_folder(out)
    if out.is_dir() and any(out.iterdir()):
        try:
            stamp = json.loads((out / STAMP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = None
        if not isinstance(stamp, dict) or stamp.get("made_by") != "b4m bench":
            first = sorted(p.name for p in out.iterdir())[0]
            raise B4MError(
                f"--out {out}: holds {first}, which b4m bench did not make; choose a new or empty --out "
                "(the bench never writes over your files)"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / STAMP, json.dumps({"made_by": "b4m bench", "version": BENCH_VERSION}) + "\n")


def done(folder: Path) -> dict[str, Any] | None:
    """The record of a finished unit, ``None`` while it is not finished."""
    try:
        return json.loads((folder / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finish(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    write_text(folder / DONE, json.dumps(record) + "\n")
    Folder(folder).record(DONE)
    return record


def start_run(folder: Path) -> None:
    """A run's folder, empty: what an interrupted run left there is removed, if b4m made it (:mod:`b4m.owned`);
    anything else is refused."""
    if folder.exists():
        kept = Folder(folder).clear() if Folder(folder).known else sorted(p.name for p in folder.iterdir())
        if kept:
            raise B4MError(
                f"{folder}: holds {', '.join(kept[:3])}, which b4m did not make; move it away and rerun"
            )
    Folder(folder).save()
