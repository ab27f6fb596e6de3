"""``b4m convert`` / ``b4m export``: one LoRA file rewritten in another spelling, with the same ``ΔW``.

Both directions keep float32 factors at scale 1 (a kohya file's ``alpha / rank`` is folded into ``U`` on
read), so ``ΔW = U V`` of every layer survives a round trip exactly; the b4m header travels with the file.
"""

from __future__ import annotations

from pathlib import Path

from b4m.adapters.codec import load_lora, save_kohya, save_lora
from b4m.adapters.flux_keys import is_flux_layout
from b4m.checks import check_out_file
from b4m.errors import B4MError
from b4m.owned import check_file, record_file

__all__ = ["SPELLINGS", "convert"]

SPELLINGS = ("kohya", "diffusers")


def convert(
    src: str | Path,
    out: str | Path,
    to: str,
    version: str | None = None,
    overwrite: bool = False,
    option: str = "OUT",
) -> Path:
    """Write the LoRA ``src`` to ``out`` in ``to`` spelling (``kohya`` or ``diffusers``); returns ``out``.

    ``version`` is kohya's ``ss_base_model_version`` (default: :func:`~b4m.adapters.codec.kohya_base_version`).
    """
    if to not in SPELLINGS:
        raise B4MError(f"--to {to}: give one of {', '.join(SPELLINGS)}")
    src, out = Path(src), Path(out)
    check_out_file(out, option)
    if out.exists() and out.resolve() == src.resolve():
        raise B4MError(f"{option} {out}: is the input file; choose another path")
    check_file(out, option, overwrite)
    lora = load_lora(src)
    if to == "kohya":
        save_kohya(out, lora.factors, base_model_version=version, meta=lora.meta)
    else:
        prefix = "transformer" if is_flux_layout(lora.factors) else "unet"  # FluxPipeline reads transformer.*
        save_lora(out, lora.factors, meta=lora.meta, prefix=prefix)
    return record_file(out)
