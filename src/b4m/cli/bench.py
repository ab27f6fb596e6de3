"""``b4m bench``: every method and B4M ablation on the built-in world (:mod:`b4m.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from b4m.config import add_config_args, config_from_args


def _cmd_bench(args: argparse.Namespace) -> int:
    from b4m.bench.catalogue import BenchConfig
    from b4m.bench.run import run_bench

    cfg = config_from_args(BenchConfig, args)
    results = run_bench(cfg, argv=args.argv[1:])
    if "dry_run" in results:
        print(results["dry_run"])
        return 0
    out = Path(cfg.out)
    if "shard" in results:  # a shard other than 0: its runs are done, shard 0 writes the results
        print(
            f"shard {results['shard']}: {results['computed']} runs computed now; shard 0 writes {out}/results.*"
        )
        return 0
    print(f"{len(results['rows'])} rows ({results['computed']} computed now)")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}\nreport: {out / 'report.html'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from b4m.bench.catalogue import SIZE_HELP, BenchConfig

    p = sub.add_parser(
        "bench",
        help="run every method and B4M ablation on the built-in world or your own pairs (--pairs-file); "
        "results.json/.md, report.html",
        description="The paper's protocol on the built-in world: per content-style pair, every method and "
        "every B4M ablation arm on the same references, source adapters and seeds, scored by the judges "
        "with bootstrap intervals. With --pairs-file: your own content and style folders on a real base model "
        "(--base), scored by DINOv2, CLIP and CSD (--dino, --clip, --csd) as the paper's Table 1; --dry-run "
        "prints the plan and its GPU-hour estimate first. " + SIZE_HELP,
    )
    add_config_args(p, BenchConfig)
    p.set_defaults(func=_cmd_bench)
