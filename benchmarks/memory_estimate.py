"""Estimated GPU memory of b4m's LoRA training on SD 1.5, SDXL and FLUX.1-dev at 512 and 1024 px, for each
``--quantize-base`` and with/without ``--gradient-checkpointing``: **computed, not measured** (no weights are
downloaded and no GPU is used). Writes ``benchmarks/memory.md``.

How it is computed:

- **Parameter counts**: every model is instantiated on the ``meta`` device (no memory) from its published config,
  written below (diffusers' UNet2DConditionModel / FluxTransformer2DModel / AutoencoderKL, transformers'
  CLIPTextModel(WithProjection) / T5EncoderModel), and its parameters are counted.
- **Weights**: denoiser Linear/Conv weights at 4 (fp32), 2 (bf16), 1 (int8 / fp8, optimum-quanto, plus one
  fp32 scale per output channel) or 0.516 bytes (NF4, bitsandbytes: 4 bits + double-quantized absmax per 64,
  Linear layers only); every other parameter at the base dtype (bf16, or fp32 in the fp32 column).
- **Activations**: the training step itself (forward and backward through the denoiser with rank-64 fp32 LoRA
  factors on the attention projections, B4M's default targets) is run on the ``meta`` device under a dispatch
  mode that adds up the bytes of every tensor while it is alive; the peak is the estimate. Attention is counted
  as a fused (flash / memory-efficient) kernel, which saves q, k, v, the output and the log-sum-exp, as on a
  GPU (PyTorch's meta device would otherwise pick the math path and hold the full attention matrix).
- **Trainer state**: LoRA factors, their gradients and AdamW's two moments, fp32.
- **Caching**: the text encoders (bf16) and the VAE are on the GPU with the (quantized) denoiser until the
  latents and prompt embeddings are cached, then leave (``b4m.diffusion.memory``). The estimate is the larger
  of that caching peak (weights + VAE encoding activations of one image) and the training peak.
- **Overhead**: +1.0 GB for the CUDA context and allocator fragmentation.

The step is B4M's stage 1 as the paper runs it: 1 target + 3 auxiliary samples in one batched forward (stage 2
uses 2 samples and the plain-LoRA baseline 1, so they need less). Replace these by measured figures
(``benchmarks/gpu_sdxl.py --quantize-base ... --gradient-checkpointing``) whenever a GPU is lent.

Run: ``python benchmarks/memory_estimate.py`` (about a minute on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GB = 1024**3
OVERHEAD_GB = 1.0
RANK = 64
SAMPLES = 4  # B4M stage 1: 1 target + 3 auxiliary samples per step

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}  # fmt: skip
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}  # fmt: skip
VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip
FLUX_VAE = VAE | {"latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 768}  # fmt: skip
CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
             "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 1280}  # fmt: skip
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False}  # fmt: skip
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FLUX_TARGETS = (*TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

PRECISIONS = ("fp32", "bf16", "int8", "nf4")


# ------------------------------------------------------------------------------------------------ counting
class _Peak(TorchDispatchMode):
    """The peak of the bytes held by tensors made inside it (views and in-place results are not new memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        aliased = {i for i, r in enumerate(func._schema.returns) if r.alias_info is not None}
        flat = tree_flatten(out)[0] if isinstance(out, tuple | list) else [out]
        for i, t in enumerate(flat):
            if isinstance(t, torch.Tensor) and i not in aliased and not func._schema.is_mutable:
                size = t.numel() * t.element_size()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


class _FusedAttention(torch.autograd.Function):
    """What a flash / memory-efficient attention kernel keeps for backward: q, k, v, out, log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):  # noqa: ANN001
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sdpa(query=None, key=None, value=None, *args, **kwargs):  # noqa: ANN001, ARG001
    if query is None:  # called positionally
        query, key, value, *args = args
    return _FusedAttention.apply(query, key, value)


@contextlib.contextmanager
def _fused_attention():
    real = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


def _meta(build):  # noqa: ANN001
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def _count(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all parameters, those in Linear/Conv weights, those in Linear weights)."""
    total = sum(p.numel() for p in model.parameters())
    lin = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    channels = sum(
        m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    )
    return total, lin + conv, lin, channels


def weight_bytes(counts: tuple[int, int, int, int], precision: str) -> float:
    total, lin_conv, lin, channels = counts
    if precision == "fp32":
        return 4.0 * total
    if precision == "bf16":
        return 2.0 * total
    if precision == "int8":
        return 1.0 * lin_conv + 4.0 * channels + 2.0 * (total - lin_conv)
    return 0.516 * lin + 2.0 * (total - lin)  # nf4: Linear layers only


# ------------------------------------------------------------------------------------------------ models
def _family(name: str):  # noqa: ANN202
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    clip_l = _meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)))
    if name == "SD 1.5":
        return _meta(lambda: UNet2DConditionModel(**SD15_UNET)), [clip_l], _meta(lambda: AutoencoderKL(**VAE))
    if name == "SDXL":
        big_g = _meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)))
        return (
            _meta(lambda: UNet2DConditionModel(**SDXL_UNET)),
            [clip_l, big_g],
            _meta(lambda: AutoencoderKL(**VAE)),
        )
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from b4m.diffusion.flux import FLUX_DEV_TRANSFORMER_CONFIG

    t5 = _meta(lambda: T5EncoderModel(T5Config(**T5_XXL)))
    flux = _meta(lambda: FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER_CONFIG))
    return flux, [clip_l, t5], _meta(lambda: AutoencoderKL(**FLUX_VAE))


def _inputs(name: str, model: torch.nn.Module, resolution: int, batch: int, dtype: torch.dtype) -> dict:
    latent = resolution // 8
    meta = {"device": "meta", "dtype": dtype}
    if name == "FLUX.1-dev":
        tokens = (latent // 2) ** 2
        return {
            "hidden_states": torch.empty(batch, tokens, 64, **meta),
            "encoder_hidden_states": torch.empty(batch, 512, 4096, **meta),
            "pooled_projections": torch.empty(batch, 768, **meta),
            "timestep": torch.empty(batch, **meta),
            "guidance": torch.empty(batch, **meta),
            "img_ids": torch.empty(tokens, 3, **meta),
            "txt_ids": torch.empty(512, 3, **meta),
            "return_dict": False,
        }
    text = 2048 if name == "SDXL" else 768
    kw = {
        "sample": torch.empty(batch, 4, latent, latent, **meta),
        "timestep": torch.empty(batch, device="meta", dtype=torch.long),
        "encoder_hidden_states": torch.empty(batch, 77, text, **meta),
        "return_dict": False,
    }
    if name == "SDXL":
        kw["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, 1280, **meta),
                                   "time_ids": torch.empty(batch, 6, **meta)}  # fmt: skip
    return kw


def training_activations(
    name: str, resolution: int, checkpointing: bool, dtype: torch.dtype
) -> tuple[float, int]:
    """(peak bytes of one training step's activations and gradients, LoRA parameter count)."""
    from peft import LoraConfig, inject_adapter_in_model

    model, _, _ = _family(name)
    model = model.to(dtype)
    model.requires_grad_(False)
    targets = list(FLUX_TARGETS if name == "FLUX.1-dev" else TARGETS)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets), model)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in lora:
        p.data = p.data.float()  # b4m's adapters stay fp32 on a bf16 base
        p.requires_grad_(True)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    inputs = _inputs(name, model, resolution, SAMPLES, dtype)
    tracker = _Peak()
    with _fused_attention(), tracker:
        out = model(**inputs)[0]
        out.float().pow(2).mean().backward()
    return tracker.peak, sum(p.numel() for p in lora)


def vae_encode_activations(name: str, resolution: int, dtype: torch.dtype) -> float:
    _, _, vae = _family(name)
    vae = vae.to(dtype).requires_grad_(False)
    tracker = _Peak()
    with _fused_attention(), torch.no_grad(), tracker:
        vae.encode(torch.empty(1, 3, resolution, resolution, device="meta", dtype=dtype))
    return tracker.peak


# ------------------------------------------------------------------------------------------------ the table
def estimate(names: list[str], resolutions: list[int]) -> list[dict]:
    rows = []
    for name in names:
        denoiser, encoders, vae = _family(name)
        counts = _count(denoiser)
        enc_params = sum(sum(p.numel() for p in e.parameters()) for e in encoders)
        vae_params = sum(p.numel() for p in vae.parameters())
        for resolution in resolutions:
            cache_act = vae_encode_activations(name, resolution, torch.bfloat16)
            for checkpointing in (False, True):
                act = {}
                for dtype in (torch.float32, torch.bfloat16):
                    act[dtype], lora = training_activations(name, resolution, checkpointing, dtype)
                state = 4 * 4 * lora  # factors, gradients, two AdamW moments (fp32)
                row = {"model": name, "resolution": resolution, "checkpointing": checkpointing,
                       "params": counts[0], "encoders": enc_params, "vae": vae_params, "lora": lora}  # fmt: skip
                for precision in PRECISIONS:
                    base_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
                    weights = weight_bytes(counts, precision)
                    enc_bytes = (4 if precision == "fp32" else 2) * (enc_params + vae_params)
                    caching = weights + enc_bytes + cache_act
                    training = weights + state + act[base_dtype]
                    row[precision] = (max(caching, training) / GB + OVERHEAD_GB, training / GB + OVERHEAD_GB,
                                      caching / GB + OVERHEAD_GB)  # fmt: skip
                rows.append(row)
                print(
                    name, resolution, checkpointing, {p: f"{row[p][0]:.1f}" for p in PRECISIONS}, flush=True
                )
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "# Estimated GPU memory of LoRA training (computed, not measured)",
        "",
        "Written by `benchmarks/memory_estimate.py`; how each figure is computed is in its docstring. **These are "
        "estimates**, to be replaced by measurements (`benchmarks/gpu_sdxl.py --quantize-base ... "
        "--gradient-checkpointing`) when a GPU is lent. One step of B4M's stage 1 (1 target + 3 auxiliary samples "
        f"in one forward, rank-{RANK} fp32 adapters on the attention projections, AdamW); stage 2 (2 samples) and "
        "the plain LoRA baseline (1 sample) need less activation memory. Each cell: the peak in GiB = max(caching, "
        "training) + 1 GiB CUDA overhead; `fp32` is `--mixed-precision no`, the others `bf16` with the base "
        "quantized as named (`--quantize-base int8` / `fp8` take the same memory).",
        "",
        "| model | px | grad. ckpt | fp32 | bf16 | int8 / fp8 | nf4 | peak while caching (bf16 / nf4) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[p][0]:.1f}" for p in PRECISIONS)
        lines.append(
            f"| {r['model']} | {r['resolution']} | {'yes' if r['checkpointing'] else 'no'} | {cells} | "
            f"{r['bf16'][2]:.1f} / {r['nf4'][2]:.1f} |"
        )
    lines += ["", "Parameter counts (meta-device instantiation of the published configs):", ""]
    seen = set()
    for r in rows:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        lines.append(
            f"- {r['model']}: denoiser {r['params']:,}; text encoders {r['encoders']:,}; VAE {r['vae']:,}; "
            f"rank-{RANK} LoRA {r['lora']:,}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["SD 1.5", "SDXL", "FLUX.1-dev"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("memory.md"))
    args = parser.parse_args()
    rows = estimate(args.models, args.resolutions)
    args.out.write_text(to_markdown(rows), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
