"""Train, evaluate and ship the world's base text-to-image model (see benchmarks/base_model.md).

    python benchmarks/base_model.py train --out runs/base            # trains; resumes if killed
    python benchmarks/base_model.py eval --path runs/base/pipeline --guidance 1.5 2 3 4
    python benchmarks/base_model.py grid --path runs/base/pipeline --out docs/images/base_samples.png
    python benchmarks/base_model.py ship --path runs/base/pipeline   # copies into src/b4m/assets/base
    python benchmarks/base_model.py diagnose --path runs/base/pipeline   # where style errors arise

``--set key=value`` overrides any :class:`b4m.models.base.config.BaseModelConfig` field (JSON values). A thin
shell over ``b4m base ...`` (:mod:`b4m.harness.base`): the same subcommands and flags, ``--help`` for each.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from b4m.cli import main as b4m  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return b4m(["base", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
