"""Retrain the world judges and write ``benchmarks/judges.md``.

    nice -n 10 python benchmarks/judges.py                     # train, save to src/b4m/assets/judges, report
    python benchmarks/judges.py --evaluate-only                # re-evaluate the shipped weights, report

The report gives the command, seed, timings, and accuracy on fresh renders (seeds never used in training),
clean and under the generator-jitter perturbation (blur sigma 0.7, noise std 0.05, 1-2 px shift), for held-in
and held-out concepts. A thin shell over :mod:`b4m.harness.judges`, like ``b4m judges train`` / ``b4m judges
eval`` (the same options; this script writes the report here by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from b4m.cli import run_command  # noqa: E402
from b4m.config import add_config_args, config_from_args  # noqa: E402
from b4m.harness import judges  # noqa: E402

REPORT = Path(__file__).resolve().parent / "judges.md"


def _run(args: argparse.Namespace) -> int:
    job = config_from_args(judges.JudgesTrainJob, args)
    if args.evaluate_only:
        ev = judges.JudgesEvalJob(path=job.out, n_eval=job.n_eval, seed=job.seed, threads=job.threads,
                                  report=job.report)  # fmt: skip
        metrics = judges.evaluate(ev, command=args.command)
    else:
        metrics = judges.train(job, command=args.command)
    print(judges.summary(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, judges.JudgesTrainJob)
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the weights in --out")
    parser.set_defaults(report=REPORT, func=_run)
    args = parser.parse_args(argv)
    args.command = " ".join(["python benchmarks/judges.py", *argv])
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
