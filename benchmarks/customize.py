"""The customizability check of a world base model (``b4m.eval.customize``), as a table.

    python benchmarks/customize.py                                  # the shipped base model
    python benchmarks/customize.py --base runs/base_v3/pipeline --json runs/customize.json
    python benchmarks/customize.py --contents teddy#3 teddy#0 --styles papercut#5 --steps 800   # a quick look

Prints one row per learned instance and asked-for partner, with and without the adapter, then the overall
instance and partner accuracies and whether the bar (instance >= 60 %, partner >= 80 %) is met.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from b4m.eval.customize import CustomizeCheck, check_customizability  # noqa: E402


def markdown(r: dict) -> str:
    lines = [
        "| learned | asked with | adapter | instance acc. | content class acc. | style class acc. | judges saw |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        inst = x.get("content_inst", x.get("style_inst"))
        lines.append(
            f"| {x['learned']} | {x['other']} | {'yes' if x['adapter'] else 'no (base)'} | {inst:.2f} | "
            f"{x['content_acc']:.2f} | {x['style_acc']:.2f} | "
            + "; ".join(f"{k} x{v}" for k, v in x.get("content_seen", x.get("style_seen", {})).items())
            + " |"
        )
    c, s = r["content"], r["style"]
    lines += [
        "",
        f"- content instance: {c['instance_acc']:.1%} (base {c['base_instance_acc']:.1%}), style class "
        f"{c['style_acc']:.1%}: **{'passed' if r['passed']['content'] else 'not passed'}**",
        f"- style instance: {s['instance_acc']:.1%} (base {s['base_instance_acc']:.1%}), content class "
        f"{s['content_acc']:.1%}: **{'passed' if r['passed']['style'] else 'not passed'}**",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="builtin", help="'builtin' or a world base pipeline folder")
    parser.add_argument(
        "--contents", nargs="*", default=list(CustomizeCheck.contents), help="(none: style half only)"
    )
    parser.add_argument(
        "--styles", nargs="*", default=list(CustomizeCheck.styles), help="(none: content half only)"
    )
    parser.add_argument("--steps", type=int, default=CustomizeCheck.steps)
    parser.add_argument("--lr", type=float, default=CustomizeCheck.lr)
    parser.add_argument("--rank", type=int, default=CustomizeCheck.rank)
    parser.add_argument(
        "--method",
        choices=["stage1", "lora"],
        default=CustomizeCheck.method,
        help="stage1: B4M stage 1 without MCP; lora: a plain LoRA (b4m run lora)",
    )
    parser.add_argument("--targets", nargs="+", help="module-name suffixes to adapt (default: the stage's)")
    parser.add_argument("-n", type=int, default=CustomizeCheck.n, help="images per prompt")
    parser.add_argument("--work", type=Path, help="keep the reference folders and adapters here")
    parser.add_argument("--json", type=Path, help="write the full result here")
    args = parser.parse_args(argv)
    cfg = CustomizeCheck(base=args.base, contents=tuple(args.contents), styles=tuple(args.styles),
                         steps=args.steps, lr=args.lr, rank=args.rank, method=args.method, n=args.n,
                         targets=None if args.targets is None else tuple(args.targets))  # fmt: skip
    t = time.perf_counter()
    r = check_customizability(cfg, work=args.work)
    r["wall_s"] = round(time.perf_counter() - t, 1)
    print(markdown(r))
    print(f"\n{r['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
