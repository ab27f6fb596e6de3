"""``b4m world export|show|list``: the built-in synthetic world."""

from __future__ import annotations

import argparse
from pathlib import Path

from b4m.cli.common import DefaultsFormatter
from b4m.errors import B4MError


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


def register(sub: argparse._SubParsersAction) -> None:
    fmt = DefaultsFormatter
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
