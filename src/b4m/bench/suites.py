"""The bench's pre-registered suites: what is tuned on (``dev``) and what is reported (``test``).

Fixed here and in ``docs/suites.md`` before the first test-suite run (``docs/measuring.md``: tune on dev, report
test, once). Every knob, preset, learning rate and "best rho" of any method is chosen on the dev suite only; the
test suite's pairs use none of the dev instances, so nothing reported was seen while tuning.

- **dev** instances: teddy#0, teddy#3, cat#0, cat#2, papercut#2, papercut#5, knit#0, knit#1 (each in two of the
  eight dev pairs, every content class with every style class twice) and the new-class pair mushroom:glass.
- **test**: 16 personal-instance pairs drawn from the other instances by :func:`draw_test_pairs` (seed
  :data:`SUITE_SEED`; each content and style class crossed with each other four times, each instance in at most
  two pairs), and four new-class pairs of held-out classes the dev suite does not use.

Suites run at 5 prompts x :data:`SUITE_SEEDS` sampling seeds = 40 images per run.
"""

from __future__ import annotations

import dataclasses
import random

__all__ = [
    "DEV_INSTANCES",
    "REPLICATES",
    "SUITES",
    "SUITE_SEED",
    "SUITE_SEEDS",
    "Replicates",
    "draw_test_pairs",
]

DEV_INSTANCES: tuple[str, ...] = (
    "teddy#0", "teddy#3", "cat#0", "cat#2", "papercut#2", "papercut#5", "knit#0", "knit#1",
)  # fmt: skip
SUITE_SEED = 20261204
"""The seed of the test suite's draw (the date it was fixed)."""
SUITE_SEEDS = 8
"""Sampling seeds per prompt in a suite run: 5 prompts x 8 = 40 images per run."""

_CONTENT_CLASSES = ("teddy", "cat")
_STYLE_CLASSES = ("papercut", "knit")
_PER_CELL = 4  # pairs per content class x style class


def draw_test_pairs(seed: int = SUITE_SEED, n_instances: int = 8) -> tuple[str, ...]:
    """The test suite's instance pairs: per class, its non-dev instances shuffled (``seed``) and the first two
    used again, giving eight slots; a content class's first four slots meet the first style class, the next four
    the second (and mirrored for the styles), so each instance is in at most two pairs and no pair repeats."""
    rng = random.Random(seed)
    slots: dict[str, list[str]] = {}
    for cls in (*_CONTENT_CLASSES, *_STYLE_CLASSES):
        free = [f"{cls}#{i}" for i in range(n_instances) if f"{cls}#{i}" not in DEV_INSTANCES]
        rng.shuffle(free)
        slots[cls] = (free + free[:2])[: 2 * _PER_CELL]
    pairs = []
    for ci, content in enumerate(_CONTENT_CLASSES):
        for si, style in enumerate(_STYLE_CLASSES):
            cs = slots[content][si * _PER_CELL : (si + 1) * _PER_CELL]
            ss = slots[style][ci * _PER_CELL : (ci + 1) * _PER_CELL]
            pairs += [f"{c}:{s}" for c, s in zip(cs, ss, strict=True)]
    return tuple(pairs)


SUITES: dict[str, tuple[str, ...]] = {
    "dev": (
        "teddy#3:papercut#5", "cat#2:knit#1", "teddy#0:papercut#2", "teddy#3:knit#1",
        "teddy#0:knit#0", "cat#0:knit#0", "cat#2:papercut#2", "cat#0:papercut#5",
        "mushroom:glass",
    ),
    "test": (
        *draw_test_pairs(),
        "umbrella:neon", "anchor:sticker", "guitar:wood", "anchor:neon",
    ),
}  # fmt: skip
"""Suite name -> its content:style pairs (``b4m bench --suite NAME``)."""


@dataclasses.dataclass(frozen=True)
class Replicates:
    """Training-seed replicates (seed variance): the first ``pairs`` pairs of a bench are trained again at each of
    ``seeds`` (references, prompts and sampling noise unchanged), for the rows of ``methods`` (with B4M's arms)."""

    pairs: int = 4
    seeds: tuple[int, ...] = (1, 2)
    methods: tuple[str, ...] = ("b4m", "lora")


REPLICATES: dict[str, Replicates] = {"test": Replicates()}
"""Suite name -> its training-seed replicates: the test suite's first four pairs at training seeds 1 and 2 besides
the bench's ``--seed`` (0), for B4M and the plain content LoRA, whose difference is the headline."""
