"""B4M's two knobs in tools that only know ordinary LoRAs: ``b4m export --content-scale/--style-scale`` and
``b4m export --split``.

A b4m layer's update is ``dW = U V`` with ``U = [A; B]`` (rows ``:d_out`` frozen ``A``, the rest content
``B``) and ``V = [C, D]`` (columns ``:d_in`` frozen ``C``, the rest style ``D``), so

    dW = [[A C, A D], [B C, B D]]

With content strength ``c`` and style strength ``s`` (``B -> c B``, ``D -> s D``:
:func:`~b4m.adapters.plp.scale_parts`, what ``b4m generate --content-scale/--style-scale`` uses) it becomes
``[[AC, s AD], [c BC, c s BD]]``. Two ways to give that to any tool:

- **bake** one pair of strengths into one ordinary rank-r LoRA (:func:`scaled_factors`, :func:`export_scaled`);
- **split** the file into ordinary LoRAs, one per block, each an exact rank-r factorization of its block padded
  with zeros to the layer's shape (:func:`part_factors`, :func:`export_split`):

  ======================  =============================  ==============================  ==========
  part (file suffix)       block                          up (m x r) / down (r x n)       strength
  ======================  =============================  ==============================  ==========
  ``style``                ``A D`` (top right)            ``[A; 0]`` / ``[0, D]``         ``s``
  ``content``              ``B C`` (bottom left)          ``[0; B]`` / ``[C, 0]``         ``c``
  ``interaction``          ``B D`` (bottom right)         ``[0; B]`` / ``[0, D]``         ``c s``
  ``frozen``               ``A C`` (top left)             ``[A; 0]`` / ``[C, 0]``         ``1``
  ======================  =============================  ==============================  ==========

  Chained at those strengths they sum to the scaled ``dW`` of every layer. ``frozen`` is written only where
  ``A C`` is not zero (the ``approx`` and ``none`` constructions; ``exact``, the default, has ``A C = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from b4m.adapters.codec import LoraFile, load_lora, save_kohya
from b4m.adapters.files import checked_spec
from b4m.adapters.plp import scale_parts, split_dims, split_factors
from b4m.checks import check_out_file, check_out_folder
from b4m.errors import B4MError
from b4m.owned import check_file, claim, record_file

__all__ = [
    "PARTS",
    "Part",
    "SplitFile",
    "export_scaled",
    "export_split",
    "part_factors",
    "plp_rho",
    "scaled_factors",
]

# Header entries that make a file a PLP adapter; a split part is not one (its frozen rows/columns are zero).
_PLP_KEYS = ("rho", "orth", "basis_seed", "basis_id")


@dataclass(frozen=True)
class Part:
    """One block of ``dW`` as its own LoRA: file suffix, block name, what it holds, the strength to give it."""

    name: str
    block: str
    holds: str
    strength: str


PARTS: tuple[Part, ...] = (
    Part("style", "AD", "the style (A D, top right)", "S"),
    Part("content", "BC", "the content (B C, bottom left)", "C"),
    Part("interaction", "BD", "how content and style interact (B D, bottom right)", "C*S"),
    Part("frozen", "AC", "the frozen top-left block A C (not zero for --orth approx/none)", "1"),
)


@dataclass(frozen=True)
class SplitFile:
    """A file :func:`export_split` wrote and the strength to load it at."""

    path: Path
    part: Part

    def strength_at(self, content_scale: float, style_scale: float) -> float:
        return {"S": style_scale, "C": content_scale, "C*S": content_scale * style_scale, "1": 1.0}[
            self.part.strength
        ]


def plp_rho(lora: LoraFile, option: str) -> float:
    """The file's ``rho`` once its frozen parts match its basis id, or a one-line :class:`B4MError` naming
    ``option`` when it is no b4m PLP adapter."""
    missing = [k for k in ("rho", "basis_id") if k not in lora.meta]
    if missing:
        raise B4MError(
            f"{option}: {lora.path} is not a b4m PLP adapter (its header has no {' or '.join(missing)}), so it "
            "has no separate content and style parts; give a file from b4m train/fuse, or scale a plain LoRA "
            "with the tool's own LoRA strength"
        )
    return checked_spec(lora, lora.path or "the adapter").rho


def scaled_factors(
    lora: LoraFile, content_scale: float, style_scale: float, option: str = "--content-scale/--style-scale"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's ``(U, V)`` with ``B`` scaled by ``content_scale`` and ``D`` by ``style_scale``
    (:func:`~b4m.adapters.plp.scale_parts`): an ordinary LoRA of the same rank."""
    rho = plp_rho(lora, option)
    out = {}
    for module, (u, v) in lora.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], rho)
        out[module] = scale_parts(u, v, d_out, d_in, content_scale, style_scale)
    return out


def part_factors(
    u: torch.Tensor, v: torch.Tensor, d_out: int, d_in: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"AC"|"AD"|"BC"|"BD": (up, down)}``: each block of ``dW = U V`` as a full-shape rank-r LoRA whose
    ``up @ down`` is that block in place and zero elsewhere; the four sum to ``U V``."""
    a, b, c, d = split_factors(u, v, d_out, d_in)
    up_a = torch.cat([a, torch.zeros_like(b)], dim=0)
    up_b = torch.cat([torch.zeros_like(a), b], dim=0)
    down_c = torch.cat([c, torch.zeros_like(d)], dim=1)
    down_d = torch.cat([torch.zeros_like(c), d], dim=1)
    return {"AC": (up_a, down_c), "AD": (up_a, down_d), "BC": (up_b, down_c), "BD": (up_b, down_d)}


def _check_scale(value: float | None, option: str) -> None:
    if value is not None and not math.isfinite(value):
        raise B4MError(
            f"{option} {value}: give a finite number (1 keeps the trained strength, 0 removes the part)"
        )


def _ready(src: str | Path, out: Path, option: str, overwrite: bool, is_file: bool) -> LoraFile:
    (check_out_file if is_file else check_out_folder)(out, option)
    lora = load_lora(src)
    if is_file and out.exists() and out.resolve() == Path(src).resolve():
        raise B4MError(f"{option} {out}: is the input file; choose another path")
    if is_file:
        check_file(out, option, overwrite)
    return lora


def export_scaled(
    src: str | Path,
    out: str | Path,
    content_scale: float | None = None,
    style_scale: float | None = None,
    version: str | None = None,
    overwrite: bool = False,
    option: str = "--out",
) -> Path:
    """Write ``src`` with the strengths baked in (``None``: 1) as one ordinary LoRA in kohya spelling (FLUX: Black
    Forest Labs' names, as every b4m export); the header keeps the PLP entries (``B`` and ``D`` are only scaled,
    so the file is still a b4m adapter and the knobs still work on it, multiplying) and records
    ``baked_scales``."""
    _check_scale(content_scale, "--content-scale")
    _check_scale(style_scale, "--style-scale")
    out = Path(out)
    lora = _ready(src, out, option, overwrite, is_file=True)
    flag = "--content-scale" if content_scale is not None else "--style-scale"
    content_scale = 1.0 if content_scale is None else float(content_scale)
    style_scale = 1.0 if style_scale is None else float(style_scale)
    factors = scaled_factors(lora, content_scale, style_scale, flag)
    baked = dict(lora.meta.get("baked_scales") or {"content": 1.0, "style": 1.0})
    meta = lora.meta | {
        "baked_scales": {
            "content": float(baked.get("content", 1.0)) * content_scale,
            "style": float(baked.get("style", 1.0)) * style_scale,
        }
    }
    save_kohya(out, factors, base_model_version=version, meta=meta)
    return record_file(out)


def export_split(
    src: str | Path,
    folder: str | Path,
    version: str | None = None,
    overwrite: bool = False,
    option: str = "--out",
) -> list[SplitFile]:
    """Write the parts of the PLP adapter ``src`` as ordinary LoRAs (kohya spelling) into ``folder``:
    ``<stem>_style``, ``<stem>_content``, ``<stem>_interaction`` and, where ``A C`` is not zero,
    ``<stem>_frozen`` (``.safetensors``). Returns what was written, in that order."""
    src, folder = Path(src), Path(folder)
    if folder.suffix == ".safetensors":
        raise B4MError(
            f"{option} {folder}: --split writes several files; give a folder, not a .safetensors file"
        )
    if folder.exists() and not folder.is_dir():
        raise B4MError(f"{option} {folder}: is a file; give a folder for the parts")
    lora = _ready(src, folder, option, overwrite, is_file=False)
    rho = plp_rho(lora, "--split")
    blocks: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {p.block: {} for p in PARTS}
    for module, (u, v) in lora.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], rho)
        for block, pair in part_factors(u, v, d_out, d_in).items():
            blocks[block][module] = pair
    parts = [p for p in PARTS if p.block != "AC" or lora.meta.get("orth", "exact") != "exact"]
    stem = src.stem
    paths = {p.name: folder / f"{stem}_{p.name}.safetensors" for p in parts}
    owner = claim(folder, [p.name for p in paths.values()], option, overwrite)
    clash = [path for path in paths.values() if path.exists()]
    if clash and not overwrite:
        raise B4MError(
            f"{option} {folder}: {clash[0].name} exists (b4m made it); choose another folder or pass --overwrite "
            "to replace it"
        )
    base_meta = {k: v for k, v in lora.meta.items() if k not in _PLP_KEYS}
    written = []
    for part in parts:
        meta: dict[str, Any] = base_meta | {
            "role": f"{lora.meta.get('role', 'adapter')} {part.name} part",
            "split": {
                "part": part.name,
                "block": part.block,
                "holds": part.holds,
                "strength": part.strength,
                "source": src.name,
                "source_basis_id": lora.meta["basis_id"],
                "rho": rho,
            },
        }
        save_kohya(paths[part.name], blocks[part.block], base_model_version=version, meta=meta)
        owner.record(paths[part.name].name)
        written.append(SplitFile(paths[part.name], part))
    return written
