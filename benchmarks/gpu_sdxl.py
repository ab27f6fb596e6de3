"""Speed and memory of B4M training at real size: the SDXL UNet or FLUX.1-dev's transformer (public configs,
random weights).

Measures, in one run and side by side, for each resolution:

(a) the reference loop users run today (diffusers/peft DreamBooth-LoRA style): a standard peft LoRA on the same
    560 attention projections, one sample per forward/backward, doing the same 1 target + 3 auxiliary samples
    per step (four forward/backward passes, then one optimizer step);
(b) b4m's stage-1 step: PLP adapters, the four samples in ONE batched forward with strict per-sample gradient
    routing (``mcp_routing``), one backward;
(c) b4m's stage-2 step: content + style sample batched, Riemannian-preconditioned AdamW.

Both arms use the same precision (``--precision``: bf16 autocast over bf16 base weights, fp32 adapter weights,
by default; ``--reference-precision fp32`` runs the reference in fp32 instead), SDPA attention (diffusers'
default processor), and cached latents/text embeddings (the encoders are frozen; both arms skip them alike).
Reported: seconds per step, samples/s, peak memory, model FLOPs per step (``torch.utils.flop_counter``, ~1-4 %
low since it skips elementwise ops) and MFU against the GPU's dense bf16 peak.

``--model flux``: FLUX.1-dev's transformer (19 double + 38 single blocks, 11.9 B parameters), flow-matching
inputs (packed latents, 512 T5 tokens, pooled CLIP, guidance 3.5), b4m's eight FLUX attention targets (266
layers) in every arm; at bf16 it needs ``--gradient-checkpointing`` to fit 4 samples at 1024 px.

GPU:  python benchmarks/gpu_sdxl.py --device cuda --resolutions 512 1024 --out benchmarks/gpu_sdxl.md
FLUX: python benchmarks/gpu_sdxl.py --model flux --device cuda --gradient-checkpointing --resolutions 512 1024 \
          --out benchmarks/gpu_flux.md
CPU:  python benchmarks/gpu_sdxl.py --device cpu --tiny --resolutions 32 --iters 2 --out /tmp/gpu_sdxl_cpu.md
      python benchmarks/gpu_sdxl.py --model flux --device cpu --tiny --resolutions 32 --iters 2 --out /tmp/f.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils import logging as diffusers_logging

from b4m.adapters.inject import DEFAULT_TARGETS, inject_plp, lora_config
from b4m.adapters.plp import PLPSpec, mcp_routing
from b4m.train.riemannian import make_stage2_optimizer

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s (ecosystem notes Sec. 4; H200 = H100 compute).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}
N_SAMPLES = 4  # 1 target + 3 auxiliary samples per stage-1 step (official B4M scripts)


@dataclass
class Result:
    name: str
    resolution: int
    seconds: float
    samples: int
    peak_gib: float
    tflop: float

    def row(self, peak_tflops: float | None) -> str:
        mfu = f"{100 * self.tflop / self.seconds / peak_tflops:.1f} %" if peak_tflops else "n/a"
        peak_mem = "n/a" if self.peak_gib != self.peak_gib else f"{self.peak_gib:.2f}"  # NaN off the GPU
        return (
            f"| {self.name} | {self.resolution} | {self.seconds * 1000:.1f} | {self.samples / self.seconds:.2f} | "
            f"{peak_mem} | {self.tflop * 1000:.1f} | {mfu} |"
        )


def targets(model: torch.nn.Module) -> list[str]:
    """The adapted layer kinds: SDXL's four attention projections, FLUX's eight."""
    from b4m.diffusion.flux import FLUX_TARGETS

    return list(FLUX_TARGETS if hasattr(model, "single_transformer_blocks") else DEFAULT_TARGETS)


def rank_for(model: torch.nn.Module) -> int:
    """64 (every real-size arm), or the narrowest targeted layer's width where smaller (the tiny FLUX)."""
    names = targets(model)
    widths = [
        min(m.in_features, m.out_features)
        for k, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and any(k == t or k.endswith("." + t) for t in names)
    ]
    return min([64, *widths])


def build_flux(tiny: bool, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from b4m.diffusion.flux import flux_transformer
    from b4m.diffusion.tiny import TINY_FLUX_TRANSFORMER_CONFIG

    model = flux_transformer(device, dtype, TINY_FLUX_TRANSFORMER_CONFIG if tiny else None)
    model.requires_grad_(False)
    return model.to(device, dtype)


def flux_inputs(model: torch.nn.Module, batch: int, resolution: int, device: str, dtype: torch.dtype) -> dict:
    """Packed latents ((res / 16)^2 tokens of 64 channels at real size), 512 T5 tokens, pooled CLIP, guidance."""
    from diffusers import FluxPipeline

    cfg = model.config
    side = resolution // 16 if resolution >= 256 else resolution // 4  # latent side / 2 (2x2 packing)
    tokens = 512 if resolution >= 256 else 16
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, side * side, cfg.in_channels, generator=g).to(device, dtype),
        "encoder_hidden_states": torch.randn(batch, tokens, cfg.joint_attention_dim, generator=g).to(
            device, dtype
        ),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g).to(device, dtype),
        "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
        "guidance": torch.full((batch,), 3.5, device=device, dtype=dtype),
        "target": torch.randn(batch, side * side, cfg.in_channels, generator=g).to(device, dtype),
        "shared": {
            "img_ids": FluxPipeline._prepare_latent_image_ids(batch, side, side, device, dtype),
            "txt_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
        },
    }


def build_unet(tiny: bool, device: str, dtype: torch.dtype) -> torch.nn.Module:
    if tiny:
        from b4m.diffusion.tiny import tiny_sdxl_unet

        unet = tiny_sdxl_unet()
    else:
        from b4m.diffusion.sdxl import sdxl_unet

        unet = sdxl_unet(device, dtype)
    unet.requires_grad_(False)
    return unet.to(device, dtype)


def inputs(unet: torch.nn.Module, batch: int, resolution: int, device: str, dtype: torch.dtype) -> dict:
    cfg = unet.config
    latent = resolution // 8 if resolution >= 256 else resolution // 2
    text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=dtype).repeat(batch, 1)
    return {
        "sample": torch.randn(batch, cfg.in_channels, latent, latent, generator=g).to(device, dtype),
        "timestep": torch.full((batch,), 500, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=g).to(
            device, dtype
        ),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, text_dim, generator=g).to(device, dtype),
            "time_ids": ids.to(device),
        },
        "target": torch.randn(batch, cfg.out_channels, latent, latent, generator=g).to(device, dtype),
    }


def _slice(batch: dict, i: int, j: int) -> dict:
    return {
        k: v if k == "shared" else ({kk: vv[i:j] for kk, vv in v.items()} if isinstance(v, dict) else v[i:j])
        for k, v in batch.items()
    }


def _loss(unet: torch.nn.Module, b: dict) -> torch.Tensor:
    if "hidden_states" in b:  # FLUX: velocity of the packed latents
        inputs = {k: v for k, v in b.items() if k not in ("target", "shared")} | b["shared"]
        pred = unet(**inputs, return_dict=False)[0]
        return F.mse_loss(pred.float(), b["target"].float(), reduction="none").mean(dim=(1, 2))
    pred = unet(
        b["sample"],
        b["timestep"],
        encoder_hidden_states=b["encoder_hidden_states"],
        added_cond_kwargs=b["added_cond_kwargs"],
    ).sample
    return F.mse_loss(pred.float(), b["target"].float(), reduction="none").mean(dim=(1, 2, 3))


def reference_step_fn(unet, batch, autocast) -> Callable[[], None]:
    """peft LoRA, DreamBooth style: one sample per forward/backward, gradients accumulated, one step."""
    unet.add_adapter(lora_config(rank_for(unet), targets(unet)), adapter_name="ref")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        for i in range(N_SAMPLES):
            with autocast():
                loss = _loss(unet, _slice(batch, i, i + 1)).mean()
            (loss if i == 0 else loss / (N_SAMPLES - 1)).backward()  # L_target + (1/n) sum L_aux
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def b4m_stage1_step_fn(unet, batch, autocast) -> Callable[[], None]:
    adapter = inject_plp(unet, PLPSpec(rank=rank_for(unet)), targets(unet))
    params = adapter.parameters("BD")
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)

    def step() -> None:
        with autocast(), mcp_routing(1, "B"):
            losses = _loss(unet, batch)
        (losses[:1].mean() + losses[1:].mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def b4m_stage2_step_fn(unet, batch, autocast) -> Callable[[], None]:
    adapter = inject_plp(unet, PLPSpec(rank=rank_for(unet)), targets(unet))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=1e-3)  # a fused adapter has non-zero B and D
    pairs = [
        (adapter.up(m).learnable, adapter.down(m).learnable, adapter.up(m).frozen, adapter.down(m).frozen)
        for m in adapter.module_names
    ]
    opt = make_stage2_optimizer(pairs, "riemannian-adamw", lr=1e-4)
    two = _slice(batch, 0, 2)  # one content and one style sample

    def step() -> None:
        with autocast():
            loss = _loss(unet, two).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(name, make_step, args, resolution, samples, precision) -> Result:
    device = args.device
    dtype = torch.bfloat16 if precision == "bf16" and device == "cuda" else torch.float32
    flux = args.model == "flux"
    unet = (build_flux if flux else build_unet)(args.tiny, device, dtype)
    if args.quantize_base != "none":  # b4m's own quantization of the frozen base (b4m.diffusion.memory)
        from b4m.diffusion.memory import quantize_denoiser

        quantize_denoiser(unet, args.quantize_base, device)
        unet.to(device)
    if args.gradient_checkpointing and (name.startswith("b4m") or flux):  # FLUX needs it in every arm
        from b4m.diffusion.memory import enable_checkpointing

        enable_checkpointing(unet)  # keeps stage 1's MCP routing in the recomputation
    batch = (flux_inputs if flux else inputs)(unet, N_SAMPLES, resolution, device, dtype)

    def autocast():
        if precision == "bf16" and device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    step = make_step(unet, batch, autocast)
    if args.compile and name.startswith("b4m"):
        unet.forward = torch.compile(unet.forward)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / args.iters
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    result = Result(name, resolution, seconds, samples, peak, counter.get_total_flops() / 1e12)
    del unet, batch, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--model", choices=["sdxl", "flux"], default="sdxl", help="SDXL's UNet or FLUX.1-dev's transformer"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny SDXL-layout UNet / FLUX transformer (CPU test of this script)",
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--reference-precision", choices=["same", "fp32"], default="same")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--quantize-base",
        choices=["none", "int8", "fp8", "nf4"],
        default="none",
        help="quantize the frozen base as b4m's --quantize-base does (measures benchmarks/memory.md's estimates)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet forward (b4m arms)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--stage1-steps", type=int, default=1000, help="default stage-1 steps (for the time ratio)"
    )
    parser.add_argument("--stage2-steps", type=int, default=100, help="default stage-2 steps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu_sdxl.md"))
    args = parser.parse_args(argv)
    diffusers_logging.set_verbosity_error()  # the "keep in float32" note on .to(bf16) repeats per arm

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None) if args.device == "cuda" else None
    if args.device != "cuda":
        args.precision = "fp32"  # no bf16 autocast off the GPU: both arms run fp32
    ref_precision = args.precision if args.reference_precision == "same" else "fp32"
    results: list[Result] = []
    for res in args.resolutions:
        results.append(
            measure(
                "reference (peft LoRA, 4 x fwd/bwd)", reference_step_fn, args, res, N_SAMPLES, ref_precision
            )
        )
        results.append(
            measure(
                "b4m stage 1 (PLP, 1 batched fwd/bwd)",
                b4m_stage1_step_fn,
                args,
                res,
                N_SAMPLES,
                args.precision,
            )
        )
        results.append(
            measure("b4m stage 2 (batch 2, RP-AdamW)", b4m_stage2_step_fn, args, res, 2, args.precision)
        )
        print("\n".join(r.row(peak) for r in results[-3:]), flush=True)

    import diffusers
    import peft

    flux = args.model == "flux"
    if flux:
        model_text = (
            "tiny FLUX transformer" if args.tiny else "FLUX.1-dev transformer (public config, random weights)"
        )
        kinds = 8
    else:
        model_text = "tiny SDXL-layout UNet" if args.tiny else "SDXL UNet (public config, random weights)"
        kinds = len(DEFAULT_TARGETS)
    lines = [
        f"# B4M training speed and memory: {'FLUX.1-dev transformer' if flux else 'SDXL UNet'}",
        "",
        f"Command: `python {' '.join(sys.argv if argv is None else ['benchmarks/gpu_sdxl.py', *argv])}`",
        "",
        f"Device: {gpu}; torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}; "
        f"precision: b4m {args.precision} (bf16 = autocast over bf16 base weights, fp32 adapter weights), "
        f"reference {ref_precision}; "
        f"gradient checkpointing: {args.gradient_checkpointing}; quantized base: {args.quantize_base}; "
        f"compile: {args.compile}; "
        f"{model_text}; "
        f"rank {'at most ' if args.tiny else ''}64 on all {kinds} attention projection kinds; warmup {args.warmup}, {args.iters} timed steps.",
        "",
        *(
            ["**CPU reduced-size run**: it checks the script; it is not the GPU measurement.", ""]
            if args.device != "cuda"
            else []
        ),
        "| arm | px | ms/step | samples/s | peak GiB | GFLOP/step | MFU |",
        "|---|---|---|---|---|---|---|",
        *[r.row(peak) for r in results],
        "",
    ]
    for res in args.resolutions:
        ref, s1, s2 = [r for r in results if r.resolution == res]
        ratio = (s2.seconds * args.stage2_steps) / (s1.seconds * args.stage1_steps)
        lines.append(
            f"- {res} px: b4m stage 1 is **{ref.seconds / s1.seconds:.2f}x** the reference loop; "
            f"stage 2 ({args.stage2_steps} steps) takes {ratio:.3f} of stage 1 ({args.stage1_steps} steps)."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
