"""Fitting the card: the text encoders and the VAE leave the GPU once their outputs are cached, and the frozen
denoiser's weights can be quantized (``--quantize-base``).

- :func:`release_encoders` / :func:`restore_encoders`: every trainer's loop (:func:`b4m.train.loop.run_steps`,
  through :class:`b4m.train.watch.Watch`) moves the text encoders and the VAE to the CPU when training starts
  (their outputs are cached by then: latents, prompt embeddings, preview prompt embeddings) and back when it
  ends, so a caller's pipeline is whole again afterwards. On a CPU machine both are no-ops.
- :func:`quantize_denoiser`: ``int8`` / ``fp8`` with optimum-quanto (weights only: ``QLinear``/``QConv2d`` that
  dequantize on the fly), ``nf4`` with bitsandbytes (``Linear4bit``; its CPU backend runs it too). The quantized
  layers stay ``nn.Linear`` subclasses, so peft's LoRA layers (B4M's PLP adapters) and b4m's
  :class:`~b4m.adapters.deltas.DeltaLinear` (the baselines) wrap them as they wrap a plain layer: the adapter
  runs in full precision beside the quantized base (``y = W0_q x + U (V x)``).
- :func:`dense_weight`: a layer's weight as an ordinary tensor, quantized or not (QR-LoRA's basis needs it).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from b4m.errors import B4MError

__all__ = [
    "ENCODERS",
    "check_quantize",
    "checkpointed",
    "enable_checkpointing",
    "dense_weight",
    "quantize_denoiser",
    "release_encoders",
    "restore_encoders",
]

ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
"""The pipeline parts whose outputs training caches: they need not stay on the GPU while it trains."""


def move(module: nn.Module, device: torch.device | str) -> None:
    """``module.to(device)``: the one place b4m moves a pipeline part for memory (tests watch it)."""
    module.to(device)


def _parts(pipe: Any) -> dict[str, nn.Module]:
    return {n: m for n in ENCODERS if isinstance(m := getattr(pipe, n, None), nn.Module)}


def release_encoders(pipe: Any) -> dict[str, torch.device]:
    """Move the text encoders and the VAE to the CPU; returns where each was (for :func:`restore_encoders`).
    Frees the GPU's cache when something left it."""
    where: dict[str, torch.device] = {}
    for name, module in _parts(pipe).items():
        device = _device_of(module)
        where[name] = device
        move(module, "cpu")
    if any(d.type != "cpu" for d in where.values()) and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return where


def restore_encoders(pipe: Any, where: dict[str, torch.device]) -> None:
    """Put the parts :func:`release_encoders` moved back where they were."""
    parts = _parts(pipe)
    for name, device in where.items():
        if name in parts:
            move(parts[name], device)


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------- checkpointing
def checkpointed(module: Any, *args: Any) -> Any:
    """diffusers' gradient-checkpointing call (``torch.utils.checkpoint``, non-reentrant) with b4m's per-forward
    settings restored while the backward pass recomputes the block: stage 1's strict MCP routing
    (:func:`b4m.adapters.plp.mcp_routing`) and a baseline's delta mode (:func:`b4m.adapters.deltas.delta_mode`)
    are context variables, unset by the time the backward pass runs; without them the recomputation would build
    another graph (torch refuses it: "a different number of tensors was saved")."""
    import contextlib

    from b4m.adapters import deltas, plp

    route, mode = plp._ROUTE.get(), deltas._MODE.get()

    @contextlib.contextmanager
    def restored() -> Any:
        tokens = plp._ROUTE.set(route), deltas._MODE.set(mode)
        try:
            yield
        finally:
            deltas._MODE.reset(tokens[1])
            plp._ROUTE.reset(tokens[0])

    return torch.utils.checkpoint.checkpoint(
        module.__call__, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), restored())
    )


def enable_checkpointing(model: nn.Module) -> None:
    """Gradient checkpointing on a diffusers UNet or FLUX transformer, through :func:`checkpointed`."""
    model.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed)


# --------------------------------------------------------------------------------------------- quantization
def check_quantize(kind: str, problems: list[str], option: str = "--quantize-base") -> None:
    """Say (in ``problems``) what ``kind`` needs and is missing, before any model loads."""
    if kind == "none":
        return
    if kind in ("int8", "fp8"):
        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None:
            problems.append(f"{option} {kind}: needs optimum-quanto (pip install optimum-quanto)")
    elif kind == "nf4":
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"{option} nf4: needs bitsandbytes (pip install bitsandbytes)")
        elif not _bnb_4bit_runs():
            problems.append(
                f"{option} nf4: nf4 needs a CUDA GPU (this bitsandbytes has no 4-bit kernels here)"
            )
    else:
        problems.append(f"{option} {kind}: give none, int8, fp8 or nf4")


def _bnb_4bit_runs() -> bool:
    """Whether bitsandbytes' NF4 kernels run on this machine (CUDA, or its CPU backend in 0.45+)."""
    if torch.cuda.is_available():
        return True
    try:
        layer = _nf4_linear(nn.Linear(64, 8), torch.float32).to("cpu")
        with torch.no_grad():
            layer(torch.zeros(1, 64))
    except Exception:  # noqa: BLE001 - any failure means: not here
        return False
    return True


def _nf4_linear(layer: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        compute_dtype=compute_dtype,
        quant_type="nf4",
        device="meta",
    )
    q.weight = bnb.nn.Params4bit(layer.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.data.to("cpu"), requires_grad=False)
    return q


def quantize_denoiser(model: nn.Module, kind: str, device: torch.device | str = "cpu") -> int:
    """Quantize the frozen weights of ``model`` (the UNet or FLUX's transformer) in place, before any adapter is
    injected; returns how many layers were quantized. ``nf4``: every ``nn.Linear`` becomes a bitsandbytes
    ``Linear4bit`` quantized as it moves to ``device`` (one layer at a time: the full-precision weights never sit
    on the GPU together)."""
    if kind == "none":
        return 0
    if kind in ("int8", "fp8"):
        from optimum.quanto import freeze, qfloat8, qint8, quantize

        quantize(model, weights=qint8 if kind == "int8" else qfloat8)
        freeze(model)
        model.requires_grad_(False)
        return sum(1 for m in model.modules() if type(m).__name__.startswith("Q"))
    if kind == "nf4":
        dtype = next(model.parameters()).dtype
        compute = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        count = 0
        for name, layer in list(model.named_modules()):
            if type(layer) is not nn.Linear:
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _nf4_linear(layer, compute).to(device))
            count += 1
        model.requires_grad_(False)
        return count
    raise B4MError(f"--quantize-base {kind}: give none, int8, fp8 or nf4")


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """``layer.weight`` as a plain tensor: dequantized from quanto's or bitsandbytes' storage when quantized."""
    weight = layer.weight
    if hasattr(weight, "quant_state") and getattr(weight, "quant_state", None) is not None:  # bnb Params4bit
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    if hasattr(weight, "dequantize") and type(weight).__module__.startswith("optimum"):
        return weight.dequantize().float()
    return weight.detach()
