"""``b4m demo``: the whole pipeline on the built-in world."""

from __future__ import annotations

import argparse
from pathlib import Path

from b4m.config import add_config_args, config_from_args


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


def register(sub: argparse._SubParsersAction) -> None:
    from b4m.demo import DemoConfig

    p = sub.add_parser("demo", help="run the whole pipeline on the built-in world and write a report")
    add_config_args(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)
