"""The one torch CPU thread policy of b4m: chosen once per run, recorded, and reused on resume.

Two torch threads on a 2-core machine that another process keeps busy run 10-100x slower than one
(OpenMP workers wait for a descheduled sibling), so the automatic choice looks at how busy the other
processes keep the CPUs. But the thread count changes the order of float reductions, so a run's result
depends on it: the count is chosen **once** when a run starts, written into the run (its checkpoints and
log), and a resumed run reuses the recorded count whatever the machine's load is then. Nothing changes it
mid-run.

Precedence: an explicit count (a config field, e.g. ``BaseModelConfig.num_threads``) > the environment
variable ``B4M_THREADS`` > the automatic choice. The test suite sets ``B4M_THREADS``.
"""

from __future__ import annotations

import os
import time

__all__ = ["ENV_VAR", "apply", "choose", "measure_other_load"]

ENV_VAR = "B4M_THREADS"
_BUSY_THRESHOLD = 0.3
"""Other processes using more than this fraction of a core count as a busy machine."""


def measure_other_load(interval: float = 0.3) -> float | None:
    """Cores' worth of CPU time used by *other* processes over ``interval`` seconds (``/proc/stat`` minus
    this process's own time); ``None`` where ``/proc/stat`` does not exist."""

    def sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as fh:
                vals = [int(v) for v in fh.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.monotonic(), busy, t.user + t.system

    first = sample()
    if first is None:
        return None
    time.sleep(interval)
    second = sample()
    if second is None:
        return None
    (t0, b0, s0), (t1, b1, s1) = first, second
    return max(0.0, (b1 - b0) - (s1 - s0)) / max(1e-9, t1 - t0)


def _env_threads() -> int:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return 0
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        from b4m.errors import B4MError

        raise B4MError(f"{ENV_VAR}={raw!r}: expected a whole number of threads (0 = automatic)")
    return n


def choose(requested: int = 0, recorded: int | None = None) -> int:
    """The thread count for a run.

    ``recorded``: the count a resumed run was started with (it wins, so that the resumed run computes what
    the uninterrupted one would); ``requested``: an explicit count, 0 for none. Otherwise ``B4M_THREADS``,
    otherwise automatic: ``min(2, cpus)`` on a quiet machine, 1 while other processes keep it busy.
    """
    if recorded:
        return int(recorded)
    if requested:
        return int(requested)
    if env := _env_threads():
        return env
    cpus = min(2, os.cpu_count() or 1)
    if cpus == 1:
        return 1
    other = measure_other_load()
    if other is None:
        other = os.getloadavg()[0]
    return 1 if other > _BUSY_THRESHOLD else cpus


_chosen: int | None = None


def apply(requested: int = 0, recorded: int | None = None) -> int:
    """:func:`choose` a count and set it in torch; returns it (to be recorded in the run).

    The automatic choice is made once per process: later calls without ``requested`` or ``recorded`` keep it,
    so that the jobs of one command (the demo's stages, sampling, scoring) all run with the same count.
    """
    import torch

    global _chosen
    n = _chosen if (_chosen is not None and not requested and not recorded) else choose(requested, recorded)
    _chosen = n
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
