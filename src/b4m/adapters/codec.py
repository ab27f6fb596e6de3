"""LoRA files: safetensors in the layouts diffusers, peft, kohya/ComfyUI and A1111 read. Never pickle.

A b4m file is an ordinary rank-r LoRA in peft spelling (``unet.<module>.lora_A.weight`` = down ``V``,
``unet.<module>.lora_B.weight`` = up ``U``), with two header entries:

- ``lora_adapter_metadata``: the peft ``LoraConfig`` (keys prefixed ``unet.``), exactly as diffusers'
  ``save_lora_weights(unet_lora_adapter_metadata=...)`` writes it, so ``load_lora_weights`` restores alpha;
- ``b4m``: JSON with the method, rank, rho, construction, basis seed and id, targets, trigger words, base model.

:func:`load_lora` reads that, the older diffusers spelling (``lora.down``/``lora.up``), the diffusers-0.22
attention-processor spelling of the official B4M checkpoints (``attn1.processor.to_q_lora.up.weight``) and
kohya files (``lora_unet_<path>.lora_down/.lora_up/.alpha``, diffusers block names; on FLUX, Black Forest Labs'
names with fused projections, :mod:`b4m.adapters.flux_keys`); FLUX files in diffusers spelling carry the prefix
``transformer.`` instead of ``unet.``. The scale
``alpha / rank`` is folded into ``U``, so every :class:`LoraFile` is a scale-1 LoRA. Weights that are not
finite are refused on load, naming the file and the first bad tensor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from b4m.adapters import flux_keys
from b4m.adapters.kohya_meta import kohya_fields
from b4m.errors import B4MError
from b4m.io import clean_temp_files, file_mode, save_safetensors

__all__ = [
    "FORMAT_VERSION",
    "LoraFile",
    "file_family",
    "kohya_base_version",
    "clean_temp_files",
    "file_mode",
    "load_lora",
    "save_kohya",
    "save_lora",
]

FORMAT_VERSION = 1
_META_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


@dataclass
class LoraFile:
    """A LoRA read from disk: ``factors[module] = (U, V)`` (up ``m x r``, down ``r x n``) and b4m metadata."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)
    lora_alpha: float | None = None
    path: Path | None = None
    spelling: str = "peft"
    """How the file spells its keys: ``peft``, ``diffusers``, ``diffusers-0.22`` or ``kohya``."""

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values()))[0].shape[1]


def _lora_config_dict(rank: int, alpha: float, modules: list[str]) -> dict[str, Any]:
    from b4m.adapters.inject import lora_config

    config = lora_config(rank, modules, lora_alpha=alpha).to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def save_lora(
    path: str | Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    meta: Mapping[str, Any] | None = None,
    prefix: str = "unet",
    dtype: torch.dtype = torch.float32,
    hint: str = "rerun",
) -> Path:
    """Save ``{module: (U, V)}`` as a diffusers/peft LoRA file (scale 1: ``lora_alpha = r``); ``hint`` is what a
    full disk's message tells the user to rerun."""
    if not factors:
        raise B4MError(f"refusing to write {path}: the adapter has no layers")
    rank = next(iter(factors.values()))[0].shape[1]
    tensors: dict[str, torch.Tensor] = {}
    for module, (u, v) in factors.items():
        tensors[f"{prefix}.{module}.lora_A.weight"] = v.to(dtype)
        tensors[f"{prefix}.{module}.lora_B.weight"] = u.to(dtype)
    config = {f"{prefix}.{k}": v for k, v in _lora_config_dict(rank, rank, sorted(factors)).items()}
    b4m_meta = {"format_version": FORMAT_VERSION, "rank": rank, **(meta or {})}
    header = {
        "format": "pt",
        _META_KEY: json.dumps(config, sort_keys=True),
        "b4m": json.dumps(b4m_meta, sort_keys=True),
    }
    return save_safetensors(tensors, path, header, hint=hint)


def _open(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise B4MError(f"{path}: no such file; give the path of a .safetensors LoRA file")
    if path.suffix != ".safetensors":
        raise B4MError(f"{path}: b4m reads LoRA weights from .safetensors files only (never pickles)")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors, header = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises several error types for damaged files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise B4MError(f"{path}: not a readable safetensors file ({first})") from None
    check_finite(tensors, path)
    return tensors, header


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or infinity, naming ``path`` and the first bad tensor."""
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise B4MError(
                f"{path}: tensor {key} holds {kind} values (a diverged training run or a damaged file); "
                "retrain it or use another file"
            )


# (down suffix, up suffix) spellings accepted on load: peft, diffusers, kohya.
_SPELLINGS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)
# diffusers 0.22 attention processors: ``attn1.processor.to_q_lora.down.weight`` -> module ``attn1.to_q``.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_KOHYA_UNET = "lora_unet_"
# Module-name parts that hold an underscore themselves (diffusers UNet spelling); kohya writes '.' as '_'.
_COMPOUND = (
    "down_blocks",
    "up_blocks",
    "mid_block",
    "transformer_blocks",
    "proj_in",
    "proj_out",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "conv_shortcut",
    "time_emb_proj",
    "time_embedding",
    "add_embedding",
    "linear_1",
    "linear_2",
    "conv_in",
    "conv_out",
    "conv_norm_out",
    "class_embedding",
)


def _kohya_module(name: str, known: dict[str, str]) -> str:
    """The diffusers module path of a kohya name (``down_blocks_1_attentions_0_..._to_q``)."""
    if name in known:
        return known[name]
    out = name
    for part in _COMPOUND:
        out = out.replace(part, part.replace("_", "\0"))
    return out.replace("_", ".").replace("\0", "_")


def _split_key(key: str) -> tuple[str, str] | None:
    """``(module key, "down"|"up"|"alpha")`` of a LoRA tensor name, or ``None``."""
    m = _PROCESSOR.search(key)
    if m:
        proj = "to_out.0" if m.group(1) == "to_out" else m.group(1)
        return key[: m.start()] + "." + proj, m.group(2)
    if key.endswith(".alpha"):
        return key[: -len(".alpha")], "alpha"
    for down_sfx, up_sfx in _SPELLINGS:
        if key.endswith(down_sfx):
            return key[: -len(down_sfx)], "down"
        if key.endswith(up_sfx):
            return key[: -len(up_sfx)], "up"
    return None


def load_lora(path: str | Path, prefix: str = "unet") -> LoraFile:
    """Read a UNet LoRA file in peft, diffusers (also 0.22's ``processor`` spelling and the doubled ``unet.unet.``
    prefix of the official B4M checkpoints) or kohya spelling. Raises :class:`B4MError` naming the file on
    anything unexpected, including weights that are not finite. ``factors`` are scale 1 (alpha folded in)."""
    path = Path(path)
    tensors, header = _open(path)
    meta = _header_json(header, "b4m", path)
    known = {m.replace(".", "_"): m for m in meta.get("target_modules", []) if isinstance(m, str)}
    prefixes = tuple(dict.fromkeys((prefix, "transformer")))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    kohya = False
    spellings = set()
    tensors, flux_kohya = _split_flux_kohya(tensors)
    for key, tensor in tensors.items():
        split = _split_key(key)
        if split is None:
            unknown.append(key)
            continue
        module, kind = split
        if _PROCESSOR.search(key):
            spellings.add("diffusers-0.22")
        elif key.endswith((".lora.down.weight", ".lora.up.weight")):
            spellings.add("diffusers")
        elif key.endswith((".lora_down.weight", ".lora_up.weight")):
            spellings.add("kohya")
        if module.startswith(_KOHYA_UNET):
            kohya = True
            if module[len(_KOHYA_UNET) :].startswith(("input_blocks", "middle_block", "output_blocks")):
                raise B4MError(
                    f"{path}: a kohya file with the original SGM block names ({key}); b4m reads kohya files "
                    "with diffusers block names (down_blocks/mid_block/up_blocks); load this one in ComfyUI "
                    "or A1111 directly"
                )
            module = _kohya_module(module[len(_KOHYA_UNET) :], known)
        elif module.startswith("lora_te"):
            continue  # text-encoder layers of a kohya file: b4m adapts the UNet only
        while module.startswith(tuple(p + "." for p in prefixes)):
            module = module.split(".", 1)[1]
        parts.setdefault(module, {})[kind] = tensor
    if unknown or not parts:
        raise B4MError(
            f"{path}: not a {prefix} LoRA in diffusers, peft or kohya spelling "
            f"({len(unknown)} unrecognised keys, e.g. {unknown[:2]})"
        )
    incomplete = [m for m, p in parts.items() if "down" not in p or "up" not in p]
    if incomplete:
        raise B4MError(f"{path}: layers without both up and down weights, e.g. {incomplete[:2]}")
    ranks = {p["down"].shape[0] for p in parts.values()}
    if len(ranks) > 1 or any(p["down"].ndim != 2 or p["up"].ndim != 2 for p in parts.values()):
        raise B4MError(f"{path}: b4m reads LoRAs of one rank over linear layers; this file has ranks {ranks}")
    rank = ranks.pop()
    alpha = None
    if _META_KEY in header:
        config = _header_json(header, _META_KEY, path)
        alpha = next((config[f"{p}.lora_alpha"] for p in prefixes if f"{p}.lora_alpha" in config), None)
    factors = {}
    for module, p in parts.items():
        a = float(p["alpha"]) if "alpha" in p else alpha
        scale = 1.0 if a is None else float(a) / rank
        u = p["up"].float()
        factors[module] = (u if scale == 1.0 else u * scale, p["down"].float())
    if kohya:
        alphas = {float(p["alpha"]) for p in parts.values() if "alpha" in p}
        alpha = alphas.pop() if len(alphas) == 1 else None
    if flux_kohya:  # alpha folded in on the split: scale 1
        kohya, alpha = True, alpha if alpha is not None else float(rank)
    spelling = "kohya" if kohya else next(iter(sorted(spellings - {"kohya"})), "peft")
    return LoraFile(factors=factors, meta=meta, lora_alpha=alpha, path=path, spelling=spelling)


def _split_flux_kohya(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Kohya FLUX keys (``lora_unet_double_blocks_0_img_attn_qkv``...) rewritten in peft spelling, one pair per
    diffusers layer (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``..., alpha folded into up),
    fused layers split (:func:`~b4m.adapters.flux_keys.from_bfl`); every other key as it is. Also says whether
    there were any."""
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key, tensor in tensors.items():
        if not key.startswith(_KOHYA_UNET) or not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        up = tensors.get(f"{stem}.lora_up.weight")
        if up is None:
            continue
        alpha = tensors.get(f"{stem}.alpha")
        down = tensor.float()
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        split = flux_keys.from_bfl(stem[len(_KOHYA_UNET) :], up.float() * scale, down)
        if split is None:
            continue
        for module, (u, v) in split.items():
            out[f"transformer.{module}.lora_A.weight"] = v
            out[f"transformer.{module}.lora_B.weight"] = u
        consumed |= {key, f"{stem}.lora_up.weight", f"{stem}.alpha"}
    if not consumed:
        return tensors, False
    return {k: v for k, v in tensors.items() if k not in consumed} | out, True


def _header_json(header: dict[str, str], key: str, path: Path) -> dict[str, Any]:
    if key not in header:
        return {}
    try:
        value = json.loads(header[key])
    except ValueError:
        raise B4MError(f"{path}: its {key!r} header entry is not JSON; the file is damaged") from None
    return value if isinstance(value, dict) else {}


# Width of the text states the UNet's cross-attention reads (attn2.to_k's input) -> kohya's base model name.
_CROSS_WIDTH = {2048: "sdxl_base_v1-0", 768: "sd_v1", 1024: "sd_v2"}


def file_family(lora: LoraFile) -> str | None:
    """The base family a LoRA file is for: what b4m recorded (``base_family``), else read from its layers
    (``flux``, ``sdxl``, ``sd``); ``builtin`` for the built-in model; ``None`` when it cannot tell."""
    recorded = lora.meta.get("base_family")
    if isinstance(recorded, str):
        return recorded
    if str(lora.meta.get("base_model") or "") == "builtin":
        return "builtin"
    version = kohya_base_version(lora)
    widths = {v.shape[1] for m, (_, v) in lora.factors.items() if m.endswith("attn2.to_k")}
    known = version == "flux1" or widths & set(_CROSS_WIDTH) or lora.meta.get("base_model")
    if version is None or not known:  # the UNet layout alone is a guess (the built-in model has one too)
        return None
    return {"flux1": "flux", "sdxl_base_v1-0": "sdxl"}.get(version, "sd")


def kohya_base_version(lora: LoraFile) -> str | None:
    """``ss_base_model_version`` from what the file knows: the cross-attention width of its ``attn2.to_k``
    layers (SDXL 2048, SD 1.x 768, SD 2.x 1024), else the recorded base model's name, else the UNet's layout
    (SDXL's first down block has no attention, SD's has); ``flux1`` for FLUX transformer layers (what kohya's
    sd-scripts and Forge write); ``None`` for b4m's built-in model."""
    if flux_keys.is_flux_layout(lora.factors):
        return "flux1"
    widths = {v.shape[1] for m, (_, v) in lora.factors.items() if m.endswith("attn2.to_k")}
    for width in widths:
        if width in _CROSS_WIDTH:
            return _CROSS_WIDTH[width]
    base = str(lora.meta.get("base_model") or "").lower()
    if base == "builtin":
        return None
    if "xl" in base:
        return "sdxl_base_v1-0"
    if "stable-diffusion-2" in base or "sd2" in base:
        return "sd_v2"
    if "stable-diffusion" in base or "sd-1" in base or "sd15" in base:
        return "sd_v1"
    blocks = {m.split(".attentions.")[0] for m in lora.factors if ".attentions." in m}
    if any(b.startswith("down_blocks.") for b in blocks):
        return "sd_v1" if "down_blocks.0" in blocks else "sdxl_base_v1-0"
    return None


def save_kohya(
    path: str | Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    base_model_version: str | None = None,
    meta: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    hint: str = "rerun",
) -> Path:
    """Save as kohya/ComfyUI/A1111 keys: ``lora_unet_<module path, '.' -> '_'>.lora_down/.lora_up/.alpha``; FLUX
    layers in Black Forest Labs' names with fused projections (:mod:`b4m.adapters.flux_keys`).

    ``alpha = r`` (scale 1), float32 by default (lossless: :func:`load_lora` reads back the same factors).
    ``ss_base_model_version`` must start with ``sdxl_`` for A1111 to list an SDXL LoRA; ``None`` takes it from
    the factors and ``meta`` (:func:`kohya_base_version`), ``""`` leaves it out. diffusers'
    ``load_lora_weights`` reads these files too (exactly, scale 1), so this is the one file every tool opens.
    ``hint`` is what a full disk's message tells the user to rerun. The other ``ss_*`` fields A1111 and Civitai
    show (output name, base model, resolution, the trigger words in ``ss_tag_frequency`` and
    ``ss_training_comment``) come from ``meta`` (:func:`~b4m.adapters.kohya_meta.kohya_fields`).
    """
    if not factors:
        raise B4MError(f"refusing to write {path}: the adapter has no layers")
    if base_model_version is None:
        base_model_version = kohya_base_version(LoraFile(dict(factors), dict(meta or {})))
    tensors: dict[str, torch.Tensor] = {}
    rank = next(iter(factors.values()))[0].shape[1]
    if flux_keys.is_flux_layout(factors):  # BFL names, fused qkv / linear1 (flux_keys)
        keyed = {_KOHYA_UNET + k: pair for k, pair in flux_keys.to_bfl(factors).items()}
    else:
        keyed = {_KOHYA_UNET + module.replace(".", "_"): pair for module, pair in factors.items()}
    for key, (u, v) in keyed.items():
        tensors[f"{key}.lora_down.weight"] = v.to(dtype)
        tensors[f"{key}.lora_up.weight"] = u.to(dtype)
        tensors[f"{key}.alpha"] = torch.tensor(float(v.shape[0]), dtype=dtype)  # its own rank: scale 1
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        **({"ss_base_model_version": base_model_version} if base_model_version else {}),
        **kohya_fields(meta or {}, path),
        "b4m": json.dumps({"format_version": FORMAT_VERSION, **(meta or {}), "rank": rank}, sort_keys=True),
    }
    return save_safetensors(tensors, path, header, hint=hint)
