"""Dataset repeats (``--repeats``): how many times each image counts in its folder's sampling pool.

Kohya's ``N_name`` folders count every image of a folder ``N`` times in one pool shared by all folders. b4m draws
each step's samples from every folder separately (B4M's multi-correspondence batches: one target and one sample
of each auxiliary folder), so counts only change anything relative to the other images of the same folder; a
count is therefore given per image, by file name: ``GLOB=N`` entries (the last matching entry wins; a pattern
with a ``/`` matches the path's tail, e.g. ``closeups/*``), and a bare ``N`` for the images no entry names.
Sampling draws uniformly from the pool (image ``i`` listed ``count_i`` times): with every count 1 the pool is the
images themselves and the draws are exactly those of a run without repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePath

from b4m.errors import B4MError

__all__ = ["check_repeats", "parse_repeats", "repeat_counts"]


def parse_repeats(entries: Sequence[str | int]) -> tuple[int, list[tuple[str, int]]]:
    """``(count of unnamed images, [(glob, count), ...])``; one :class:`B4MError` for a malformed entry."""
    default, rules = 1, []
    for entry in entries:
        text = str(entry).strip()
        pattern, eq, value = text.rpartition("=")
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1 or (eq and not pattern.strip()):
            raise B4MError(
                f"--repeats {entry}: write N (a whole number >= 1, for every image no pattern names) or "
                "GLOB=N, e.g. --repeats 'face*=3' 2"
            )
        if eq:
            rules.append((pattern.strip(), count))
        else:
            default = count
    return default, rules


def check_repeats(entries: Sequence[str | int], problems: list[str]) -> None:
    """Add the problem with ``entries`` (if any) to ``problems``."""
    try:
        parse_repeats(entries)
    except B4MError as err:
        problems.append(str(err))


def repeat_counts(paths: Sequence[Path], entries: Sequence[str | int]) -> list[int]:
    """Each image's count in its folder's pool (see the module docstring)."""
    default, rules = parse_repeats(entries)
    counts = []
    for path in paths:
        count = default
        for pattern, n in rules:
            if PurePath(path).match(pattern):
                count = n
        counts.append(count)
    return counts
