"""The one cached sub-fit of every harness (the bench, the demo, the customizability check).

A sub-fit (a method's whole fit, one of the source adapters it is made from, or one of its per-concept parts such
as B4M's stage-1 content adapter) lives in ``<cache>/<kind>/<key>``, ``key`` a hash of everything that decides
its result: its settings (:func:`~b4m.train.identity.run_settings`: no folders), the bytes of its data with their
prompts (:func:`~b4m.train.identity.data_fingerprint`: the same images in another folder are the same data), and
the shipped base model and judges (:func:`assets_fingerprint`, :func:`~b4m.diffusion.builtin_base.weights_digest`).
Whether a folder's run is reused is then decided by the training session's identity with ``policy="refresh"``
(:mod:`b4m.train.session`): an identical finished run is reused, anything else is trained again.

A fit that learns one concept (:attr:`~b4m.methods.base.MethodInfo.concept_option`, a stage-1 adapter) is keyed
by that concept's inputs alone, so a content LoRA or a content stage 1 is the same entry whichever style it is
later paired with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from b4m.config import load_config, to_dict
from b4m.methods.base import Fitted, get_method, resolve_options
from b4m.owned import Folder

__all__ = [
    "assets_fingerprint",
    "cache_root",
    "caching",
    "fit_cached",
    "held",
    "image_sets",
    "sub_fit_folder",
]

_ROOT: ContextVar[Path | None] = ContextVar("b4m_fit_cache", default=None)

# The options of a method config that hold its data, with the concept they belong to.
_IMAGE_OPTIONS = {"content_images": "content", "style_images": "style"}
_OTHER_INPUTS = ("aux_styles", "aux_contents", "content_lora", "style_lora")


def assets_fingerprint() -> str:
    """A hash of the shipped base model's and judges' records (``b4m_base.json``, ``judges.json``, which change
    with every retrain): part of every cache key, so that fits and runs cached on an older base or older judges
    are recomputed, never read stale."""
    from b4m.diffusion.builtin_base import INFO_FILE, default_base_path

    judges = Path(__file__).resolve().parent.parent / "assets" / "judges" / "judges.json"
    h = hashlib.sha256()
    for f in (default_base_path() / INFO_FILE, judges):
        h.update(f.read_bytes() if f.exists() else b"-")
    return h.hexdigest()[:16]


@contextmanager
def caching(root: str | Path) -> Iterator[Path]:
    """Within this block, fits put their per-concept parts under ``root`` and open their runs with
    ``policy="refresh"`` (:func:`cache_root`)."""
    token = _ROOT.set(Path(root))
    try:
        yield Path(root)
    finally:
        _ROOT.reset(token)


def cache_root() -> Path | None:
    """The cache of the enclosing :func:`caching` block (``None``: fits keep everything in their ``--out``)."""
    return _ROOT.get()


def session_policy(overwrite: bool) -> str | None:
    """The policy of a run opened inside a cached fit: ``refresh``, unless the fit itself says ``overwrite``
    (``None``: the run's own default)."""
    return "refresh" if _ROOT.get() is not None and not overwrite else None


def image_sets(
    folders: Sequence[str | Path], prompts: Sequence[str | None], option: str
) -> list[tuple[list[Path], list[str]]]:
    """What :func:`~b4m.train.identity.data_fingerprint` hashes for image folders: each folder's files with the
    prompt each trains with (``prompts[i]``, else the images' own captions)."""
    from b4m.data.folders import read_image_folder

    sets = []
    for folder, prompt in zip(folders, prompts, strict=True):
        images = read_image_folder(folder, option)
        sets.append((list(images.paths), images.prompts(prompt, option)))
    return sets


def sub_fit_folder(
    kind: str, settings: Mapping[str, Any], sets: Sequence[tuple[Sequence[Path], Sequence[str]]]
) -> Path:
    """The folder of a sub-fit under :func:`cache_root`: ``<cache>/<kind>/<hash of settings, data, assets>``, made
    and recorded in the manifests (:mod:`b4m.owned`) of the levels above it."""
    from b4m.diffusion.builtin_base import weights_digest
    from b4m.train.identity import data_fingerprint, run_settings

    root = cache_root()
    if root is None:
        raise RuntimeError("sub_fit_folder needs an enclosing caching() block")
    builtin = str(settings.get("base", "builtin")) in ("builtin", "None")
    spec = {
        "kind": kind,
        "settings": run_settings(settings),
        "data": data_fingerprint(sets),
        "assets": assets_fingerprint(),
        "weights": weights_digest() if builtin else None,
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    # made and recorded as b4m's at every level, so that whoever made the cache can clear it
    return Folder(root).child(kind).child(key).path


@contextmanager
def held(folder: Path) -> Iterator[None]:
    """An exclusive lock on a sub-fit folder for as long as it is fitted, across processes (``flock`` on
    ``<cache>/.locks/<kind>-<key>``): bench shards sharing a concept (a crossed pairs file) wait for the one fitting
    it and then reuse its finished fit instead of training into the same folder. No-op outside a cache."""
    root = cache_root()
    if root is None:
        yield
        return
    import fcntl

    locks = Folder(root).child(".locks")  # b4m's: whoever made the cache can clear it, locks included
    name = f"{folder.parent.name}-{folder.name}"
    with open(locks.path / name, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if not locks.owns(name):
                locks.record(name)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _inputs(cfg: Any) -> list[tuple[list[Path], list[str]]]:
    """The data of a method config: its image folders with their prompts, its auxiliary folders, its source
    files' bytes (under their option's name), in a fixed order."""
    sets = []
    for name in _IMAGE_OPTIONS:
        if getattr(cfg, name, None) is not None:
            prompt = getattr(cfg, name.removesuffix("_images") + "_prompt")
            sets += image_sets([getattr(cfg, name)], [prompt], "--" + name.replace("_", "-"))
    for name in _OTHER_INPUTS:
        value = getattr(cfg, name, None)
        if name.endswith("_lora"):
            sets += [] if value is None else [([Path(value)], ["--" + name.replace("_", "-")])]
        elif value:
            given = list(getattr(cfg, name.removesuffix("s") + "_prompts", None) or [])
            sets += image_sets(value, given or [None] * len(value), "--" + name.replace("_", "-"))
    return sets


def fit_cached(
    method_id: str, cache: str | Path, pipe: Any = None, progress: bool = False, **options: Any
) -> Fitted:
    """Fit ``method_id`` with ``options`` in its cache folder under ``cache`` (see the module docstring), reusing
    an identical finished fit; its per-concept parts are cached under ``cache`` too. A fit that learns one
    concept gets only that concept's images and prompt. Returns :class:`~b4m.methods.base.Fitted`."""
    method = get_method(method_id)
    cfg = resolve_options(load_config(method.config, None, {**options, "out": None, "overwrite": False}))
    if method.concept_option is not None:
        keep = getattr(cfg, method.concept_option)
        drop = {f"{c}_{x}": None for c in _IMAGE_OPTIONS.values() if c != keep for x in ("images", "prompt")}
        cfg = dataclasses.replace(cfg, **drop)
    method.check_needs(cfg)
    with caching(cache):
        settings = {k: v for k, v in to_dict(cfg).items() if k not in _OTHER_INPUTS}  # folders: in the data
        folder = sub_fit_folder(method_id, settings, _inputs(cfg))
        with held(folder):
            return method.fit(dataclasses.replace(cfg, out=folder), pipe=pipe, progress=progress)
