"""The method contract and registry: every method is one module, registered by id.

A method has a config dataclass (a subclass of :class:`MethodOptions`, built by the project's config engine, so it
loads from YAML/TOML files and CLI flags alike) and a description (:class:`MethodInfo`), both in
:mod:`b4m.methods.catalogue`, which imports no torch (the command line builds its help from it alone); the method's
module holds its maths and registers one :class:`Method` (``Method.of(info, fit)``):

- ``id``: how the CLI (``b4m run ID``), the API (``b4m.run_method(ID, ...)``) and the benchmark call it;
- ``needs``: which inputs it requires, from :data:`NEEDS` (``"a|b"``: one of them; checked before any model
  loads);
- ``writes``: what its one adapter file is;
- ``fit(cfg, pipe, progress) -> Fitted``: trains or computes the adapter and writes it to ``<out>/adapter.safetensors``;
- ``sampling_hook`` (generation-time methods only): installs the method into a pipeline for sampling;
- ``sources``: the source adapters it is made from (:class:`Source`: which option, made by which method on which
  concept), so a harness makes them without knowing method ids;
- ``budget``: what its ``--steps`` count (``"train"``: a full training, as long as B4M's stage 1; ``"merge"``: a
  short merger fit; ``None``: it trains nothing);
- ``concept_option``: the option naming the one concept a fit learns (``lora``'s ``concept``): such a fit depends
  on that concept's inputs only, and a cached fit (:mod:`b4m.methods.cache`) drops the other concept's;
- ``parts``: the per-concept sub-fits it exposes in :attr:`Fitted.parts` (B4M's stage-1 ``content`` and
  ``style`` adapters, each depending on its own concept only and cached per concept).

Every method shares the option names of :class:`MethodOptions` (``--base``, ``--out``, ``--content-images``,
``--style-images``, ``--content-lora``, ``--style-lora``, ``--steps``, ``--lr``, ``--rank``, ``--seed``,
``--overwrite``...).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from b4m.config import opt
from b4m.errors import B4MError
from b4m.options import OVERWRITE_HELP, preset_key

__all__ = [
    "LORA_SOURCES",
    "METHOD_MODULES",
    "NEEDS",
    "Fitted",
    "Method",
    "MethodInfo",
    "Source",
    "MethodOptions",
    "all_methods",
    "get_method",
    "register",
    "resolve_options",
    "sampling_hook_for",
]

# What a method may need, with the option that supplies it.
NEEDS: dict[str, str] = {
    "content_images": "--content-images",
    "style_images": "--style-images",
    "aux_sets": "--aux-styles/--aux-contents",
    "content_lora": "--content-lora",
    "style_lora": "--style-lora",
}

# Modules that register methods, imported on first use of the registry (in the README's table order).
METHOD_MODULES: tuple[str, ...] = (
    "b4m.methods.b4m",
    "b4m.methods.lora",
    "b4m.methods.joint",
    "b4m.methods.direct_merge",
    "b4m.methods.ziplora",
    "b4m.methods.nplora",
    "b4m.methods.qrlora",
    "b4m.methods.klora",
    "b4m.methods.duolora",
)


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Options every method understands (each method's config adds its own)."""

    # Fields left at None are filled from the method's presets (``PRESETS``) for the base model at hand.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Under ``b4m run``, fields inherited from a stage config's group show their ``run_help`` (config.opt).
    HELP_KEY: ClassVar[str] = "run_help"

    base: str = opt("builtin", "base model: 'builtin', or a diffusers SD/SDXL/FLUX folder or hub id")
    out: Path | None = opt(
        None, "output folder; the adapter is <out>/adapter.safetensors (default: runs/<method>)"
    )
    content_images: Path | None = opt(
        None, "folder of content images (captions from .txt files or --content-prompt)"
    )
    content_prompt: str | None = opt(None, "prompt for the content images, e.g. 'a photo of a snq teddy'")
    style_images: Path | None = opt(
        None, "folder of style images (captions from .txt files or --style-prompt)"
    )
    style_prompt: str | None = opt(None, "prompt for the style images, e.g. 'a cup in wzk papercut style'")
    content_lora: Path | None = opt(None, "content LoRA file (.safetensors), e.g. from 'b4m run lora'")
    style_lora: Path | None = opt(
        None, "style LoRA file (.safetensors), e.g. from 'b4m run lora --concept style'"
    )
    steps: int | None = opt(None, "training steps (method preset)")
    lr: float | None = opt(None, "learning rate (method preset)")
    rank: int | None = opt(None, "LoRA rank (method preset)")
    resolution: int | None = opt(
        None, "training resolution in pixels (512 on SD/SDXL, 32 on the built-in model)"
    )
    targets: list[str] = opt(
        ["to_q", "to_k", "to_v", "to_out.0"],
        "module-name suffixes to adapt (peft rules); on FLUX the default adds add_q/k/v_proj and to_add_out",
    )
    blocks: list[str] = opt(
        [],
        "adapt only these blocks, e.g. transformer_blocks.0-9 (FLUX) or up_blocks.0.attentions.1; default: all",
    )
    seed: int = opt(0, "seed for initialisation, images, timesteps and noise")
    overwrite: bool = opt(False, OVERWRITE_HELP)


def resolve_options(cfg: Any) -> Any:
    """Fill the ``None`` fields of ``cfg`` from its class's ``PRESETS`` for the base model (``builtin``/``sd``)."""
    preset = type(cfg).PRESETS.get(preset_key(getattr(cfg, "base", None)), {})
    names = {f.name for f in dataclasses.fields(cfg)}
    fill = {k: v for k, v in preset.items() if k in names and getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **fill)


@dataclass
class Fitted:
    """What ``fit`` returns: the adapter file, and the method's own merged update for checking the export.

    ``merged_delta()`` computes ``dW`` per layer *from the method's own parameterisation* (column coefficients,
    masks, ``Q dR``...), not from the exported factors, so comparing it with the file tests the fold.
    ``hook`` is set for generation-time methods (K-LoRA) whose file is not one LoRA.
    """

    path: Path
    merged_delta: Callable[[], dict[str, Any]] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    hook: Callable[..., Any] | None = None
    parts: dict[str, Path] = dataclasses.field(default_factory=dict)
    """The per-concept sub-fits (:attr:`MethodInfo.parts`), e.g. B4M's ``{"content": ..., "style": ...}``."""


@dataclass(frozen=True)
class Source:
    """A source adapter a method is made from: ``option`` (``"content_lora"``) is filled with the adapter that
    ``method`` fits on the images of ``concept`` (its ``concept_option`` set to it)."""

    option: str
    concept: str
    method: str = "lora"


#: The source adapters of the merging methods: a content and a style LoRA, each ``lora`` on one concept.
LORA_SOURCES: tuple[Source, ...] = (Source("content_lora", "content"), Source("style_lora", "style"))


def _check_entry(entry: MethodInfo | Method) -> None:
    unknown = {part for need in entry.needs for part in need.split("|")} - set(NEEDS)
    if unknown:
        raise ValueError(f"method {entry.id}: unknown needs {sorted(unknown)} (known: {sorted(NEEDS)})")
    if not (isinstance(entry.config, type) and issubclass(entry.config, MethodOptions)):
        raise ValueError(f"method {entry.id}: its config must subclass MethodOptions")
    if entry.budget not in ("train", "merge", None):
        raise ValueError(f"method {entry.id}: budget must be 'train', 'merge' or None")


@dataclass(frozen=True)
class MethodInfo:
    """What is known of a method before its module (and torch) loads: its id, config and description.

    :data:`b4m.methods.catalogue.CATALOGUE` holds one per method; the command line's help reads only these."""

    id: str
    config: type
    summary: str
    trains: str
    needs: tuple[str, ...]
    writes: str
    sources: tuple[Source, ...] = ()
    budget: str | None = "train"
    concept_option: str | None = None
    parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_entry(self)


@dataclass(frozen=True)
class Method:
    """One registered method (see the module docstring)."""

    id: str
    config: type
    fit: Callable[..., Fitted]
    summary: str
    trains: str
    needs: tuple[str, ...]
    writes: str
    sources: tuple[Source, ...] = ()
    budget: str | None = "train"
    concept_option: str | None = None
    parts: tuple[str, ...] = ()
    sampling_hook: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        _check_entry(self)

    @classmethod
    def of(
        cls, info: MethodInfo, fit: Callable[..., Fitted], sampling_hook: Callable[..., Any] | None = None
    ) -> Method:
        """The method described by ``info`` (its catalogue entry), computed by ``fit``."""
        fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(MethodInfo)}
        return cls(fit=fit, sampling_hook=sampling_hook, **fields)

    def check_needs(self, cfg: Any) -> None:
        """Every declared input is given (one error listing all missing options)."""
        missing = []
        for need in self.needs:
            if need == "aux_sets":
                if getattr(cfg, "mcp", True) and not (cfg.aux_styles and cfg.aux_contents):
                    missing.append("--aux-styles and --aux-contents (or --no-mcp)")
            elif all(getattr(cfg, part) is None for part in need.split("|")):
                missing.append(" or ".join(NEEDS[part] for part in need.split("|")))
        if missing:
            raise B4MError(f"{self.id}: give {', '.join(missing)}")


_REGISTRY: dict[str, Method] = {}
_LOADED = False


def register(method: Method) -> Method:
    """Add ``method`` to the registry (an id registers once)."""
    if method.id in _REGISTRY and _REGISTRY[method.id] is not method:
        raise ValueError(f"method id {method.id!r} is registered twice")
    _REGISTRY[method.id] = method
    return method


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for module in METHOD_MODULES:
            importlib.import_module(module)
        _LOADED = True


def all_methods() -> dict[str, Method]:
    """Every registered method, by id."""
    _load()
    return dict(_REGISTRY)


def get_method(method_id: str) -> Method:
    _load()
    if method_id not in _REGISTRY:
        raise B4MError(f"unknown method {method_id!r}; known: {', '.join(sorted(_REGISTRY))} ('b4m methods')")
    return _REGISTRY[method_id]


def sampling_hook_for(path: str | Path) -> Callable[..., Any] | None:
    """The sampling hook of a generation-time method's file (K-LoRA), or ``None`` for an ordinary LoRA file."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            method = json.loads((f.metadata() or {}).get("b4m", "{}")).get("method")
    except Exception:  # not readable here: the LoRA loader reports it properly
        return None
    found = all_methods().get(method) if isinstance(method, str) else None
    return None if found is None else found.sampling_hook
