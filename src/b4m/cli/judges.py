"""``b4m judges train|eval``: the built-in world's judges (:mod:`b4m.harness.judges`;
``python benchmarks/judges.py`` calls these)."""

from __future__ import annotations

import argparse

from b4m.cli.common import examples
from b4m.config import add_config_args, config_from_args


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


def register(sub: argparse._SubParsersAction) -> None:
    from b4m.harness.judges import JudgesEvalJob, JudgesTrainJob

    raw = argparse.RawDescriptionHelpFormatter
    judges = sub.add_parser(
        "judges", help="the built-in world's judges (content, style, attribute CNNs): train, evaluate"
    ).add_subparsers(dest="judges_cmd", required=True, metavar="COMMAND")
    p = judges.add_parser(
        "train",
        help="train the judges on fresh renders, evaluate them and write a report",
        description="Train the judges (the recipe's defaults reproduce the shipped ones; 40 minutes to two hours "
        "at 1 thread, depending on what else runs), evaluate them on renders whose seeds training never uses, save "
        "them to --out. A stopped run continues from its newest checkpoint (<out>/checkpoints, every "
        "--checkpoint-every steps) when the same command runs again.",
        epilog=examples(
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
        epilog=examples(
            "b4m judges eval                                      # the shipped judges",
            "b4m judges eval --path runs/judges --report runs/judges.md",
        ),
        formatter_class=raw,
    )
    add_config_args(p, JudgesEvalJob)
    p.set_defaults(func=_cmd_judges_eval)
