"""``b4m info``, ``b4m export`` and ``b4m convert``: what an adapter file holds, and the file for other tools."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from b4m.cli.common import DefaultsFormatter, ExamplesFormatter, examples

_BASE_VERSION_HELP = (
    "kohya ss_base_model_version (default: from the file: SDXL, SD 1.x or SD 2.x by its cross-attention "
    "width or recorded base model; A1111 lists SDXL LoRAs only if it starts with sdxl_)"
)


def _cmd_info(args: argparse.Namespace) -> int:
    from b4m.diffusion.sampling import describe

    for path in args.files:
        print(describe(path))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from b4m.api import export

    result = export(
        args.adapter,
        args.out,
        content_scale=args.content_scale,
        style_scale=args.style_scale,
        split=args.split,
        base_model_version=args.base_model_version,
        overwrite=args.overwrite,
    )
    if not isinstance(result, list):
        print(result)
        return 0
    print(
        f"wrote {len(result)} ordinary LoRAs into {args.out}; load them together, each at its strength, for a "
        "content strength C and a style strength S:"
    )
    width = max(len(str(f.path)) for f in result)
    for f in result:
        print(f"  {str(f.path).ljust(width)}  strength {f.part.strength.ljust(3)}  {f.part.holds}")
    names = {f.part.name: f.path.stem for f in result}
    example = " ".join(
        f"<lora:{names[p]}:{v}>"
        for p, v in (("style", "0.5"), ("content", "1"), ("interaction", "0.5"), ("frozen", "1"))
        if p in names
    )
    print(f"e.g. C = 1, S = 0.5 in A1111: {example}; in ComfyUI: one LoraLoaderModelOnly per file, chained")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from b4m.adapters.convert import convert

    print(convert(args.adapter, args.out, args.to, args.base_model_version, args.overwrite, "OUT"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="show what an adapter file holds (method, rank, rho, basis id, trigger words)"
    )
    p.add_argument("files", nargs="+", type=Path)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "export",
        help="write an adapter as an ordinary LoRA for ComfyUI / A1111 (kohya keys); bake in content and style "
        "strengths, or split it into parts",
        description=textwrap.fill(
            "Write FILE as an ordinary LoRA in kohya spelling (ComfyUI, A1111 and diffusers read it; FLUX "
            "files with Black Forest Labs' names). A b4m adapter has two knobs other tools do not know: content "
            "strength C scales its content part B, style strength S its style part D, so each layer's update "
            "[[AC, AD], [BC, BD]] becomes [[AC, S*AD], [C*BC, C*S*BD]] (what 'b4m generate --content-scale "
            "--style-scale' draws). --content-scale/--style-scale bake one pair into the file; --split writes the "
            "blocks as separate LoRAs that, loaded together at strengths S, C and C*S, give any pair in any tool.",
            100,
        ),
        epilog=examples(
            "b4m export runs/fused/adapter.safetensors --out teddy_paper.safetensors",
            "b4m export runs/fused/adapter.safetensors --out teddy_paper_s06.safetensors --style-scale 0.6",
            "b4m export runs/fused/adapter.safetensors --split --out parts/   # parts/adapter_style.safetensors ...",
        ),
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("adapter", type=Path, metavar="FILE", help="LoRA file (diffusers, peft or kohya spelling)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .safetensors file (with --split: a folder for the parts)",
    )
    p.add_argument(
        "--content-scale",
        type=float,
        default=None,
        metavar="C",
        help="bake this content strength into the file: B is scaled by C (blocks BC by C, BD by C*S); 1 keeps "
        "the trained strength, 0 removes the content; needs a b4m adapter (its header's rho and basis)",
    )
    p.add_argument(
        "--style-scale",
        type=float,
        default=None,
        metavar="S",
        help="bake this style strength into the file: D is scaled by S (blocks AD by S, BD by C*S); needs a b4m "
        "adapter",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="write FILE's parts into the folder --out as ordinary LoRAs: <name>_style (block AD, load at "
        "strength S), <name>_content (BC, at C), <name>_interaction (BD, at C*S), and <name>_frozen (AC, at 1) "
        "where AC is not zero (--orth approx/none); needs a b4m adapter",
    )
    p.add_argument("--base-model-version", default=None, help=_BASE_VERSION_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace files that exist")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "convert",
        help="rewrite a LoRA file in kohya (ComfyUI / A1111) or diffusers spelling, losslessly",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("adapter", type=Path, metavar="IN", help="LoRA file (diffusers, peft or kohya spelling)")
    p.add_argument("out", type=Path, metavar="OUT", help="output .safetensors file")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"], help="spelling to write")
    p.add_argument("--base-model-version", default=None, help=_BASE_VERSION_HELP)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_convert)
