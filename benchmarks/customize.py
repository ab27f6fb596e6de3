"""The customizability check of a world base model (``b4m.eval.customize``), as a table.

    python benchmarks/customize.py                                  # the shipped base model
    python benchmarks/customize.py --base runs/base_v3/pipeline --json runs/customize.json
    python benchmarks/customize.py --contents teddy#3 teddy#0 --styles papercut#5 --steps 800   # a quick look

Prints one row per learned instance and asked-for partner, with and without the adapter, then the overall
instance and partner accuracies and whether the bar (instance >= 60 %, partner >= 80 %) is met. A thin shell
over ``b4m base check`` (the same flags; ``--help`` lists them).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from b4m.cli import main as b4m  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return b4m(["base", "check", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
