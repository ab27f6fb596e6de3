"""``b4m bench --dry-run``: the plan's size (runs, fits after per-concept reuse, images) and an estimate of its GPU
hours, before anything runs.

**The estimate is arithmetic on stated constants, not a measurement.** Work is counted in TFLOP per image pass and
divided by an assumed sustained throughput (``peak_tflops x mfu``):

- per-image TFLOP at 512 px (:data:`FAMILY_TFLOP`), scaled by ``(resolution / 512) ** 2``: SDXL's are counted
  with ``torch.utils.flop_counter`` on the meta device (docs: ecosystem notes, Sec. 4: UNet forward 1.59 TFLOP,
  LoRA training step 3.26 TFLOP at 512 px; 6.76 / 14.56 at 1024 px, i.e. 4.3x / 4.5x for 4x the pixels). SD 1.x is
  estimated as a quarter of SDXL (860 M vs 2.6 B UNet parameters, fewer tokens); FLUX.1-dev as ``2 x 11.9 G
  parameters x 1536 tokens`` (1024 image + 512 text tokens at 512 px) per forward and twice that per training
  step. Sampling runs the denoiser twice per step with classifier-free guidance (SD, SDXL) and once on FLUX
  (guidance-distilled);
- :data:`GPU_COSTS`: peak dense bf16 TFLOPS of the GPU (A100: 312; H100 SXM: 989), the fraction of it a batch-1
  step sustains (``train_mfu``, ``sample_mfu``: assumed; SDXL sampling at 1024 px on an A100 at ~6 steps/s is
  13.5 TFLOP x 6 = 81 TFLOPS, 26 % of peak), and fixed overheads per fit (pipeline copy, latent caching,
  saving) and per image (VAE decode, the encoders);
- samples per training step per method (:data:`SAMPLES_PER_STEP`): B4M's stage 1 takes the target plus three
  auxiliary samples per step (the official code's batch; the target alone without MCP), its stage 2 and the
  two-concept methods two. :func:`training_fits` lists the trainings one run is built on; the plan counts each
  cached fit once, the bench's budget table (:mod:`b4m.bench.budgets`) every one a run needs.

Every constant is visible here and overridable with ``--gpu-costs key=value`` (keys of :data:`GPU_COSTS`, or
``<family>.forward`` / ``<family>.train`` for :data:`FAMILY_TFLOP`, or ``samples.<method>``). Benchmarks on a
real GPU (benchmarks/gpu_sdxl.py) give measured values to put in.
"""

from __future__ import annotations

from typing import Any

from b4m.errors import B4MError

__all__ = [
    "FAMILY_TFLOP",
    "GPU_COSTS",
    "SAMPLES_PER_STEP",
    "describe",
    "estimate",
    "parse_costs",
    "training_fits",
]

GPU_COSTS: dict[str, float] = {
    "peak_tflops": 312.0,  # A100 SXM, dense bf16
    "train_mfu": 0.20,  # batch-1 LoRA step: small matmuls, optimizer and Python overhead
    "sample_mfu": 0.25,  # batch-1 sampling step (SDXL 1024 px at ~6 steps/s on an A100 is ~26 %)
    "fit_overhead_s": 30.0,  # per trained fit: copy the pipeline, encode and cache latents, save
    "image_overhead_s": 0.5,  # per generated image: VAE decode, three encoders
}
"""Throughput and overheads (see the module docstring); ``--gpu-costs key=value`` overrides any."""

FAMILY_TFLOP: dict[str, dict[str, float]] = {
    "sdxl": {"forward": 1.59, "train": 3.26, "passes": 2},  # counted (ecosystem notes Sec. 4)
    "sd": {"forward": 0.40, "train": 0.82, "passes": 2},  # ~1/4 of SDXL (estimate)
    "flux": {"forward": 36.6, "train": 73.1, "passes": 1},  # 2 x 11.9e9 x 1536 tokens (estimate)
}
"""TFLOP per image at 512 px: one denoiser ``forward``, one LoRA ``train`` step (forward + backward), denoiser
``passes`` per sampling step."""

SAMPLES_PER_STEP: dict[str, int] = {
    "lora": 1,
    "joint": 2,
    "qrlora": 2,  # one dR per concept: two trainings of one sample per step
    "ziplora": 2,
    "duolora": 2,
    "b4m-stage1": 4,  # target + 3 auxiliary samples (MCP)
    "b4m-stage2": 2,
}
"""Images per training step of each method (``b4m-stage1``/``-stage2``: B4M's stages, both B4M variants)."""

_DEFAULT_SAMPLING = {"sdxl": (25, 1024), "sd": (25, 512), "flux": (28, 1024)}
"""Sampling steps and resolution when not given (b4m.diffusion.sampling.generation_defaults)."""


def parse_costs(items: list[str], problems: list[str] | None = None) -> dict[str, Any]:
    """``--gpu-costs key=value`` items -> the constants with those overrides (:data:`GPU_COSTS` plus
    ``family.forward``/``family.train``/``family.passes`` and ``samples.<method>``)."""
    gpu = dict(GPU_COSTS)
    family = {k: dict(v) for k, v in FAMILY_TFLOP.items()}
    samples = dict(SAMPLES_PER_STEP)
    own: list[str] = []
    for item in items:
        for part in str(item).split(","):
            key, eq, value = part.strip().partition("=")
            try:
                number = float(value)
                if not eq or number < 0:
                    raise ValueError
            except ValueError:
                own.append(f"--gpu-costs {part.strip()}: write key=number, e.g. peak_tflops=989")
                continue
            head, _, tail = key.partition(".")
            if key in gpu:
                gpu[key] = number
            elif head in family and tail in family[head]:
                family[head][tail] = number
            elif head == "samples" and tail:
                samples[tail] = int(number)
            else:
                own.append(
                    f"--gpu-costs {key}: unknown; known: {', '.join(gpu)}, <{'|'.join(family)}>.forward/.train/"
                    ".passes, samples.<method>"
                )
    if problems is None and own:
        raise B4MError("; ".join(own))
    if problems is not None:
        problems.extend(own)
    return {"gpu": gpu, "family": family, "samples": samples}


def _preset(method: str, key: str, base: str, fallback: int) -> int:
    from b4m.methods.catalogue import CATALOGUE
    from b4m.options import PRESETS, preset_key

    presets = getattr(CATALOGUE[method].config, "PRESETS", {}) or PRESETS
    return int(presets.get(preset_key(base), {}).get(key) or PRESETS[preset_key(base)].get(key) or fallback)


def training_fits(
    method: str, train: dict[str, Any], base: str, samples: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Every training a bench run of ``method`` is built on, from its spec's ``train`` settings
    (:func:`b4m.bench.runs._train_spec`; ``None`` steps read from the method's preset on ``base``): its sources,
    B4M's two stage-1 runs, its own fit and ``rp-sgd``'s tuning candidates. Each is ``{"fit": display name,
    "kind": "sources" | "stage1" | "trained" | "tuning" | "training-free", "concept": "content" | "style" (a
    per-concept sub-fit, shared by every pair with that concept) or None (the pair's own), "steps",
    "per_step": images per step (:data:`SAMPLES_PER_STEP`, or ``samples``; B4M's stage 1 without MCP: the
    target alone), "image_steps", "key"}``; two runs' entries with the same ``key`` (and concept, or pair) are one
    cached fit. An arm that samples a part of B4M's fit (``part``) has the fit it samples from; another method's
    option arm (``lora:lr=1e-3``) is its own fit, its options in the key (its sources stay the shared ones)."""
    from b4m.bench.catalogue import PART, PART_STYLE_SCALE, STAGE2_KNOBS, TUNED
    from b4m.methods.catalogue import CATALOGUE

    per = SAMPLES_PER_STEP if samples is None else samples
    info = CATALOGUE[method]
    out: list[dict[str, Any]] = []

    def add(
        fit: str, kind: str, concept: str | None, steps: int, per_step: int, key: tuple, fits: int = 1
    ) -> None:
        out.append({"fit": fit, "kind": kind, "concept": concept, "steps": steps, "per_step": per_step,
                    "image_steps": steps * per_step, "fits": fits, "key": key})  # fmt: skip

    for src in info.sources:
        n = train.get("sources_steps") or _preset(src.method, "steps", base, 1000)
        add(f"source {src.method} ({src.concept})", "sources", src.concept, n, per.get(src.method, 1),
            (src.method, src.concept, n))  # fmt: skip
    own = {k: v for k, v in train.items() if k not in ("steps", "sources_steps", PART, PART_STYLE_SCALE)}
    steps = train.get("steps") or _preset(method, "steps", base, 1000 if info.budget == "train" else 100)
    arm = tuple(sorted((k, str(v)) for k, v in own.items()))  # a method's option arm: its own fit
    if info.concept_option is not None:  # one concept (lora on the content): a source's twin, unless an arm
        add(f"{method} (content)", "trained" if arm else "sources", "content", steps, per.get(method, 1),
            (method, "content", steps, *arm))  # fmt: skip
    elif info.parts:  # B4M: per-concept stage 1, then its stage 2 per run
        s1 = tuple(
            sorted((k, str(v)) for k, v in own.items() if k not in STAGE2_KNOBS and k != "sgd_lr_grid")
        )
        s1_per = per["b4m-stage1"] if own.get("mcp", True) else 1  # without MCP: the target image alone
        for part in ("content", "style"):
            add(f"stage 1 ({part})", "stage1", part, steps, s1_per, (method, "stage1", part, s1, steps))
        s2 = train.get("stage2_steps")
        s2 = _preset(method, "stage2_steps", base, 100) if s2 is None else int(s2)
        whole = (method, steps, tuple(sorted((k, str(v)) for k, v in own.items())))
        add("stage 2", "trained", None, s2, per["b4m-stage2"], ("stage2", *whole))
        grid = len(own.get("sgd_lr_grid", [])) if own.get("stage2_lr") == TUNED else 0
        if grid:
            add(f"stage-2 rate tuning ({grid} rates)", "tuning", None, grid * s2, per["b4m-stage2"],
                ("tuning", *whole), grid)  # fmt: skip
    elif info.budget is None:
        add(f"{method} (training-free)", "training-free", None, 0, 0, (method, *arm))
    else:
        name = method if info.budget == "train" else f"{method} merger"
        add(name, "trained", None, steps, per.get(method, 1), (method, steps, *arm))
    return out


def estimate(p: Any) -> dict[str, Any]:
    """The plan's counts and cost (see the module docstring): runs, fits after reuse, images, TFLOP, hours."""
    from b4m.bench.runs import BASE, _items, _train_spec
    from b4m.diffusion.pipeline import family_of_base
    from b4m.options import preset_key

    costs = parse_costs(list(p.cfg.gpu_costs))
    family = family_of_base(p.base) or "sdxl"
    s, cfg = p.sizes, p.cfg
    sample_steps, sample_res = _DEFAULT_SAMPLING.get(family, (25, 512))
    sample_steps = s["sample_steps"] or sample_steps
    sample_res = cfg.resolution or sample_res
    n_prompts = len(p.source.prompts) if p.source is not None else 5
    seen: set[tuple] = set()
    fits: dict[str, int] = {"sources": 0, "stage1": 0, "trained": 0, "training-free": 0, "tuning": 0}
    samples_train = 0.0
    runs = images = 0
    train_res = cfg.resolution or _preset("lora", "resolution", p.base, 512)
    rep = p.replicates  # training-seed replicates: the replicated rows of the first pairs again, per seed
    jobs = [(c, st, None) for c, st in p.pairs]
    jobs += [] if rep is None else [(c, st, seed) for seed in rep.seeds for c, st in p.pairs[: rep.pairs]]
    for content, style, seed in jobs:
        for method, arm in _items(p):
            if seed is not None and method not in rep.methods:
                continue
            runs += 1
            images += n_prompts * s["seeds"]
            if method == BASE:
                continue
            for fit in training_fits(method, _train_spec(method, arm, p), p.base, costs["samples"]):
                where = {"content": content, "style": style}.get(fit["concept"], f"{content}:{style}")
                if (fit["key"], where, seed) in seen:  # a cached sub-fit (or fit) another run trains
                    continue
                seen.add((fit["key"], where, seed))
                fits[fit["kind"]] += fit["fits"]
                samples_train += fit["image_steps"]
    gpu, tf = costs["gpu"], costs["family"].get(family, costs["family"]["sdxl"])
    train_tflop = samples_train * tf["train"] * (train_res / 512) ** 2
    sample_tflop = images * sample_steps * tf["passes"] * tf["forward"] * (sample_res / 512) ** 2
    trained_fits = fits["sources"] + fits["stage1"] + fits["trained"] + fits["tuning"]
    hours = {
        "training": train_tflop / (gpu["peak_tflops"] * gpu["train_mfu"]) / 3600,
        "sampling": sample_tflop / (gpu["peak_tflops"] * gpu["sample_mfu"]) / 3600,
        "overhead": (trained_fits * gpu["fit_overhead_s"] + images * gpu["image_overhead_s"]) / 3600,
    }
    hours["total"] = sum(hours.values())
    return {
        "family": family,
        "builtin": preset_key(p.base) == "builtin",
        "pairs": len(p.pairs),
        "rows_per_pair": len(_items(p)),
        "runs": runs,
        "fits": fits,
        "trained_fits": trained_fits,
        "train_samples": samples_train,
        "train_resolution": train_res,
        "images": images,
        "sample_steps": sample_steps,
        "sample_resolution": sample_res,
        "hours": hours,
        "costs": costs,
    }


def describe(p: Any) -> str:
    """The ``--dry-run`` text."""
    e = estimate(p)
    f, h, gpu = e["fits"], e["hours"], e["costs"]["gpu"]
    src = p.source
    where = f"--pairs-file {p.cfg.pairs_file}" if src is not None else "the built-in world"
    lines = [
        f"b4m bench plan ({where}; nothing has run):",
        f"  base: {p.base} ({e['family']})",
        f"  pairs: {e['pairs']}"
        + (f" ({len(src.contents)} contents x {len(src.styles)} styles)" if src is not None else ""),
        f"  rows per pair: {e['rows_per_pair']} (base model, {', '.join(p.methods)}"
        + (f"; arms {', '.join(a for a in p.arms if a != 'full')}" if len(p.arms) > 1 else "")
        + ")",
        f"  runs: {e['runs']}",
        f"  fits after per-concept reuse: {e['trained_fits'] + f['training-free']} = {f['sources']} source LoRAs + "
        f"{f['stage1']} B4M stage-1 adapters + {f['trained']} trained method fits + {f['training-free']} "
        f"training-free merges" + (f" + {f['tuning']} rp-sgd tuning fits" if f["tuning"] else ""),
        f"  training: {e['train_samples']:,.0f} image-steps at {e['train_resolution']} px",
        f"  images: {e['images']:,} ({e['sample_steps']} sampling steps at {e['sample_resolution']} px)",
    ]
    if e["builtin"]:
        lines.append("  cost: the built-in model runs on CPU (see 'b4m bench --help' for its size note)")
        return "\n".join(lines)
    lines += [
        f"  estimated GPU hours: {h['total']:.1f} = training {h['training']:.1f} + sampling {h['sampling']:.1f} + "
        f"overheads {h['overhead']:.1f}, on one GPU of {gpu['peak_tflops']:g} peak TFLOPS (N GPUs: about 1/N "
        "of it with --shard or accelerate launch)",
        "  assumed (b4m.bench.costs; override with --gpu-costs key=value): "
        + ", ".join(f"{k}={v:g}" for k, v in gpu.items())
        + f"; {e['family']} TFLOP per image at 512 px: forward {e['costs']['family'][e['family']]['forward']:g}, "
        f"train step {e['costs']['family'][e['family']]['train']:g}",
    ]
    return "\n".join(lines)
