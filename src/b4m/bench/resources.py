"""What a bench run costs: wall and CPU time, peak CPU memory (resident set size) and peak GPU memory, per
phase.

The CPU time is this process's (``time.process_time``: user + system seconds of every thread, the poll thread's
few included) over the phase: above the wall time when several threads compute at once, below it while the
process waits (for a GPU, for the disk, for a core another process holds).

The RSS peak is sampled by a background thread (every ``poll_s``) over the phase, so it is the phase's own peak,
not the process's lifetime maximum; the GPU peak is ``torch.cuda.max_memory_allocated`` after resetting it at the
phase's start (``None`` without a GPU). Both in MiB."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["measure", "rss_mb"]


def rss_mb() -> float:
    """This process's resident set size in MiB (``/proc/self/statm``; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def measure(poll_s: float = 0.05) -> Iterator[dict[str, Any]]:
    """``with measure() as cost: ...`` fills ``cost`` with ``wall_s``, ``cpu_s``, ``peak_rss_mb`` and
    ``peak_cuda_mb`` on exit."""
    import torch

    cost: dict[str, Any] = {}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak = [rss_mb()]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_s):
            peak[0] = max(peak[0], rss_mb())

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        yield cost
    finally:
        cost["wall_s"] = time.perf_counter() - t0
        cost["cpu_s"] = time.process_time() - cpu0
        stop.set()
        watcher.join()
        cost["peak_rss_mb"] = max(peak[0], rss_mb())
        cost["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
