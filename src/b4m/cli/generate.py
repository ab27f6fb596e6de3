"""``b4m generate`` and ``b4m eval``: images from an adapter, and their scores."""

from __future__ import annotations

import argparse

from b4m.config import add_config_args, config_from_args
from b4m.options import GenerateConfig


def cmd_generate(args: argparse.Namespace) -> int:
    """``b4m generate`` (and ``b4m base sample``, the same with no adapter)."""
    from b4m.api import generate

    cfg = config_from_args(GenerateConfig, args)
    paths = generate(**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    print(f"{len(paths)} images and grid.png in {paths[0].parent}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from b4m.eval.scoring import EvalConfig, evaluate, format_table

    results = evaluate(config_from_args(EvalConfig, args))
    print(format_table(results))
    print(f"\nscores: {results['config']['out']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="generate images with an adapter; content and style strength are separate"
    )
    add_config_args(p, GenerateConfig)
    p.set_defaults(func=cmd_generate)

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
