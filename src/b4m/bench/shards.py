"""Benches in several processes: each process's slot (``--shard K/N`` or the launcher's environment; whole pairs
per shard), and shard 0's wait for the others, stopped by a failing shard's note."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from b4m.bench.catalogue import parse_shard
from b4m.errors import B4MError

SHARDS = "shards"
"""Where a failing shard leaves its error for shard 0 (``<rank>-of-<world>.failed``)."""
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip


def process_slot(shard: str = "") -> tuple[int, int]:
    """``(rank, world)`` of this bench process: from ``--shard K/N``, else from the launcher's environment
    (``accelerate launch`` / torchrun set ``RANK`` and ``WORLD_SIZE``), else ``(0, 1)``.

    Launched that way, the process then forgets the launcher's process group: every training inside a shard is
    single-process (the shards train *different* pairs, so DDP's gradient averaging across them would be wrong),
    on the GPU of its ``LOCAL_RANK`` when there are GPUs."""
    import os

    if shard:
        return parse_shard(shard)  # type: ignore[return-value]  # checked by plan()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    for key in _DIST_ENV:
        os.environ.pop(key, None)
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    return rank, world


def wait_for(ready: Any, what: str, root: Path, since: float, progress: bool, poll_s: float = 2.0) -> None:
    """Block until ``ready()``; a shard's failure note written after ``since`` stops the wait with its error."""
    shown = False
    while not ready():
        failed = [f for f in sorted((root / SHARDS).glob("*.failed")) if f.stat().st_mtime >= since - 1]
        if failed:
            note = failed[0].read_text(encoding="utf-8").strip()
            raise B4MError(
                f"bench shard {failed[0].stem}: {note}; fix it and rerun the same command (it resumes)"
            )
        if progress and not shown:
            print(f"b4m bench: waiting for {what} ...", flush=True)
            shown = True
        time.sleep(poll_s)
