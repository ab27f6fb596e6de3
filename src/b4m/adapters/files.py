"""Save and load PLP adapters (a :class:`PLPAdapter` <-> a b4m LoRA file), and check that two files can fuse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from b4m.adapters.codec import LoraFile, load_lora, save_kohya, save_lora
from b4m.adapters.inject import PLPAdapter, inject_plp
from b4m.adapters.plp import PLPSpec, basis_id, frozen_parts, split_dims
from b4m.errors import B4MError

__all__ = [
    "check_fusable",
    "checked_spec",
    "load_plp",
    "plp_meta",
    "read_plp_file",
    "save_file_for",
    "save_plp",
    "spec_from_meta",
]


def plp_meta(adapter: PLPAdapter, **extra: Any) -> dict[str, Any]:
    """The b4m header of an adapter file: method, rank, rho, construction, basis seed and id, targets, extras."""
    return {
        "method": "b4m-plp",
        "rank": adapter.spec.rank,
        "rho": adapter.spec.rho,
        "orth": adapter.spec.orth,
        "basis_seed": adapter.spec.basis_seed,
        "basis_id": adapter.basis_id(),
        "target_modules": sorted(adapter.module_names),
        **extra,
    }


def save_plp(
    adapter: PLPAdapter,
    path: str | Path,
    *,
    hint: str = "rerun",
    dtype: torch.dtype = torch.float32,
    **extra: Any,
) -> Path:
    """Write ``adapter`` as an ordinary rank-r LoRA (full ``U``, ``V``, scale 1; float32, or ``dtype``:
    ``--save-precision``) plus its PLP metadata,
    in kohya spelling: the one file diffusers (``load_lora_weights``), ComfyUI and A1111 all load. A FLUX adapter
    (``base_family="flux"``) is written in diffusers spelling (``transformer.<module>.lora_A.weight``), which
    ``FluxPipeline.load_lora_weights`` and ComfyUI read at any model size (``b4m export`` writes its kohya
    spelling).

    ``extra`` goes into the header as is, e.g. ``role="content"``, ``trigger_words=["snq"]``, ``base_model=...``;
    ``hint`` is what a full disk's message tells the user to rerun.
    """
    meta = plp_meta(adapter, **extra)
    return save_file_for(extra.get("base_family"), path, adapter.factors(), meta, hint, dtype)


SAVE_PRECISION_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
"""The ``save_precision`` a file's header records for its tensors' dtype (``--save-precision``)."""


def save_file_for(
    family: str | None,
    path: str | Path,
    factors: Any,
    meta: dict[str, Any],
    hint: str = "rerun",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """An adapter file in the spelling b4m writes for the base family: diffusers (prefix ``transformer``) on
    FLUX, kohya on the UNets. ``dtype`` (``--save-precision``): the tensors are cast to it on write and the
    header records it as ``save_precision`` (float32, the default, records nothing: every older file is
    float32); a weight that overflows it is refused, naming it."""
    if dtype != torch.float32:
        name = SAVE_PRECISION_NAMES.get(dtype, str(dtype))
        for module, pair in factors.items():
            if any(not bool(torch.isfinite(t.detach().to(dtype)).all()) for t in pair):
                raise B4MError(
                    f"--save-precision {name}: weights of {module} overflow {name}; save in fp32 or bf16"
                )
        meta = {**meta, "save_precision": name}
    if family == "flux":
        return save_lora(path, factors, meta=meta, prefix="transformer", hint=hint, dtype=dtype)
    return save_kohya(path, factors, meta=meta, hint=hint, dtype=dtype)


def spec_from_meta(meta: dict[str, Any], path: Path | str) -> PLPSpec:
    missing = [k for k in ("rank", "rho", "orth", "basis_seed", "basis_id") if k not in meta]
    if missing:
        raise B4MError(f"{path}: not a b4m PLP adapter (its header lacks {missing}); train it with b4m")
    return PLPSpec(
        rank=int(meta["rank"]), rho=float(meta["rho"]), orth=meta["orth"], basis_seed=int(meta["basis_seed"])
    )


def read_plp_file(path: str | Path) -> tuple[LoraFile, PLPSpec]:
    """Read a PLP adapter file and check its frozen parts against its recorded basis id."""
    lora = load_lora(path)
    return lora, checked_spec(lora, path)


def checked_spec(lora: LoraFile, path: str | Path) -> PLPSpec:
    """The PLP settings of a file already read, after checking its frozen parts against its basis id.

    A file saved in half precision (``save_precision`` fp16/bf16 in its header) holds its frozen parts rounded:
    they are checked against the basis regenerated from the header (equal once rounded) and replaced in
    ``lora.factors`` by the exact float32 ones, so ``A C = 0`` holds again for fusion and fine-tuning."""
    spec = spec_from_meta(lora.meta, path)
    frozen = {}
    for module, (u, v) in lora.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], spec.rho)
        frozen[module] = (u[:d_out], v[:, :d_in])
    actual = basis_id(spec, frozen)
    half = {v: k for k, v in SAVE_PRECISION_NAMES.items()}.get(lora.meta.get("save_precision", "fp32"))
    if actual != lora.meta["basis_id"] and half not in (None, torch.float32):
        actual = _restore_frozen(lora, spec, half)
    if actual != lora.meta["basis_id"]:
        raise B4MError(
            f"{path}: its frozen parts hash to basis id {actual}, but the file records {lora.meta['basis_id']}; "
            "the file was edited or damaged -- retrain or restore it"
        )
    return spec


def _restore_frozen(lora: LoraFile, spec: PLPSpec, dtype: torch.dtype) -> str | None:
    """Regenerate the frozen parts of a half-precision PLP file; if the file's rounded ones match them, put the
    exact ones into ``lora.factors`` and return their basis id (``None``: they do not match)."""
    exact = {}
    for module, (u, v) in lora.factors.items():
        a, c = frozen_parts(spec, module, u.shape[0], v.shape[1])
        d_out, d_in = a.shape[0], c.shape[1]
        if not (
            torch.equal(u[:d_out], a.to(dtype).float()) and torch.equal(v[:, :d_in], c.to(dtype).float())
        ):
            return None
        exact[module] = (a, c)
    for module, (a, c) in exact.items():
        u, v = lora.factors[module]
        lora.factors[module] = (torch.cat([a, u[a.shape[0] :]]), torch.cat([c, v[:, c.shape[1] :]], dim=1))
    return basis_id(spec, exact)


def load_plp(model: nn.Module, path: str | Path, name: str = "b4m") -> PLPAdapter:
    """Inject a PLP adapter into ``model`` from a b4m file; ``B`` and ``D`` are learnable again."""
    lora, spec = read_plp_file(path)
    adapter = inject_plp(model, spec, name=name, only=list(lora.factors))
    adapter.load_factors(lora.factors, source=str(path))
    return adapter


_MUST_MATCH: Sequence[tuple[str, str]] = (
    ("basis_id", "basis id"),
    ("rank", "rank"),
    ("rho", "rho"),
    ("target_modules", "target modules"),
    ("base_model", "base model"),
)


def check_fusable(content: LoraFile, style: LoraFile) -> None:
    """Refuse to fuse adapters whose frozen bases, ranks, rho, targets or base models differ."""
    for key, label in _MUST_MATCH:
        a, b = content.meta.get(key), style.meta.get(key)
        if a != b:
            show_a = a if not isinstance(a, list) else f"{len(a)} modules"
            show_b = b if not isinstance(b, list) else f"{len(b)} modules"
            raise B4MError(
                f"cannot fuse {content.path} and {style.path}: their {label}s differ ({show_a} vs {show_b}); "
                "train the content and style adapters with the same --basis-seed, --rank, --rho, --targets "
                "and base model"
            )
