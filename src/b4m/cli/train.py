"""``b4m train content|style``, ``b4m fuse``, ``b4m methods`` and ``b4m run METHOD``: B4M's two stages and every
method of the registry by id."""

from __future__ import annotations

import argparse

from b4m.config import add_config_args, config_from_args
from b4m.options import Stage1Config, Stage2Config


def _cmd_train(args: argparse.Namespace) -> int:
    from b4m.train.stage1 import train_stage1

    path = train_stage1(config_from_args(Stage1Config, args), args.role)
    print(path)
    return 0


def _cmd_fuse(args: argparse.Namespace) -> int:
    from b4m.train.stage2 import train_stage2

    print(train_stage2(config_from_args(Stage2Config, args)))
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


def register(sub: argparse._SubParsersAction) -> None:
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
