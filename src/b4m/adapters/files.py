"""Save and load PLP adapters (a :class:`PLPAdapter` <-> a b4m LoRA file), and check that two files can fuse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from b4m.adapters.codec import LoraFile, load_lora, save_kohya, save_lora
from b4m.adapters.inject import PLPAdapter, inject_plp
from b4m.adapters.plp import PLPSpec, basis_id, split_dims
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


def save_plp(adapter: PLPAdapter, path: str | Path, *, hint: str = "rerun", **extra: Any) -> Path:
    """Write ``adapter`` as an ordinary rank-r LoRA (full ``U``, ``V``, float32, scale 1) plus its PLP metadata,
    in kohya spelling: the one file diffusers (``load_lora_weights``), ComfyUI and A1111 all load. A FLUX adapter
    (``base_family="flux"``) is written in diffusers spelling (``transformer.<module>.lora_A.weight``), which
    ``FluxPipeline.load_lora_weights`` and ComfyUI read at any model size (``b4m export`` writes its kohya
    spelling).

    ``extra`` goes into the header as is, e.g. ``role="content"``, ``trigger_words=["snq"]``, ``base_model=...``;
    ``hint`` is what a full disk's message tells the user to rerun.
    """
    return save_file_for(extra.get("base_family"), path, adapter.factors(), plp_meta(adapter, **extra), hint)


def save_file_for(
    family: str | None, path: str | Path, factors: Any, meta: dict[str, Any], hint: str = "rerun"
) -> Path:
    """An adapter file in the spelling b4m writes for the base family: diffusers (prefix ``transformer``) on
    FLUX, kohya on the UNets."""
    if family == "flux":
        return save_lora(path, factors, meta=meta, prefix="transformer", hint=hint)
    return save_kohya(path, factors, meta=meta, hint=hint)


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
    """The PLP settings of a file already read, after checking its frozen parts against its basis id."""
    spec = spec_from_meta(lora.meta, path)
    frozen = {}
    for module, (u, v) in lora.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], spec.rho)
        frozen[module] = (u[:d_out], v[:, :d_in])
    actual = basis_id(spec, frozen)
    if actual != lora.meta["basis_id"]:
        raise B4MError(
            f"{path}: its frozen parts hash to basis id {actual}, but the file records {lora.meta['basis_id']}; "
            "the file was edited or damaged -- retrain or restore it"
        )
    return spec


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
