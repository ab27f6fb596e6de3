"""``klora``: K-LoRA (Ouyang et al., CVPR 2025), training-free per-layer, per-step selection of the content or the
style LoRA by their top-K weights. Generation-time only.

For every target layer ``l`` with source updates ``dW_c = U_c V_c`` and ``dW_s = U_s V_s``:

    S_c = sum of the K largest |dW_c| entries,   S_s = the same for dW_s                       (top-K scores)
    gamma = mean over layers of ||dW_c||_1 / ||dW_s||_1                                          (balance)
    s(t) = alpha (1 - t / T) + beta                                                             (time schedule)
    dW_l(t) = dW_c  if S_c / gamma > s(t) S_s,  else dW_s

with ``K = 64``, ``alpha = 1.5``, ``beta = 0.5`` (the authors' values) and ``T`` the scheduler's
``num_train_timesteps``: early in sampling (``t`` near ``T``, ``s`` near 0.5) layers keep the content, later
(``s`` up to 2) the style takes over. ``t`` is the real sampler timestep, read from the UNet's own ``timestep``
argument; the public code instead counts layer calls (``count % 28000``), a number that only matches SDXL's layer
count at its default step count and classifier-free guidance, and drifts across images of one session.

Because the update changes with ``t``, no single LoRA reproduces it: the file holds both sources (``content.*`` and
``style.*`` keys, ``lora_alpha / r`` folded in) plus the settings, and ``b4m generate --adapter FILE`` installs
the sampling hook (:func:`install_klora`). Stock ``load_lora_weights`` does not read it, by design.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from b4m.adapters.codec import FORMAT_VERSION
from b4m.adapters.deltas import Delta, attach
from b4m.diffusion.pipeline import base_model_name
from b4m.errors import B4MError
from b4m.io import save_safetensors
from b4m.methods.base import Fitted, Method, register
from b4m.methods.catalogue import CATALOGUE, KLoRAOptions
from b4m.methods.common import MERGE_SOURCES, Session, align_sources, read_source
from b4m.methods.direct_merge import _words, check_same_base

__all__ = [
    "KLoRADelta",
    "KLoRAOptions",
    "Timestep",
    "balance",
    "fit_klora",
    "install_klora",
    "read_klora",
    "topk_score",
]


def topk_score(dw: torch.Tensor, k: int) -> float:
    """Sum of the ``k`` largest ``|dW|`` entries (all of them if the layer has fewer)."""
    flat = dw.abs().flatten()
    return float(torch.topk(flat, min(k, flat.numel())).values.sum())


def balance(content: dict, style: dict, names: list[str]) -> float:
    """``gamma``: the mean over layers of ``||dW_c||_1 / ||dW_s||_1`` (layers where the style is zero skipped)."""
    ratios = []
    for n in names:
        s = float((style[n][0] @ style[n][1]).abs().sum())
        if s > 0:
            ratios.append(float((content[n][0] @ content[n][1]).abs().sum()) / s)
    return sum(ratios) / len(ratios) if ratios else 1.0


class Timestep:
    """The sampler's current timestep, captured from the UNet's ``timestep`` argument by a forward pre-hook."""

    def __init__(self, num_train_timesteps: int) -> None:
        self.t: float | None = None
        self.T = float(num_train_timesteps)

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:
            raise B4MError("klora: the UNet was called without a timestep")
        self.t = float(torch.as_tensor(t).flatten()[0])


class KLoRADelta(Delta):
    """One layer: both sources (buffers) and the precomputed ratio ``S_c / (gamma S_s)``; picks one per step."""

    def __init__(
        self, content: tuple, style: tuple, ratio: float, clock: Timestep, alpha: float, beta: float
    ) -> None:
        super().__init__()
        for key, t in zip(("u_c", "v_c", "u_s", "v_s"), (*content, *style), strict=True):
            self.register_buffer(key, t.detach().clone().float())
        self.ratio, self.clock, self.alpha, self.beta = ratio, clock, alpha, beta

    def choice(self, t: float) -> str:
        scale = self.alpha * (1.0 - t / self.clock.T) + self.beta
        return "content" if self.ratio > scale else "style"

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clock.t is None:
            raise B4MError("klora: no sampler timestep seen yet; call the UNet with its timestep")
        if self.choice(self.clock.t) == "content":
            return self.u_c, self.v_c
        return self.u_s, self.v_s


def _save(path: Path, content: dict, style: dict, meta: dict, hint: str = "rerun") -> Path:
    tensors = {}
    for role, src in (("content", content), ("style", style)):
        for n, (u, v) in src.items():
            tensors[f"{role}.{n}.lora_A.weight"] = v.float()
            tensors[f"{role}.{n}.lora_B.weight"] = u.float()
    header = {"format": "pt", "b4m": json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True)}
    return save_safetensors(tensors, path, header, hint)


def read_klora(path: str | Path) -> tuple[dict, dict, dict]:
    """``(content factors, style factors, settings)`` of a K-LoRA file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise B4MError(f"{path}: no such file")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("b4m", "{}"))
        if meta.get("method") != "klora":
            raise B4MError(f"{path}: not a K-LoRA file (b4m run klora writes them)")
        out: dict[str, dict[str, list]] = {"content": {}, "style": {}}
        for key in f.keys():
            role, _, rest = key.partition(".")
            name, slot = (
                (rest[: -len(".lora_A.weight")], 1)
                if rest.endswith(".lora_A.weight")
                else (rest[: -len(".lora_B.weight")], 0)
            )
            out[role].setdefault(name, [None, None])[slot] = f.get_tensor(key)
    return (
        {n: tuple(p) for n, p in out["content"].items()},
        {n: tuple(p) for n, p in out["style"].items()},
        meta,
    )


def install_klora(pipe: Any, path: str | Path) -> dict[str, KLoRADelta]:
    """The sampling hook: attach K-LoRA's per-step selection to the pipeline's UNet or FLUX transformer; returns
    the layer modules."""
    from b4m.diffusion.flux import is_flux
    from b4m.diffusion.pipeline import denoiser

    content, style, meta = read_klora(path)
    # FluxPipeline calls its transformer at timestep / 1000, in [0, 1]; the UNets get the scheduler's timestep.
    clock = Timestep(1 if is_flux(pipe) else pipe.scheduler.config.num_train_timesteps)
    deltas = {
        n: KLoRADelta(content[n], style[n], meta["ratios"][n], clock, meta["alpha"], meta["beta"])
        for n in sorted(content)
    }
    model = denoiser(pipe)
    attach(model, deltas)
    model.register_forward_pre_hook(clock.hook, with_kwargs=True)
    return deltas


def fit_klora(cfg: KLoRAOptions, pipe: Any = None, progress: bool = True) -> Fitted:
    if cfg.k < 1:
        raise B4MError(f"--k {cfg.k}: give K >= 1")
    check_same_base(cfg)
    session = Session(cfg, "klora", inputs=MERGE_SOURCES)
    if session.finished is not None:
        return Fitted(session.finished, hook=install_klora)
    session.begin()
    content = read_source(cfg.content_lora, "--content-lora")
    style = read_source(cfg.style_lora, "--style-lora")
    names, content, style = align_sources(content, style)
    gamma = balance(content, style, names)
    ratios = {}
    for n in names:
        s_c, s_s = (
            topk_score(content[n][0] @ content[n][1], cfg.k),
            topk_score(style[n][0] @ style[n][1], cfg.k),
        )
        ratios[n] = (s_c / gamma) / s_s if s_s > 0 else float("inf")
    meta = {
        "method": "klora",
        "k": cfg.k,
        "alpha": cfg.alpha,
        "beta": cfg.beta,
        "gamma": gamma,
        "ratios": ratios,
        "base_model": base_model_name(cfg.base),
        "trigger_words": _words(cfg),
        "sources": {"content": str(cfg.content_lora), "style": str(cfg.style_lora)},
    }
    path = session.finish(lambda path, hint: _save(path, content, style, meta, hint))
    return Fitted(path, merged_delta=None, info={"gamma": gamma, "ratios": ratios}, hook=install_klora)


register(Method.of(CATALOGUE["klora"], fit_klora, sampling_hook=install_klora))
