"""``b4m``: the command line, a thin shell over :mod:`b4m.api` and the config dataclasses.

Every training/generation flag is generated from a config field (``b4m.config``), so ``--help`` shows the
same defaults the Python API uses, and ``--config x.yaml`` takes the same options as a file.

One module per command group adds its subcommands (``register``) and holds their handlers:
:mod:`~b4m.cli.demo`, :mod:`~b4m.cli.train` (train, fuse, methods, run), :mod:`~b4m.cli.generate` (generate,
eval), :mod:`~b4m.cli.bench`, :mod:`~b4m.cli.files` (info, export, convert), :mod:`~b4m.cli.world`,
:mod:`~b4m.cli.base` and :mod:`~b4m.cli.judges`. This module builds the parser from them, in the order
``b4m --help`` lists the commands, and is the one error boundary (:func:`run_command`).
"""

from __future__ import annotations

import argparse
import os
import sys

# The CLI prints its own errors; library chatter (e.g. "torchvision not installed") only hides them.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from b4m.cli import base, bench, demo, files, generate, judges, train, world
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

COMMAND_GROUPS = (demo, train, generate, bench, files, world, base, judges)
"""The command modules, in the order ``b4m --help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="b4m",
        description="Content-style customization with B4M (Break-for-Make): learn a subject and a style from a "
        "few images each, fuse them into one LoRA that diffusers, ComfyUI and A1111 load.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


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
