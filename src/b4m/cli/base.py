"""``b4m base sample|train|eval|grid|diagnose|ship|check``: the built-in base model (the jobs of
:mod:`b4m.harness.base` and the customizability check of :mod:`b4m.eval.customize`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from b4m.cli.common import examples
from b4m.cli.generate import cmd_generate
from b4m.config import add_config_args, config_from_args
from b4m.options import GenerateConfig


def _cmd_base_sample(args: argparse.Namespace) -> int:
    return cmd_generate(args)


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


def register(sub: argparse._SubParsersAction) -> None:
    base = sub.add_parser("base", help="the built-in base model").add_subparsers(
        dest="base_cmd", required=True
    )
    p = base.add_parser("sample", help="generate images from prompts with the base model (no adapter)")
    add_config_args(p, GenerateConfig, skip=("adapter", "content_scale", "style_scale"))
    p.set_defaults(func=_cmd_base_sample)
    _add_base_harness(base)


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
        epilog=examples(
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
        epilog=examples(
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
        epilog=examples("b4m base grid --path runs/base/pipeline --out docs/images/base_samples.png"),
        formatter_class=raw,
    )
    add_config_args(p, BaseGridConfig)
    p.set_defaults(func=_cmd_base_grid)

    p = base.add_parser(
        "diagnose",
        help="where style errors arise: SDEdit style accuracy by noise level; the style judge under warps",
        epilog=examples(
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
        epilog=examples(
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
        epilog=examples(
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
