"""B4M's content and style strengths on a b4m LoRA file's state dict: torch and safetensors only.

ComfyUI's Python rarely has b4m installed, so this module does not import it; ``tests/test_comfyui_node.py``
checks it against b4m's own ``scale_parts`` on every layer, so the two cannot drift apart unnoticed.

A b4m layer's LoRA is ``dW = U V`` (up ``U``: out x r, down ``V``: r x in). Its rows of ``U`` split into a
frozen ``A`` (the first ``d_out = round(rho * out)``) and the content part ``B``; its columns of ``V`` into a
frozen ``C`` (the first ``d_in = round(rho * in)``) and the style part ``D``. Content strength ``c`` scales
``B``, style strength ``s`` scales ``D``: ``dW = [[AC, s AD], [c BC, c s BD]]``. ``rho`` and the rank come from
the file's ``b4m`` header entry.

Keys stay as the file spells them (b4m writes kohya keys, ``lora_unet_<module>.lora_down.weight`` /
``.lora_up.weight`` / ``.alpha``; FLUX adapters also in diffusers spelling, ``transformer.<module>.lora_A.weight``
/ ``.lora_B.weight``), so ComfyUI's LoRA loader maps them as it maps the file itself. FLUX's fused kohya layers
(``double_blocks_<i>_img_attn_qkv``, ``_txt_attn_qkv``, ``single_blocks_<i>_linear1``) hold ``k`` layers as one
LoRA of rank ``k r`` with a block-diagonal up projection; each member is scaled with its own split (q, k and v
are as wide as the layer's input, ``linear1``'s last member, the MLP input, takes the remaining rows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open

__all__ = ["NotAB4MFile", "read_b4m_file", "scale_state_dict", "scaled_lora", "split_dims"]

_PAIRS = (
    (".lora_down.weight", ".lora_up.weight"),
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)
# FLUX kohya keys that fuse several layers into one block-diagonal LoRA (see the module docstring).
_FUSED = re.compile(r"^lora_unet_(double_blocks_\d+_(img|txt)_attn_qkv|single_blocks_\d+_linear1)$")


class NotAB4MFile(ValueError):
    """The file has no b4m PLP header (rho, basis id), so it has no separate content and style parts."""


def split_dims(m: int, n: int, rho: float) -> tuple[int, int]:
    """``(d_out, d_in)``: the frozen rows of ``U`` and columns of ``V``, at least one of each kind kept."""
    return min(max(round(rho * m), 1), m - 1), min(max(round(rho * n), 1), n - 1)


def read_b4m_file(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a ``.safetensors`` file and its ``b4m`` header entry (``{}`` when it has none)."""
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = dict(f.metadata() or {})
    try:
        meta = json.loads(header.get("b4m", "{}"))
    except ValueError:
        meta = {}
    return tensors, meta if isinstance(meta, dict) else {}


def _members(stem: str, up: torch.Tensor, down: torch.Tensor, rank: int) -> list[tuple[int, int, int]]:
    """``(first row, last row + 1, first rank column)`` of every layer the LoRA pair ``stem`` holds."""
    rows, cols, n = up.shape[0], up.shape[1], down.shape[1]
    fused = _FUSED.match(stem)
    if fused is None or cols == rank:
        return [(0, rows, 0)]
    k = 4 if stem.endswith("linear1") else 3
    if cols != k * rank:
        raise NotAB4MFile(f"{stem}: rank {cols} is neither the file's rank {rank} nor {k} x {rank} (fused)")
    widths = [n] * (k - 1) + [rows - n * (k - 1)] if k == 4 else [rows // k] * k
    starts = [sum(widths[:j]) for j in range(k)]
    return [(starts[j], starts[j] + widths[j], j * rank) for j in range(k)]


def scale_state_dict(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], content_scale: float, style_scale: float
) -> dict[str, torch.Tensor]:
    """A copy of ``tensors`` with every layer's content part ``B`` scaled by ``content_scale`` and style part ``D``
    by ``style_scale``; every other tensor (``.alpha``...) as it is. Raises :class:`NotAB4MFile` for a file whose
    ``b4m`` header ``meta`` has no ``rho``/``basis_id``."""
    if "rho" not in meta or "basis_id" not in meta:
        raise NotAB4MFile("not a b4m adapter (its header has no rho and basis id): load it with LoraLoader")
    rho, rank = float(meta["rho"]), int(meta["rank"])
    out = dict(tensors)
    for key in tensors:
        for down_sfx, up_sfx in _PAIRS:
            if not key.endswith(down_sfx) or key[: -len(down_sfx)] + up_sfx not in tensors:
                continue
            stem = key[: -len(down_sfx)]
            up, down = tensors[stem + up_sfx].clone(), tensors[key].clone()
            for first, last, col in _members(stem, up, down, rank):
                d_out, d_in = split_dims(last - first, down.shape[1], rho)
                up[first + d_out : last, col : col + rank] *= content_scale
                down[col : col + rank, d_in:] *= style_scale
            out[stem + up_sfx], out[key] = up, down
    return out


def scaled_lora(path: str, content_scale: float, style_scale: float) -> dict[str, torch.Tensor]:
    """The state dict of the b4m file ``path`` at these strengths, for ``comfy.sd.load_lora_for_models``."""
    tensors, meta = read_b4m_file(path)
    try:
        return scale_state_dict(tensors, meta, content_scale, style_scale)
    except NotAB4MFile as err:
        raise NotAB4MFile(f"{path}: {err}") from None
