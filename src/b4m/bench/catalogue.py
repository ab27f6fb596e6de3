"""What ``b4m bench`` can run, without torch: tracks and their default pairs, the config, the plan.

The arms are B4M's, and the other methods' option arms ``METHOD:key=value`` (:mod:`b4m.bench.arms`).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Any

from b4m.bench.arms import (
    ARMS,
    ARMS_OF,
    BASE_LABEL,
    DEFAULT_ARMS,
    PART,
    PART_STYLE_SCALE,
    ROWS,
    SGD_LR_GRID,
    STAGE2_KNOBS,
    TUNED,
    arm_options,
    option_arm,
    run_label,
    split_arm,
)
from b4m.config import opt
from b4m.errors import B4MError
from b4m.eval.stats import METRICS

__all__ = [
    "ARMS",
    "ARMS_OF",
    "PART",
    "PART_STYLE_SCALE",
    "ROWS",
    "BASE_LABEL",
    "DEFAULT_ARMS",
    "METRICS",
    "QUICK",
    "SIZE_HELP",
    "SGD_LR_GRID",
    "STAGE2_KNOBS",
    "TUNED",
    "TRACK_PAIRS",
    "BenchConfig",
    "Plan",
    "arm_options",
    "parse_shard",
    "plan",
    "run_label",
    "split_arm",
    "track_of",
]

#: Default content-style pairs per track: personal instances of classes the base model knows ("instance"),
#: and classes it never saw ("new-class").
TRACK_PAIRS: dict[str, tuple[str, ...]] = {
    "instance": ("teddy#3:papercut#5", "cat#2:knit#1"),
    "new-class": ("mushroom:glass",),
}

#: What ``--quick`` sets (options given explicitly keep their value, the sizes too).
QUICK: dict[str, Any] = {
    "methods": ["b4m", "lora", "direct-merge", "ziplora"],
    "arms": ["full", "fusion-only", "rp-sgd"],
    "seeds": 1,
    "steps": 10,
    "stage2_steps": 5,
    "merge_steps": 5,
    "sample_steps": 10,
    "n_content": 2,
    "n_style": 2,
    "bootstrap": 500,
}

DEFAULT_SIZES: dict[str, int | None] = {
    "seeds": 4,
    "steps": 400,
    "stage2_steps": None,  # B4M's preset
    "merge_steps": None,  # the mergers' presets
    "sample_steps": None,  # the base model's
    "n_content": 4,
    "n_style": 3,
    "bootstrap": 2000,
}
"""The bench's sizes when neither an option nor ``--quick`` sets them."""

SIZE_HELP = (
    "Default size: both tracks (3 pairs), all 10 methods + 9 B4M arms (3 of them only sample parts of B4M's "
    "fit) + the base model, 5 prompts x 4 seeds, 400 training steps for stage 1 and every trained baseline (B4M's built-in preset is 800), "
    "100 stage-2 / merger steps: about 45-60 min on 2 CPU cores (estimated from benchmarks/methods_cost.md). "
    "--rho adds one B4M run per value. --quick: one pair, 4 methods, arms full + fusion-only + rp-sgd, 1 seed, 10 "
    "training steps, 10 sampling steps: a few minutes (it checks the machinery, not the methods). "
    "Finished runs are cached under --out: rerun the same command to resume."
)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Settings of ``b4m bench`` (see :data:`SIZE_HELP` for the default size)."""

    out: Path = opt(Path("runs/bench"), "output folder: results.json, results.md, report.html, cached runs")
    track: str = opt(
        "both", "instance (personal instances), new-class (held-out classes) or both",
        choices=["instance", "new-class", "both"],
    )  # fmt: skip
    pairs: list[str] = opt(
        [],
        "content:style pairs, comma-separated, e.g. teddy#3:papercut#5,mushroom:glass (default: the track's: "
        "instance teddy#3:papercut#5, cat#2:knit#1; new-class mushroom:glass)",
    )
    suite: str = opt(
        "",
        "a pre-registered suite instead of --pairs (docs/suites.md): dev (tune here: 8 instance pairs + "
        "mushroom:glass) or test (report here, once: 16 instance pairs + 4 new-class pairs); 40 images per run",
        choices=["", "dev", "test"],
    )
    methods: list[str] = opt(
        [], "method ids, comma-separated, e.g. b4m,ziplora (default: all; 'b4m methods')"
    )
    arms: list[str] = opt(
        [],
        f"B4M ablation arms, comma-separated: {', '.join(ARMS)} (default: all; 'none': only full); or option "
        "arms: any B4M training option as key=value, several joined by '+' (aux_lr_scale=0.1, "
        "stage2_lr=1e-3+stage2_steps=50); another method's option arm as METHOD:key=value[+key=value], the "
        "method in --methods (lora:lr=1e-3)",
    )
    rho: list[str] = opt(
        [], "rho sweep values (paper Fig. 11), e.g. 1/8,3/8 or 'sweep' for 1/8..7/8 (default: none)"
    )
    seeds: int | None = opt(None, "sampling seeds per prompt (5 prompts per pair; default 4, --quick 1)")
    steps: int | None = opt(
        None,
        "training steps of B4M's stage 1 and of every trained baseline (lora, joint, qrlora; default 400, "
        "--quick 10)",
    )
    stage2_steps: int | None = opt(None, "B4M stage-2 steps (default: B4M's preset, 100)")
    merge_steps: int | None = opt(None, "ziplora / duolora merger steps (default: their preset, 100)")
    sample_steps: int | None = opt(None, "sampling steps (default: the base model's, 25)")
    sgd_lr: float | None = opt(
        None,
        "stage-2 learning rate of the rp-sgd arm (default: tuned per pair, the value of "
        f"{', '.join(f'{x:g}' for x in SGD_LR_GRID)} with the lowest stage-2 training loss)",
    )
    n_content: int | None = opt(None, "content reference images per pair (default 4, --quick 2)")
    n_style: int | None = opt(None, "style reference images per pair (default 3, --quick 2)")
    seed: int = opt(0, "seed of the reference export and of training (sampling uses seeds 0..N-1)")
    train_seeds: list[str] = opt(
        [],
        "training-seed replicates: extra training seeds, comma-separated, for the first --replicate-pairs pairs "
        "(references, prompts and sampling noise unchanged; b4m and lora rows); the report gives the seed "
        "variance beside the between-pair variance (default: none; --suite test: 1,2)",
    )
    replicate_pairs: int | None = opt(None, "how many of the first pairs get --train-seeds (default 4)")
    aux_data: str = opt(
        "plain",
        "MCP's auxiliary folders: plain (one drawn content under every auxiliary style, captions without "
        "identifiers) or official (distinct contents, captions reusing the identifiers, as the official scripts)",
        choices=["plain", "official"],
    )
    bootstrap: int | None = opt(
        None, "bootstrap resamples of the 95 %% intervals (default 2000, --quick 500)"
    )
    quick: bool = opt(False, "a few-minute smoke run (see the size note below)")
    shard: str = opt(
        "",
        "K/N: this process runs pairs K, K+N, ... of the plan (0-based) and shard 0 writes the results once all "
        "are done; under 'accelerate launch --num_processes N' (or torchrun) it is set from the process rank",
    )
    pairs_file: Path | None = opt(
        None,
        "YAML/TOML file of your content and style folders, their pairs and the evaluation prompts (README: "
        "'Reproduce Table 1 on your GPU', examples/pairs.yaml); scored by --dino, --clip and --csd",
    )
    base: str | None = opt(
        None,
        "base model of --pairs-file: a diffusers SD/SDXL/FLUX folder or hub id (default: the file's base:)",
    )
    dino: str | None = opt(
        None, "--pairs-file content encoder: DINOv2 folder or hub id, e.g. facebook/dinov2-base (CLS token)"
    )
    clip: str | None = opt(
        None,
        "--pairs-file style and prompt encoder: CLIP folder or hub id, e.g. openai/clip-vit-large-patch14",
    )
    csd: str | None = opt(
        None, "--pairs-file CSD style encoder: a .safetensors file or a folder holding one (never a pickle)"
    )
    resolution: int | None = opt(
        None,
        "--pairs-file training and sampling resolution in px (default: the methods' preset for training, 512 on "
        "SD/SDXL; the base's for sampling, 1024 on SDXL and FLUX)",
    )
    rank: int | None = opt(
        None,
        "--pairs-file LoRA rank of every method (default: their preset, 64 on SD/SDXL/FLUX as in the paper)",
    )
    dry_run: bool = opt(
        False, "print the plan (fits after per-concept reuse, images, estimated GPU hours) and stop"
    )
    gpu_costs: list[str] = opt(
        [],
        "key=value overrides of the --dry-run cost constants (b4m.bench.costs.GPU_COSTS), e.g. peak_tflops=989",
    )


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; ``None`` when ``text`` is not of that form."""
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and int(k) < int(n)):
        return None
    return int(k), int(n)


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def track_of(pair: str) -> str:
    """``"instance"`` when both sides name personal instances (``#``), else ``"new-class"``."""
    content, _, style = pair.partition(":")
    return "instance" if "#" in content and "#" in style else "new-class"


def _rho_values(values: list[str], problems: list[str]) -> list[Fraction]:
    out: list[Fraction] = []
    for v in _split(values):
        if v in ("sweep", "all"):
            out += [Fraction(k, 8) for k in range(1, 8)]
            continue
        try:
            f = Fraction(v).limit_denominator(64)
        except (ValueError, ZeroDivisionError):
            problems.append(f"--rho {v}: give a fraction such as 3/8 or 0.375, or 'sweep'")
            continue
        if not 0 < f < 1:
            problems.append(f"--rho {v}: rho must lie strictly between 0 and 1")
        out.append(f)
    return list(dict.fromkeys(out))


def _check_pair(content: str, style: str, problems: list[str]) -> None:
    """Names the world knows, which the base model cannot already draw (a personal instance or a held-out class)."""
    from b4m.world.instances import learnable_concept_problem

    for kind, value in (("content", content), ("style", style)):
        if (why := learnable_concept_problem(value, kind)) is not None:
            problems.append(f"--pairs {content}:{style}: {why}")


def _world_pairs(cfg: BenchConfig, sizes: dict[str, Any], problems: list[str]) -> list[tuple[str, str]]:
    """``--pairs`` or ``--suite`` (default: the tracks' pairs) as ``(content, style)`` names the world knows."""
    pairs_text = _split(cfg.pairs)
    if cfg.suite:
        from b4m.bench.suites import SUITE_SEEDS, SUITES

        if pairs_text:
            problems.append(f"--suite {cfg.suite} and --pairs: give one of them")
        pairs_text = list(SUITES[cfg.suite])
        if cfg.track != "both":
            pairs_text = [p for p in pairs_text if track_of(p) == cfg.track]
        if cfg.seeds is None and not cfg.quick:
            sizes["seeds"] = SUITE_SEEDS
    if not pairs_text:
        tracks = ("instance", "new-class") if cfg.track == "both" else (cfg.track,)
        pairs_text = [p for t in tracks for p in TRACK_PAIRS[t]]
        if cfg.quick:
            pairs_text = pairs_text[:1]
    pairs = []
    for text in pairs_text:
        content, sep, style = text.partition(":")
        if not sep or not content or not style:
            problems.append(f"--pairs {text}: write content:style, e.g. teddy#3:papercut#5")
            continue
        pairs.append((content.strip(), style.strip()))
    for content, style in pairs:
        _check_pair(content, style, problems)
    only = [o for o in ("base", "dino", "clip", "csd", "resolution", "rank") if getattr(cfg, o) is not None]
    if only:
        problems.append(
            f"--{only[0]}: only with --pairs-file (the built-in bench runs the built-in model and its judges)"
        )
    return pairs


@dataclasses.dataclass(frozen=True)
class Plan:
    """The validated protocol: what to run, at which size."""

    pairs: tuple[tuple[str, str], ...]
    methods: tuple[str, ...]
    arms: tuple[str, ...]  # "full", ablations, "rho=k/8", then the other methods' "METHOD:key=value"
    sizes: dict[str, Any]
    cfg: BenchConfig
    source: Any = None
    """The :class:`~b4m.bench.pairs_file.PairsFile` of ``--pairs-file`` (``None``: the built-in world)."""
    base: str = "builtin"
    """The base model: ``builtin``, or ``--pairs-file``'s folder or hub id."""
    replicates: Any = None
    """The training-seed replicates (:class:`~b4m.bench.suites.Replicates`; ``None``: none)."""


def plan(cfg: BenchConfig) -> Plan:
    """Check every option (one error naming them all, before any model loads) and expand the defaults."""
    from b4m.checks import finite, integer_at_least
    from b4m.methods.catalogue import CATALOGUE

    problems: list[str] = []
    explicit = {k for k in ("methods", "arms", "pairs") if getattr(cfg, k)}
    sizes = {}  # an option given explicitly wins, with or without --quick
    for k, default in DEFAULT_SIZES.items():
        given = getattr(cfg, k)
        sizes[k] = given if given is not None else QUICK[k] if cfg.quick else default
    methods = _split(cfg.methods) or (
        QUICK["methods"] if cfg.quick and "methods" not in explicit else list(CATALOGUE)
    )
    if cfg.pairs_file is not None:
        from b4m.bench.pairs_file import check_bench_options

        source, base = check_bench_options(cfg, methods, sizes, problems)
        pairs = list(source.pairs) if source is not None else []
    else:
        source, base = None, "builtin"
        pairs = _world_pairs(cfg, sizes, problems)
    if len(set(pairs)) != len(pairs):
        problems.append("--pairs: a pair is listed twice")
    unknown = [m for m in methods if m not in CATALOGUE]
    if unknown:
        problems.append(f"--methods {','.join(unknown)}: unknown; known: {', '.join(CATALOGUE)}")
    # the ablations are B4M's: by default they run when b4m is among the methods
    default_arms = QUICK["arms"] if cfg.quick else list(DEFAULT_ARMS)
    if source is not None or cfg.pairs_file is not None:  # real models: ablations only when asked for
        default_arms = ["full"]
    arms = _split(cfg.arms) or (default_arms if ARMS_OF in methods else ["full"])
    if arms == ["none"]:
        arms = ["full"]
    arms = [a if split_arm(a)[0] != ARMS_OF else split_arm(a)[1] for a in arms]  # b4m:no-rp is no-rp
    for a in [a for a in arms if split_arm(a)[0] != ARMS_OF]:  # another method's option arm
        method, rest = split_arm(a)
        if method not in CATALOGUE:
            problems.append(f"--arms {a}: unknown method {method}; known: {', '.join(CATALOGUE)}")
        elif method not in methods:
            problems.append(f"--arms {a}: add {method} to --methods")
        else:
            try:
                option_arm(rest, method)
            except ValueError as err:
                problems.append(f"--arms {a}: {err}")
    own, arms = arms, [a for a in arms if split_arm(a)[0] == ARMS_OF]
    bad = [a for a in arms if a not in ARMS and "=" not in a and "+" not in a]
    if bad:
        problems.append(f"--arms {','.join(bad)}: unknown; known: {', '.join(ARMS)} (or none), or B4M option "
                        "arms such as aux_lr_scale=0.1 or stage2_lr=1e-3+stage2_steps=50")  # fmt: skip
    for a in arms:
        if ("=" in a or "+" in a) and not a.startswith("rho="):
            try:
                option_arm(a)
            except ValueError as err:
                problems.append(f"--arms {a}: {err}")
    rhos = _rho_values(cfg.rho, problems)
    arms = ["full", *[a for a in arms if a != "full"]]
    arms += [f"rho={f.numerator}/{f.denominator}" for f in rhos if f != Fraction(1, 2)]
    arms += [a for a in own if split_arm(a)[0] != ARMS_OF]  # the other methods' option arms, last
    # rho = 1/2 is B4M's default: the full arm's row
    for option, value, least in (("--seeds", sizes["seeds"], 1), ("--steps", sizes["steps"], 1),
                                 ("--stage2-steps", sizes["stage2_steps"], 0),
                                 ("--merge-steps", sizes["merge_steps"], 1),
                                 ("--sample-steps", sizes["sample_steps"], 1),
                                 ("--n-content", sizes["n_content"], 1), ("--n-style", sizes["n_style"], 1),
                                 ("--bootstrap", sizes["bootstrap"], 100)):  # fmt: skip
        integer_at_least(value, option, least, problems)
    if cfg.sgd_lr is not None:
        finite(cfg.sgd_lr, "--sgd-lr", problems, positive=True)
    if cfg.shard and parse_shard(cfg.shard) is None:
        problems.append(f"--shard {cfg.shard}: write K/N with 0 <= K < N, e.g. 0/2 and 1/2 for two processes")
    replicates = _replicates(cfg, len(pairs), methods, problems)
    if problems:
        raise B4MError("; ".join(problems))
    return Plan(
        tuple(pairs),
        tuple(dict.fromkeys(methods)),
        tuple(dict.fromkeys(arms)),
        sizes,
        cfg,
        source,
        base,
        replicates,
    )


def _replicates(cfg: BenchConfig, n_pairs: int, methods: list[str], problems: list[str]) -> Any:
    """``--train-seeds`` / ``--replicate-pairs`` (default: the suite's :data:`~b4m.bench.suites.REPLICATES`) as a
    :class:`~b4m.bench.suites.Replicates` of this plan (``None``: no replicates)."""
    from b4m.bench.suites import REPLICATES, Replicates

    default = REPLICATES.get(cfg.suite) if not cfg.quick else None
    seeds: list[int] = []
    for text in _split(cfg.train_seeds):
        if not text.lstrip("-").isdigit() or int(text) < 0:
            problems.append(f"--train-seeds {text}: give whole numbers >= 0, e.g. 1,2")
        elif int(text) == cfg.seed:
            problems.append(f"--train-seeds {text}: that is --seed itself; give other seeds")
        else:
            seeds.append(int(text))
    if cfg.replicate_pairs is not None and cfg.replicate_pairs < 1:
        problems.append(f"--replicate-pairs {cfg.replicate_pairs}: give at least 1")
    if cfg.replicate_pairs is not None and not (seeds or default):
        problems.append("--replicate-pairs: only with --train-seeds (or --suite test)")
    if not seeds and default is None:
        return None
    base = default or Replicates()
    kept = tuple(m for m in base.methods if m in methods)
    if not kept:  # the suite's replicates quietly need one of their methods; asked-for ones say so
        if seeds:
            problems.append(
                f"--train-seeds: replicates train {' and '.join(base.methods)}; add one to --methods"
            )
        return None
    n = min(cfg.replicate_pairs or base.pairs, n_pairs)
    return Replicates(n, tuple(dict.fromkeys(seeds)) or base.seeds, kept)
