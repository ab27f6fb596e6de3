"""FLUX LoRA keys in kohya/ComfyUI spelling: Black Forest Labs' module names, with fused projections.

diffusers names FLUX's layers ``transformer_blocks.<i>.attn.to_q`` (double blocks) and
``single_transformer_blocks.<i>.attn.to_q`` (single blocks); the original (BFL) checkpoint, which kohya's
sd-scripts, ComfyUI and Forge use, names them ``double_blocks.<i>.img_attn.qkv`` and fuses projections:

==========================================  ==========================================================
kohya key (``lora_unet_`` + ...)              diffusers modules (in the fused order)
==========================================  ==========================================================
``double_blocks_<i>_img_attn_qkv``           ``attn.to_q``, ``attn.to_k``, ``attn.to_v``
``double_blocks_<i>_txt_attn_qkv``           ``attn.add_q_proj``, ``attn.add_k_proj``, ``attn.add_v_proj``
``double_blocks_<i>_img_attn_proj``          ``attn.to_out.0``
``double_blocks_<i>_txt_attn_proj``          ``attn.to_add_out``
``double_blocks_<i>_img_mlp_0`` / ``_2``     ``ff.net.0.proj`` / ``ff.net.2``
``double_blocks_<i>_txt_mlp_0`` / ``_2``     ``ff_context.net.0.proj`` / ``ff_context.net.2``
``double_blocks_<i>_img_mod_lin``            ``norm1.linear``
``double_blocks_<i>_txt_mod_lin``            ``norm1_context.linear``
``single_blocks_<i>_linear1``                ``attn.to_q``, ``attn.to_k``, ``attn.to_v``, ``proj_mlp``
``single_blocks_<i>_linear2``                ``proj_out``
``single_blocks_<i>_modulation_lin``         ``norm.linear``
==========================================  ==========================================================

A fused layer's LoRA is written **exactly**, as one of rank ``k r`` (``k`` members of rank ``r``): the down
projection stacks the members' (``[V_q; V_k; V_v]``), the up projection is block-diagonal
(``diag(U_q, U_k, U_v)``), so ``dW_qkv = [U_q V_q; U_k V_k; U_v V_v]``; ``alpha = k r`` keeps the scale 1. A
member the adapter lacks (e.g. ``proj_mlp``, not an attention target) is a zero block. This is the "sparse"
layout diffusers' FLUX kohya converter recognises and splits back exactly (``load_lora_weights``), and a fused
linear LoRA to ComfyUI. On reading, a fused key is split the same way (or, when its up projection is not
block-diagonal, as kohya trains them, into members sharing the down projection) and all-zero members are
dropped. Member widths: q, k, v are as wide as the layer's input; ``proj_mlp`` takes the rest of ``linear1``
(4x on FLUX.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from b4m.errors import B4MError

__all__ = ["from_bfl", "is_flux_layout", "to_bfl"]

_DOUBLE: dict[str, tuple[str, ...]] = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_mod_lin": ("norm1_context.linear",),
}
_SINGLE: dict[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
_KINDS = {
    "transformer_blocks": ("double_blocks", _DOUBLE),
    "single_transformer_blocks": ("single_blocks", _SINGLE),
}
_BFL_KINDS = {bfl: (diffusers, table) for diffusers, (bfl, table) in _KINDS.items()}
_MODULE = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_BFL = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(.+)$")

Factors = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def is_flux_layout(modules: list[str] | Mapping[str, object]) -> bool:
    """Are these diffusers module names FLUX transformer layers (double/single transformer blocks)?"""
    return any(_MODULE.match(n) for n in modules)  # UNet layers start with down_blocks/mid_block/up_blocks


def _member_rows(name: str, n: int) -> int:
    return 4 * n if name == "proj_mlp" else n


def to_bfl(factors: Factors) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{kohya key without lora_unet_: (U, V)}`` (fused layers block-diagonal, see the module docstring)."""
    groups: dict[tuple[str, int, str], dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, pair in factors.items():
        m = _MODULE.match(module)
        key = None
        if m is not None:
            bfl, table = _KINDS[m.group(1)]
            for bfl_name, members in table.items():
                if m.group(3) in members:
                    key = (bfl, int(m.group(2)), bfl_name)
        if key is None:
            raise B4MError(
                f"layer {module}: has no kohya/ComfyUI FLUX name (b4m writes the layers of the double and single "
                "blocks); keep the diffusers file, or adapt block layers only"
            )
        groups.setdefault(key, {})[m.group(3)] = pair
    out = {}
    for (bfl, i, bfl_name), got in sorted(groups.items()):
        members = (_DOUBLE if bfl == "double_blocks" else _SINGLE)[bfl_name]
        if len(members) == 1:
            out[f"{bfl}_{i}_{bfl_name}"] = got[members[0]]
            continue
        u0, v0 = next(iter(got.values()))
        r, n = u0.shape[1], v0.shape[1]
        ups, downs = [], []
        for name in members:
            u, v = got.get(name, (u0.new_zeros(_member_rows(name, n), r), v0.new_zeros(r, n)))
            if u.shape[1] != r or v.shape[1] != n:
                raise B4MError(f"layer {bfl}.{i}.{bfl_name}: its members differ in rank or input width")
            ups.append(u)
            downs.append(v)
        out[f"{bfl}_{i}_{bfl_name}"] = (torch.block_diag(*ups), torch.cat(downs))
    return out


def from_bfl(
    name: str, up: torch.Tensor, down: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """The diffusers layers of one kohya FLUX key (``name`` without ``lora_unet_``), at the file's scale; ``None``
    when ``name`` is not a FLUX block key. Fused keys are split (block-diagonal, else sharing ``down``)."""
    m = _BFL.match(name)
    if m is None or m.group(3) not in _BFL_KINDS[m.group(1)][1]:
        return None
    prefix, table = _BFL_KINDS[m.group(1)]
    members = table[m.group(3)]
    block = f"{prefix}.{m.group(2)}."
    if len(members) == 1:
        return {block + members[0]: (up, down)}
    k, (rows, rank), n = len(members), up.shape, down.shape[1]
    sizes = [n] * (k - 1) + [rows - n * (k - 1)] if members[-1] == "proj_mlp" else [rows // k] * k
    if sum(sizes) != rows or min(sizes) <= 0:
        raise B4MError(f"{name}: a fused FLUX layer of {rows} rows does not split into {members}")
    ups = torch.split(up, sizes)
    out = {}
    if rank % k == 0:
        r = rank // k
        blocks = [u[:, j * r : (j + 1) * r] for j, u in enumerate(ups)]
        off_diagonal = [torch.cat([u[:, : j * r], u[:, (j + 1) * r :]], dim=1) for j, u in enumerate(ups)]
        if not any(bool(o.any()) for o in off_diagonal):
            for j, member in enumerate(members):
                u, v = blocks[j], down[j * r : (j + 1) * r]
                if bool(u.any()) or bool(v.any()):
                    out[block + member] = (u.contiguous(), v.contiguous())
            return out
    for member, u in zip(members, ups, strict=True):  # kohya's own layout: one down shared by the members
        if bool(u.any()):
            out[block + member] = (u.contiguous(), down)
    return out
