"""H0 (issue 27): do the judges read a personal subject as well under a personal style as under photo?

Fresh renders (seeds the judges never trained on) of every dev content instance in photo and under every dev style
instance, and of every dev style instance over held-in contents and over each dev content instance; the judges'
instance accuracy on each cell. If the content judge loses the personal subject under a personal style, a low
content-instance accuracy of a fused adapter would be the judge's fault, not the method's.

    python benchmarks/h0_judges.py            # writes benchmarks/h0_judges.md (about a minute on one core)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from b4m.bench.suites import DEV_INSTANCES
from b4m.models.judges.network import WorldJudges
from b4m.world.concepts import HELD_IN_CONTENTS
from b4m.world.instances import parse_concept
from b4m.world.refs import PROMPT_ATTRIBUTES
from b4m.world.render import Scene, render

CONTENTS = [x for x in DEV_INSTANCES if x.split("#")[0] in ("teddy", "cat")]
STYLES = [x for x in DEV_INSTANCES if x.split("#")[0] in ("papercut", "knit")]
SEED0 = 9_000_000  # far from every training and evaluation seed of the judges


def _images(content: str, style: str, n: int, offset: int) -> torch.Tensor:
    scenes = [Scene.of(content, style, **PROMPT_ATTRIBUTES[i % len(PROMPT_ATTRIBUTES)]) for i in range(n)]
    arr = np.stack([render(sc, SEED0 + offset + i) for i, sc in enumerate(scenes)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # uint8: the judges scale it


def _accuracy(judges: WorldJudges, images: torch.Tensor, name: str, kind: str) -> float:
    ref = parse_concept(name, kind)
    with torch.no_grad():
        pred = judges.predict(images)[f"{kind}_id"]
    return float(np.mean([p == (ref.name, ref.code) for p in pred]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=40, help="renders per cell (default 40)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("h0_judges.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    judges = WorldJudges.load()
    n = args.n
    content_rows = []
    for k, c in enumerate(CONTENTS):
        cells = [_accuracy(judges, _images(c, s, n, 1000 * k + 100 * j), c, "content")
                 for j, s in enumerate(["photo", *STYLES])]  # fmt: skip
        content_rows.append((c, cells))
    style_rows = []
    for k, s in enumerate(STYLES):
        held_in = [c for c in HELD_IN_CONTENTS if c not in ("teddy", "cat")]
        imgs = torch.cat([_images(held_in[i % len(held_in)], s, 1, 50_000 + 1000 * k + i) for i in range(n)])
        cells = [_accuracy(judges, imgs, s, "style")]
        cells += [_accuracy(judges, _images(c, s, n, 60_000 + 1000 * k + 100 * j), s, "style")
                  for j, c in enumerate(CONTENTS)]  # fmt: skip
        style_rows.append((s, cells))
    wall = time.perf_counter() - t0

    lines = [
        "# H0: do the judges read a personal subject under a personal style?",
        "",
        f"Command: `python benchmarks/h0_judges.py -n {n}` ({wall:.0f} s, one thread, shared machine). Fresh renders "
        f"(seeds from {SEED0}, never used to train or evaluate the judges), {n} per cell, the five evaluation "
        "prompts' attributes in turn; cell = the judges' instance accuracy (class and every trait right).",
        "",
        "## Content instance accuracy: the subject in photo and under each dev style instance",
        "",
        "| content | photo | " + " | ".join(STYLES) + " |",
        "|---|" + "---:|" * (len(STYLES) + 1),
        *[f"| {c} | " + " | ".join(f"{v:.2f}" for v in cells) + " |" for c, cells in content_rows],
        "",
        "## Style instance accuracy: the style over held-in contents and over each dev content instance",
        "",
        "| style | held-in contents | " + " | ".join(CONTENTS) + " |",
        "|---|" + "---:|" * (len(CONTENTS) + 1),
        *[f"| {s} | " + " | ".join(f"{v:.2f}" for v in cells) + " |" for s, cells in style_rows],
        "",
    ]
    photo = np.mean([cells[0] for _, cells in content_rows])
    styled = np.mean([np.mean(cells[1:]) for _, cells in content_rows])
    lines += [
        f"Mean content-instance accuracy: photo {photo:.2f}, under the personal styles {styled:.2f}.",
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
