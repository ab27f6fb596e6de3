"""Block ranges: restrict the adapted layers to some blocks (``--blocks``), B-LoRA style.

An entry names a block path and, optionally, an index or an inclusive index range under it:
``transformer_blocks.0-9`` (FLUX's double blocks 0 to 9), ``single_transformer_blocks.20-37``,
``transformer_blocks.7``, ``up_blocks.0.attentions.1`` (SDXL, B-LoRA's style block) or ``mid_block`` (all of
it). A layer is kept when its module name lies under one of the entries (``<path>.<i>.``...); the target rule
(``--targets``) still picks the layers inside those blocks. Pure module-name logic: no torch, no diffusers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from b4m.errors import B4MError

__all__ = ["BlockRange", "in_blocks", "parse_blocks"]

_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*?)(?:\.(\d+)(?:-(\d+))?)?$")

BlockRange = tuple[str, range | None]


def parse_blocks(blocks: Iterable[str], option: str = "--blocks") -> list[BlockRange]:
    """``[(path, indices or None)]`` of ``blocks``; a malformed entry is one :class:`B4MError` naming it."""
    out: list[BlockRange] = []
    for entry in blocks:
        m = _ENTRY.match(str(entry).strip())
        if m is None or (m.group(2) is None and m.group(1).endswith(".")):
            raise B4MError(
                f"{option} {entry}: give a block path with an optional index or range, e.g. "
                "transformer_blocks.0-9, single_transformer_blocks.20, up_blocks.0.attentions.1"
            )
        path, first, last = m.group(1), m.group(2), m.group(3)
        if first is None:
            out.append((path, None))
            continue
        lo, hi = int(first), int(last if last is not None else first)
        if hi < lo:
            raise B4MError(f"{option} {entry}: the range runs backwards; give FIRST-LAST with FIRST <= LAST")
        out.append((path, range(lo, hi + 1)))
    return out


def _under(name: str, block: BlockRange) -> bool:
    path, indices = block
    if indices is None:
        return name.startswith(path + ".")
    if not name.startswith(path + "."):
        return False
    head = name[len(path) + 1 :].split(".", 1)[0]
    return head.isdigit() and int(head) in indices


def in_blocks(names: Iterable[str], blocks: Sequence[str], option: str = "--blocks") -> list[str]:
    """The names of ``names`` under one of ``blocks`` (all of them when ``blocks`` is empty). An entry that
    holds none of them is refused: it names a block the model lacks, or one with no targeted layer."""
    names = list(names)
    if not blocks:
        return names
    parsed = parse_blocks(blocks, option)
    for entry, block in zip(blocks, parsed, strict=True):
        if not any(_under(n, block) for n in names):
            raise B4MError(
                f"{option} {entry}: no targeted layer lies in it (targeted layers look like {names[:1]}); "
                "give blocks this model has"
            )
    return [n for n in names if any(_under(n, b) for b in parsed)]
