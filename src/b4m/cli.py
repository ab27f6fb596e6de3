"""``b4m``: the command line, a thin shell over :mod:`b4m.api` and the config dataclasses.

Every training/generation flag is generated from a config field (``b4m.config``), so ``--help`` shows the
same defaults the Python API uses, and ``--config x.yaml`` takes the same options as a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

# The CLI prints its own errors; library chatter (e.g. "torchvision not installed") only hides them.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from b4m.config import GenerateConfig, Stage1Config, Stage2Config, add_config_args, config_from_args
from b4m.errors import B4MError

EPILOG = """examples:
  b4m demo                                          # the whole pipeline on the built-in world
  b4m world list                                    # every name below: classes, personal instances
  b4m world export --out refs/teddy --content teddy#3 -n 4 --content-word "snq teddy"
  b4m train content --images refs/teddy --prompt "a photo of a snq teddy" --aux-styles s1 s2 s3
  b4m train style --images refs/paper --aux-contents c1 c2 c3      # prompts from the .txt captions
  b4m fuse --content runs/content/adapter.safetensors --style runs/style/adapter.safetensors
  b4m generate --adapter runs/fused/adapter.safetensors --prompt "a snq teddy in wzk papercut style" -n 8
  b4m convert runs/fused/adapter.safetensors teddy_kohya.safetensors --to kohya   # for ComfyUI / A1111
  b4m export runs/fused/adapter.safetensors --out teddy_s06.safetensors --style-scale 0.6   # strengths baked in
  b4m export runs/fused/adapter.safetensors --split --out parts   # style / content / interaction LoRAs
  b4m methods                                       # every method: id, needs, writes
  b4m eval --adapter runs/fused/adapter.safetensors --content-images refs/teddy --style-images refs/paper \\
      --prompts prompts.txt --out eval.json          # scores with 95 % intervals
  b4m bench --quick --out runs/bench                # every method + B4M ablations; report.html
  b4m run ziplora --content-lora c.safetensors --style-lora s.safetensors --content-images refs/teddy \\
      --style-images refs/paper --out runs/zip
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from b4m.demo import DemoConfig, run_demo

    results = run_demo(config_from_args(DemoConfig, args))
    out = Path(results["config"]["out"])
    _print_scores(results["scores"])
    print(f"\nreport: {out / 'report.html'}\nadapter: {results['adapter']}")
    return 0


def _print_scores(scores: dict) -> None:
    cols = ["content", "style", "prompt", "mean", "hmean", "content_acc", "style_acc"]
    cols += [c for c in ("content_inst", "style_inst") if any(r.get(c) is not None for r in scores.values())]
    width = max(len(k) for k in scores) + 2
    print("\n" + "model".ljust(width) + "".join(c.rjust(13) for c in cols))
    for name, row in scores.items():
        print(name.ljust(width) + "".join(f"{row[c]:13.3f}" for c in cols))


def _cmd_eval(args: argparse.Namespace) -> int:
    from b4m.eval.scoring import EvalConfig, evaluate, format_table

    results = evaluate(config_from_args(EvalConfig, args))
    print(format_table(results))
    print(f"\nscores: {results['config']['out']}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from b4m.bench.catalogue import BenchConfig
    from b4m.bench.run import run_bench

    cfg = config_from_args(BenchConfig, args)
    results = run_bench(cfg, argv=args.argv[1:])
    out = Path(cfg.out)
    if "shard" in results:  # a shard other than 0: its runs are done, shard 0 writes the results
        print(
            f"shard {results['shard']}: {results['computed']} runs computed now; shard 0 writes {out}/results.*"
        )
        return 0
    print(f"{len(results['rows'])} rows ({results['computed']} computed now)")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}\nreport: {out / 'report.html'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from b4m.train.stage1 import train_stage1

    path = train_stage1(config_from_args(Stage1Config, args), args.role)
    print(path)
    return 0


def _cmd_fuse(args: argparse.Namespace) -> int:
    from b4m.train.stage2 import train_stage2

    print(train_stage2(config_from_args(Stage2Config, args)))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from b4m.api import generate

    cfg = config_from_args(GenerateConfig, args)
    paths = generate(**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    print(f"{len(paths)} images and grid.png in {paths[0].parent}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from b4m.methods import all_methods

    rows = [(m.id, ", ".join(m.needs) or "-", m.writes, m.summary) for m in all_methods().values()]
    heads = ("id", "needs", "writes", "what")
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(3)]
    for row in [heads, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from b4m.methods import get_method
    from b4m.methods.common import fit_method

    method = get_method(args.method)
    names = {f for f in method.config.__dataclass_fields__}
    options = {k: v for k, v in vars(args).items() if k in names and v is not None}
    print(fit_method(args.method, getattr(args, "config", None), **options).path)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from b4m.diffusion.sampling import describe

    for path in args.files:
        print(describe(path))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from b4m.api import export

    result = export(
        args.adapter,
        args.out,
        content_scale=args.content_scale,
        style_scale=args.style_scale,
        split=args.split,
        base_model_version=args.base_model_version,
        overwrite=args.overwrite,
    )
    if not isinstance(result, list):
        print(result)
        return 0
    print(
        f"wrote {len(result)} ordinary LoRAs into {args.out}; load them together, each at its strength, for a "
        "content strength C and a style strength S:"
    )
    width = max(len(str(f.path)) for f in result)
    for f in result:
        print(f"  {str(f.path).ljust(width)}  strength {f.part.strength.ljust(3)}  {f.part.holds}")
    names = {f.part.name: f.path.stem for f in result}
    example = " ".join(
        f"<lora:{names[p]}:{v}>"
        for p, v in (("style", "0.5"), ("content", "1"), ("interaction", "0.5"), ("frozen", "1"))
        if p in names
    )
    print(f"e.g. C = 1, S = 0.5 in A1111: {example}; in ComfyUI: one LoraLoaderModelOnly per file, chained")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from b4m.adapters.convert import convert

    print(convert(args.adapter, args.out, args.to, args.base_model_version, args.overwrite, "OUT"))
    return 0


def _cmd_world_export(args: argparse.Namespace) -> int:
    from b4m.world.export import export_concept

    try:
        path = export_concept(
            args.out,
            content=args.content,
            style=args.style,
            n=args.n,
            seed=args.seed,
            content_word=args.content_word,
            style_word=args.style_word,
            overwrite=args.overwrite,
        )
    except ValueError as err:
        raise B4MError(f"world export: {err}") from None
    print(path)
    return 0


def _cmd_world_show(args: argparse.Namespace) -> int:
    from b4m.io import save_image
    from b4m.owned import check_file, record_file
    from b4m.world.concepts import CONTENTS, STYLES
    from b4m.world.sheet import contact_sheet

    out = Path(args.out)
    check_file(out, "--out", args.overwrite)
    try:
        sheet = contact_sheet(args.contents or CONTENTS, args.styles or STYLES, seed=args.seed)
    except ValueError as err:
        raise B4MError(f"world show: {err}") from None
    record_file(save_image(sheet, out))
    print(out)
    return 0


def _cmd_world_list(args: argparse.Namespace) -> int:
    from b4m.world.instances import catalogue

    rows = catalogue()
    width = max(len(name) for name, _ in rows) + 2
    for name, what in rows:
        print(name.ljust(width) + what)
    return 0


def _cmd_base_sample(args: argparse.Namespace) -> int:
    return _cmd_generate(args)


def _cmd_base_train(args: argparse.Namespace) -> int:
    from b4m.harness.base import train_base
    from b4m.models.base.config import BaseModelConfig

    train_base(
        config_from_args(BaseModelConfig, args), args.out, resume=not args.restart, progress=args.progress
    )
    return 0


def _base_job(config: str, job: str) -> Any:
    """The handler of a ``b4m base`` subcommand: ``b4m.harness.base.<job>(<config> from the flags)`` (imported
    when it runs, so ``--help`` loads no torch)."""

    def run(args: argparse.Namespace) -> int:
        from b4m.harness import base

        getattr(base, job)(config_from_args(getattr(base, config), args))
        return 0

    return run


_cmd_base_eval = _base_job("BaseEvalConfig", "evaluate_base")
_cmd_base_grid = _base_job("BaseGridConfig", "sample_grid")
_cmd_base_diagnose = _base_job("BaseDiagnoseConfig", "diagnose_base")
_cmd_base_ship = _base_job("BaseShipConfig", "ship_base")


def _cmd_base_check(args: argparse.Namespace) -> int:
    import json
    import time

    from b4m.eval.customize import CustomizeCheck, check_customizability, format_table

    cfg = config_from_args(CustomizeCheck, args)
    t = time.perf_counter()
    r = check_customizability(cfg, work=args.work)
    r["wall_s"] = round(time.perf_counter() - t, 1)
    print(format_table(r))
    print(f"\n{r['wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1))
    return 0


def _cmd_judges_train(args: argparse.Namespace) -> int:
    from b4m.harness.judges import JudgesTrainJob, train

    metrics = train(config_from_args(JudgesTrainJob, args), command="b4m " + " ".join(args.argv))
    _print_judges(metrics)
    return 0


def _cmd_judges_eval(args: argparse.Namespace) -> int:
    from b4m.harness.judges import JudgesEvalJob, evaluate

    metrics = evaluate(config_from_args(JudgesEvalJob, args), command="b4m " + " ".join(args.argv))
    _print_judges(metrics)
    return 0


def _print_judges(metrics: dict) -> None:
    from b4m.harness.judges import summary

    print(summary(metrics))


_BASE_VERSION_HELP = (
    "kohya ss_base_model_version (default: from the file: SDXL, SD 1.x or SD 2.x by its cross-attention "
    "width or recorded base model; A1111 lists SDXL LoRAs only if it starts with sdxl_)"
)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where there is one to show (not None / False, not already in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) or text


class _ExamplesFormatter(_DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults as :class:`_DefaultsFormatter`, and an epilog of examples kept line by line."""


def build_parser() -> argparse.ArgumentParser:
    fmt = _DefaultsFormatter
    parser = argparse.ArgumentParser(
        prog="b4m",
        description="Content-style customization with B4M (Break-for-Make): learn a subject and a style from a "
        "few images each, fuse them into one LoRA that diffusers, ComfyUI and A1111 load.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from b4m.demo import DemoConfig

    p = sub.add_parser("demo", help="run the whole pipeline on the built-in world and write a report")
    add_config_args(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="stage 1: train a content or a style PLP adapter")
    roles = train.add_subparsers(dest="role", required=True, metavar="ROLE")
    for role, aux_flag, aux_help in (
        (
            "content",
            "--aux-styles",
            "folders of other styles (one or more images each, own captions) that train D",
        ),
        (
            "style",
            "--aux-contents",
            "folders of other contents (one or more images each, own captions) that train B",
        ),
    ):
        p = roles.add_parser(role, help=f"train the {role} PLP (multi-correspondence, paper Eq. 12)")
        add_config_args(p, Stage1Config, skip=("aux",))
        p.add_argument(aux_flag, "--aux", dest="aux", nargs="+", default=None, metavar="DIR", help=aux_help)
        p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "fuse", help="stage 2: fuse content + style adapters, fine-tune with Riemannian preconditioning"
    )
    add_config_args(p, Stage2Config)
    p.set_defaults(func=_cmd_fuse)

    from b4m.methods.catalogue import CATALOGUE  # configs and summaries only: no torch for --help

    p = sub.add_parser("methods", help="list the methods b4m runs (id, what each needs, what it writes)")
    p.set_defaults(func=_cmd_methods)
    run = sub.add_parser(
        "run", help="run any method by id ('b4m methods' lists them) with the shared option names"
    )
    ids = run.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in CATALOGUE.values():
        p = ids.add_parser(method.id, help=method.summary)
        add_config_args(p, method.config)
        p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "generate", help="generate images with an adapter; content and style strength are separate"
    )
    add_config_args(p, GenerateConfig)
    p.set_defaults(func=_cmd_generate)

    from b4m.eval.scoring import EvalConfig  # dataclass only: torch loads when the command runs

    p = sub.add_parser(
        "eval",
        help="score an adapter against content and style reference folders and a prompt file",
        description="Generate -n images per prompt with --adapter and score them: content, style and prompt "
        "alignment, mean, harmonic mean, the judges' accuracies and leakage, with 95 % bootstrap intervals "
        "(the built-in world's judges, or --clip and --dino). Writes --out (JSON) and prints a table.",
    )
    add_config_args(p, EvalConfig)
    p.set_defaults(func=_cmd_eval)

    from b4m.bench.catalogue import SIZE_HELP, BenchConfig

    p = sub.add_parser(
        "bench",
        help="run every method and B4M ablation on the built-in world; results.json/.md, report.html",
        description="The paper's protocol on the built-in world: per content-style pair, every method and "
        "every B4M ablation arm on the same references, source adapters and seeds, scored by the judges "
        "with bootstrap intervals. " + SIZE_HELP,
    )
    add_config_args(p, BenchConfig)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "info", help="show what an adapter file holds (method, rank, rho, basis id, trigger words)"
    )
    p.add_argument("files", nargs="+", type=Path)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "export",
        help="write an adapter as an ordinary LoRA for ComfyUI / A1111 (kohya keys); bake in content and style "
        "strengths, or split it into parts",
        description=textwrap.fill(
            "Write FILE as an ordinary LoRA in kohya spelling (ComfyUI, A1111 and diffusers read it; FLUX "
            "files with Black Forest Labs' names). A b4m adapter has two knobs other tools do not know: content "
            "strength C scales its content part B, style strength S its style part D, so each layer's update "
            "[[AC, AD], [BC, BD]] becomes [[AC, S*AD], [C*BC, C*S*BD]] (what 'b4m generate --content-scale "
            "--style-scale' draws). --content-scale/--style-scale bake one pair into the file; --split writes the "
            "blocks as separate LoRAs that, loaded together at strengths S, C and C*S, give any pair in any tool.",
            100,
        ),
        epilog=_examples(
            "b4m export runs/fused/adapter.safetensors --out teddy_paper.safetensors",
            "b4m export runs/fused/adapter.safetensors --out teddy_paper_s06.safetensors --style-scale 0.6",
            "b4m export runs/fused/adapter.safetensors --split --out parts/   # parts/adapter_style.safetensors ...",
        ),
        formatter_class=_ExamplesFormatter,
    )
    p.add_argument("adapter", type=Path, metavar="FILE", help="LoRA file (diffusers, peft or kohya spelling)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .safetensors file (with --split: a folder for the parts)",
    )
    p.add_argument(
        "--content-scale",
        type=float,
        default=None,
        metavar="C",
        help="bake this content strength into the file: B is scaled by C (blocks BC by C, BD by C*S); 1 keeps "
        "the trained strength, 0 removes the content; needs a b4m adapter (its header's rho and basis)",
    )
    p.add_argument(
        "--style-scale",
        type=float,
        default=None,
        metavar="S",
        help="bake this style strength into the file: D is scaled by S (blocks AD by S, BD by C*S); needs a b4m "
        "adapter",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="write FILE's parts into the folder --out as ordinary LoRAs: <name>_style (block AD, load at "
        "strength S), <name>_content (BC, at C), <name>_interaction (BD, at C*S), and <name>_frozen (AC, at 1) "
        "where AC is not zero (--orth approx/none); needs a b4m adapter",
    )
    p.add_argument("--base-model-version", default=None, help=_BASE_VERSION_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace files that exist")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "convert",
        help="rewrite a LoRA file in kohya (ComfyUI / A1111) or diffusers spelling, losslessly",
        formatter_class=fmt,
    )
    p.add_argument("adapter", type=Path, metavar="IN", help="LoRA file (diffusers, peft or kohya spelling)")
    p.add_argument("out", type=Path, metavar="OUT", help="output .safetensors file")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"], help="spelling to write")
    p.add_argument("--base-model-version", default=None, help=_BASE_VERSION_HELP)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_convert)

    world = sub.add_parser("world", help="the built-in synthetic world").add_subparsers(
        dest="world_cmd", required=True
    )
    p = world.add_parser(
        "export", help="write reference images + captions of a concept to a folder", formatter_class=fmt
    )
    p.add_argument("--out", required=True, type=Path, help="folder to create (must not exist or be empty)")
    p.add_argument(
        "--content",
        help="content name, or a personal instance such as teddy#3 (with no --style: photo style)",
    )
    p.add_argument(
        "--style", help="style name or a personal instance such as papercut#5 (no --content: random contents)"
    )
    p.add_argument("-n", type=int, default=4, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--content-word", help="replaces the content name in captions, e.g. 'snq teddy'")
    p.add_argument("--style-word", help="replaces the style name in captions, e.g. 'wzk papercut'")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=_cmd_world_export)
    p = world.add_parser("show", help="write a contact sheet (PNG) of contents x styles", formatter_class=fmt)
    p.add_argument("--out", type=Path, default=Path("world.png"), help="PNG file to write")
    p.add_argument(
        "--contents", nargs="+", help="contents or personal instances, e.g. teddy#0 (default: all)"
    )
    p.add_argument("--styles", nargs="+", help="styles or personal instances, e.g. papercut#5 (default: all)")
    p.add_argument("--seed", type=int, default=0, help="render seed (pose, jitter)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_world_show)
    p = world.add_parser(
        "list", help="print every content, style, personal instance and held-out name", formatter_class=fmt
    )
    p.set_defaults(func=_cmd_world_list)

    base = sub.add_parser("base", help="the built-in base model").add_subparsers(
        dest="base_cmd", required=True
    )
    p = base.add_parser("sample", help="generate images from prompts with the base model (no adapter)")
    add_config_args(p, GenerateConfig, skip=("adapter", "content_scale", "style_scale"))
    p.set_defaults(func=_cmd_base_sample)
    _add_base_harness(base)
    _add_judges(sub)
    return parser


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_base_harness(base: argparse._SubParsersAction) -> None:
    """``b4m base train/eval/grid/diagnose/ship/check``: the jobs of :mod:`b4m.harness.base` and the
    customizability check (``python benchmarks/base_model.py`` and ``benchmarks/customize.py`` call these)."""
    from b4m.eval.customize import CustomizeCheck
    from b4m.harness.base import BaseDiagnoseConfig, BaseEvalConfig, BaseGridConfig, BaseShipConfig
    from b4m.models.base.config import BaseModelConfig

    raw = argparse.RawDescriptionHelpFormatter
    p = base.add_parser(
        "train",
        help="train the built-in base model (VAE, then UNet and text encoder; resumes if killed)",
        description="Train a base pipeline into --out/pipeline; about two hours from scratch on 2 cores. Every "
        "BaseModelConfig field is a flag (--train-steps 1200) or a --set item (--set train_steps=1200, JSON "
        "values), or a key of a --config file.",
        epilog=_examples(
            "b4m base train --out runs/base                       # from scratch; rerun to resume",
            "b4m base train --out runs/ft --set init_from=src/b4m/assets/base --set train_steps=1200 \\",
            "    --set filler_prob=0.5 --set lift_weak_words=true  # fine-tune the shipped model",
            "b4m base train --config base.yaml --out runs/base2   # the same keys in a file",
        ),
        formatter_class=raw,
    )
    add_config_args(p, BaseModelConfig)
    p.add_argument("--out", type=Path, default=Path("runs/base"), help="run folder (default: runs/base)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one BaseModelConfig field, value as JSON (repeatable), e.g. --set train_steps=1200",
    )  # fmt: skip
    p.add_argument("--restart", action="store_true", help="ignore the checkpoints in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    p.set_defaults(func=_cmd_base_train)

    p = base.add_parser(
        "eval",
        help="judge fresh samples of a base model against the quality bars",
        description="Sample held-in, held-out and unseen-pair scenes and let the world judges score content, "
        "style and attributes; one row per --guidance x --steps.",
        epilog=_examples(
            "b4m base eval                                        # the shipped model",
            "b4m base eval --path runs/base/pipeline --guidance 3 4 5 --n-per-concept 16 --json runs/eval.json",
        ),
        formatter_class=raw,
    )
    add_config_args(p, BaseEvalConfig)
    p.set_defaults(func=_cmd_base_eval)

    p = base.add_parser(
        "grid",
        help="write a sample grid (styles, attributes, held-out contents)",
        epilog=_examples("b4m base grid --path runs/base/pipeline --out docs/images/base_samples.png"),
        formatter_class=raw,
    )
    add_config_args(p, BaseGridConfig)
    p.set_defaults(func=_cmd_base_grid)

    p = base.add_parser(
        "diagnose",
        help="where style errors arise: SDEdit style accuracy by noise level; the style judge under warps",
        epilog=_examples(
            "b4m base diagnose --path runs/base/pipeline --n-per-concept 16 --json runs/diag.json"
        ),
        formatter_class=raw,
    )
    add_config_args(p, BaseDiagnoseConfig)
    p.set_defaults(func=_cmd_base_diagnose)

    p = base.add_parser(
        "ship",
        help="copy a trained pipeline into src/b4m/assets/base (the built-in model)",
        description="Replace the built-in base model by --path, recording the measured sampling settings and "
        "the evaluation in its b4m_base.json.",
        epilog=_examples(
            "b4m base ship --path runs/base/pipeline --guidance-scale 3 --eval-json runs/eval_g3.json"
        ),
        formatter_class=raw,
    )
    add_config_args(p, BaseShipConfig)
    p.set_defaults(func=_cmd_base_ship)

    p = base.add_parser(
        "check",
        help="the customizability check: do one-concept adapters of personal instances carry them into "
        "prompts that name another concept?",
        description="Learn each personal teddy (and, the mirror, each personal papercut style) with a plain "
        "one-concept adapter, then ask for it together with other held-in styles (contents). Passed when the "
        "judges name that instance in >= --bar-instance of the images and the partner class in >= "
        "--bar-other. Prints a Markdown table.",
        epilog=_examples(
            "b4m base check                                       # the shipped model, the full check",
            "b4m base check --base runs/base_v3/pipeline --json runs/customize.json",
            "b4m base check --contents teddy#3 teddy#0 --styles papercut#5 --steps 800   # a quick look",
            "b4m base check --styles --method lora                # content half only, plain LoRAs",
        ),
        formatter_class=raw,
    )
    add_config_args(p, CustomizeCheck, skip=("extra",))
    p.add_argument("--work", type=Path, default=None, help="keep the reference folders and adapters here")
    p.add_argument("--json", type=Path, default=None, help="write the full result here")
    p.set_defaults(func=_cmd_base_check)


def _add_judges(sub: argparse._SubParsersAction) -> None:
    """``b4m judges train/eval``: :mod:`b4m.harness.judges` (``python benchmarks/judges.py`` calls these)."""
    from b4m.harness.judges import JudgesEvalJob, JudgesTrainJob

    raw = argparse.RawDescriptionHelpFormatter
    judges = sub.add_parser(
        "judges", help="the built-in world's judges (content, style, attribute CNNs): train, evaluate"
    ).add_subparsers(dest="judges_cmd", required=True, metavar="COMMAND")
    p = judges.add_parser(
        "train",
        help="train the judges on fresh renders, evaluate them and write a report",
        description="Train the judges (the recipe's defaults reproduce the shipped ones; about two hours at "
        "1 thread), evaluate them on renders whose seeds training never uses, save them to --out.",
        epilog=_examples(
            "b4m judges train --out runs/judges --report runs/judges.md",
            "b4m judges train --steps 6500 --out runs/judges_v5 --report runs/judges_v5.md",
            "b4m judges train --steps 20 --pool-size 256 --n-eval 1 --out /tmp/j   # a smoke test",
        ),
        formatter_class=raw,
    )
    add_config_args(p, JudgesTrainJob)
    p.set_defaults(func=_cmd_judges_train)
    p = judges.add_parser(
        "eval",
        help="re-evaluate saved judges on fresh renders and write a report",
        epilog=_examples(
            "b4m judges eval                                      # the shipped judges",
            "b4m judges eval --path runs/judges --report runs/judges.md",
        ),
        formatter_class=raw,
    )
    add_config_args(p, JudgesEvalJob)
    p.set_defaults(func=_cmd_judges_eval)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as typed (reports quote it)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)``; bad input (:class:`~b4m.errors.B4MError`, a full disk) becomes one line
    ``b4m: error: ...`` on stderr and exit code 2, an interrupt exit code 130. Scripts with their own parser
    (``benchmarks/judges.py``) use it too."""
    try:
        return args.func(args)
    except B4MError as err:
        print(f"b4m: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # a file-system fault no writer named (OSError, or the safetensors writer's own)
        from b4m.io import storage_fault

        fault = storage_fault(err)
        if fault is None:
            raise
        print(f"b4m: error: {fault}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "b4m: interrupted (finished stages and checkpoints are kept; the same command continues the run)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
