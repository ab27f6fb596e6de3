"""Retrain the world judges and write ``benchmarks/judges.md``.

    nice -n 10 python benchmarks/judges.py                     # train, save to src/b4m/assets/judges, report
    python benchmarks/judges.py --evaluate-only                # re-evaluate the shipped weights, report

The report gives the command, seed, timings, and accuracy on fresh renders (seeds never used in training),
clean and under the generator-jitter perturbation (blur sigma 0.7, noise std 0.05, 1-2 px shift), for held-in
and held-out concepts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from b4m.eval.judges import DEFAULT_DIR, WorldJudges, evaluate_judges, train_judges

REPORT = Path(__file__).resolve().parent / "judges.md"

_ROWS = (
    ("content instance (class + shape traits)", "content_instance"),
    ("content instance, personal instances", "content_instance_personal"),
    ("style instance (family + rendering traits)", "style_instance"),
    ("style instance, personal instances", "style_instance_personal"),
    ("content (all)", "content"),
    ("content, held-in", "content_held_in"),
    ("content, held-out", "content_held_out"),
    ("style (all)", "style"),
    ("style, held-in", "style_held_in"),
    ("style, held-out", "style_held_out"),
    ("position", "position"),
    ("size", "size"),
    ("background", "background"),
)


def report(metrics: dict, command: str, out_dir: Path) -> str:
    from b4m.world.instances import INSTANCE_CONTENTS, INSTANCE_STYLES, N_CONTENT_CODES, N_STYLE_CODES

    lines = [
        "# World judges: accuracy benchmark",
        "",
        "Stand-ins for DINOv2 (content) and CLIP (style, prompt) on the synthetic world: one small CNN trunk",
        "with content/style identity embeddings, class and instance-trait heads on them, and attribute heads",
        "(`b4m.eval.judges`). Trained on renders of all contents, styles and instances (held-out classes and",
        "personal instances included); evaluated on fresh renders whose seeds training never uses. An instance",
        "counts as recognised only when the class and every trait are right; instance accuracies are over the",
        f"classes with instances ({', '.join(INSTANCE_CONTENTS)}: {N_CONTENT_CODES} codes each; "
        f"{', '.join(INSTANCE_STYLES)}: {N_STYLE_CODES} codes each).",
        "",
        f"Command: `{command}`",
        "",
        f"Weights: `{out_dir}`; machine: {platform.machine()}, torch {torch.__version__}, "
        f"python {platform.python_version()}.",
        "",
    ]
    tr = metrics.get("training")
    if tr:
        lines += [
            "## Training",
            "",
            f"- seed {tr['seed']}, {tr['steps']} steps, batch {tr['batch_size']}, lr {tr['lr']}, "
            f"{tr['threads']} torch threads",
            f"- {tr['unique_training_images']} distinct training renders (pool {tr['pool_size']}, "
            f"{tr['refresh_per_step']} fresh per step)",
            f"- wall time: {tr['train_seconds']:.0f} s training (of which {tr['render_augment_seconds']:.0f} s "
            f"rendering and augmentation), {tr['eval_seconds']:.0f} s evaluation",
            f"- final losses: {json.dumps({k: v for k, v in tr['final_losses'].items() if k != 'step'})}",
            "",
        ]
    clean, pert = metrics["clean"], metrics["perturbed"]
    lines += [
        "## Accuracy on fresh renders",
        "",
        f"{metrics['n_images']} images (evaluation seed {metrics['seed']}): per content and per style the same "
        "number of images, the other factors and all attributes uniform. Perturbed: Gaussian blur sigma 0.7, "
        "a random 1-2 px shift, Gaussian noise std 0.05.",
        "",
        "| judge | clean | perturbed |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {clean[key]:.4f} | {pert[key]:.4f} |" for label, key in _ROWS]
    f = metrics["features"]
    lines += [
        "",
        "## Embedding similarity (clean, mean cosine)",
        "",
        "| pairs | cosine |",
        "|---|---|",
        f"| content features, same content / different style | {f['content_sim_same_content_diff_style']:.4f} |",
        f"| content features, different content | {f['content_sim_diff_content']:.4f} |",
        f"| style features, same style / different content | {f['style_sim_same_style_diff_content']:.4f} |",
        f"| style features, different style | {f['style_sim_diff_style']:.4f} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1 is fastest when other jobs share the cores"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where the weights go")
    parser.add_argument("--n-eval", type=int, default=30, help="evaluation images per content and per style")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the weights in --out")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--instance-share", type=float, default=0.5, help="share of instance-class contents")
    parser.add_argument("--style-share", type=float, default=None, help="share of instance-family styles")
    parser.add_argument("--init-from", type=Path, default=None, help="judges folder to continue from")
    parser.add_argument(
        "--no-balance-classes", action="store_true",
        help="plain class losses (as the judges before v7) instead of inverse sampling-probability weights",
    )  # fmt: skip
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    command = "python benchmarks/judges.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.evaluate_only:
        torch.set_num_threads(args.threads)
        judges = WorldJudges.load(args.out)
        t = time.perf_counter()
        metrics = evaluate_judges(judges, n_per_concept=args.n_eval, seed=args.seed + 1)
        print(f"evaluated in {time.perf_counter() - t:.0f}s")
        metrics["training"] = judges.metrics.get("training")
    else:
        metrics = train_judges(
            args.out, steps=args.steps, seed=args.seed, threads=args.threads, n_eval=args.n_eval, lr=args.lr,
            instance_share=args.instance_share, style_share=args.style_share, init_from=args.init_from,
            balance_classes=not args.no_balance_classes,
        )  # fmt: skip
    print(json.dumps({k: metrics[k] for k in ("clean", "perturbed", "features")}, indent=1))
    args.report.write_text(report(metrics, command.strip(), args.out), encoding="utf-8")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
