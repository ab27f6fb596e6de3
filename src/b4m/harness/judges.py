"""Jobs on the world judges: train them (the recipe is :class:`b4m.models.judges.config.JudgesTrainConfig`) or
re-evaluate saved ones, and write the accuracy report (``benchmarks/judges.md``).

The report gives the command, seed, timings, and accuracy on fresh renders (seeds never used in training),
clean and under the generator-jitter perturbation (blur sigma 0.7, noise std 0.05, 1-2 px shift), for held-in
and held-out concepts.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b4m.config import opt
from b4m.models.judges.config import DEFAULT_DIR, WEIGHTS_NAME, JudgesTrainConfig

__all__ = ["JudgesEvalJob", "JudgesTrainJob", "evaluate", "report_markdown", "summary", "train"]

_REPORT_HELP = "write the Markdown report here (the repository's is benchmarks/judges.md)"


@dataclass(frozen=True)
class JudgesTrainJob(JudgesTrainConfig):
    """``b4m judges train``: the training recipe, where the weights go and where the report goes."""

    out: Path = opt(DEFAULT_DIR, "where the weights go (default: the shipped judges, replaced)")
    report: Path | None = opt(None, _REPORT_HELP)
    overwrite: bool = opt(
        False,
        "start over: discard the checkpoint a stopped run left in <out>/checkpoints (by default the same command "
        "continues it; files b4m did not make are never touched)",
    )


@dataclass(frozen=True)
class JudgesEvalJob:
    """``b4m judges eval``: re-evaluate saved judges on fresh renders."""

    path: Path = opt(DEFAULT_DIR, "judges folder to evaluate (default: the shipped judges)")
    n_eval: int = opt(JudgesTrainConfig.n_eval, "evaluation images per content and per style")
    seed: int = opt(
        JudgesTrainConfig.seed, "the training seed: evaluation renders use seed + 1, as after training"
    )
    threads: int = opt(JudgesTrainConfig.threads, "torch threads")
    report: Path | None = opt(None, _REPORT_HELP)


def train(job: JudgesTrainJob, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Train judges into ``job.out`` and write ``job.report`` (``command`` is quoted in it); returns the
    metrics."""
    from b4m.models.judges.train import train_judges

    _check_recipe(job)
    if job.init_from is not None:
        _check_judges("--init-from", job.init_from)
    metrics = train_judges(job.out, job, progress=progress, overwrite=job.overwrite)
    _write_report(job.report, metrics, command, job.out)
    return metrics


def evaluate(job: JudgesEvalJob, command: str = "") -> dict[str, Any]:
    """Evaluate the judges in ``job.path`` (their training record kept) and write ``job.report``."""
    import torch

    from b4m.models.judges.evaluate import evaluate_judges
    from b4m.models.judges.network import WorldJudges

    _check_judges("--path", job.path)
    torch.set_num_threads(job.threads)
    judges = WorldJudges.load(job.path)
    t = time.perf_counter()
    metrics = evaluate_judges(judges, n_per_concept=job.n_eval, seed=job.seed + 1)
    print(f"evaluated in {time.perf_counter() - t:.0f}s")
    metrics["training"] = judges.metrics.get("training")
    _write_report(job.report, metrics, command, job.path)
    return metrics


def _check_recipe(job: JudgesTrainJob) -> None:
    """Settings the training loop cannot run with, refused in one line before any rendering."""
    from b4m.errors import B4MError

    bad = [
        (job.steps < 1, "--steps", job.steps, "give at least 1"),
        (job.batch_size < 2, "--batch-size", job.batch_size, "give at least 2 (half of each batch is colour-jittered)"),
        (job.pool_size < job.batch_size, "--pool-size", job.pool_size,
         f"give at least --batch-size ({job.batch_size}): a batch draws distinct pool images"),
        (not 0 <= job.refresh <= job.pool_size, "--refresh", job.refresh, f"give 0 to --pool-size ({job.pool_size})"),
        (job.n_eval < 1, "--n-eval", job.n_eval, "give at least 1"),
        (job.checkpoint_every < 0, "--checkpoint-every", job.checkpoint_every, "give 0 (none) or a number of steps"),
    ]  # fmt: skip
    for failed, flag, value, hint in bad:
        if failed:
            raise B4MError(f"{flag} {value}: {hint}")


def _check_judges(flag: str, folder: Path) -> None:
    from b4m.errors import B4MError

    if not (Path(folder) / WEIGHTS_NAME).is_file():
        raise B4MError(f"{flag} {folder}: no judges there ({WEIGHTS_NAME}); train them with b4m judges train")


def summary(metrics: dict[str, Any]) -> str:
    """The clean and perturbed accuracies and the feature similarities of ``metrics``, as indented JSON."""
    return json.dumps({k: metrics[k] for k in ("clean", "perturbed", "features")}, indent=1)


def _write_report(path: Path | None, metrics: dict[str, Any], command: str, weights: Path) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(report_markdown(metrics, command.strip(), weights), encoding="utf-8")
        print(f"wrote {path}")


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


def report_markdown(metrics: dict[str, Any], command: str, out_dir: Path) -> str:
    """The judges' accuracy report (``benchmarks/judges.md``) for ``metrics`` from training or evaluation."""
    import torch

    from b4m.world.instances import INSTANCE_CONTENTS, INSTANCE_STYLES, N_CONTENT_CODES, N_STYLE_CODES

    lines = [
        "# World judges: accuracy benchmark",
        "",
        "Stand-ins for DINOv2 (content) and CLIP (style, prompt) on the synthetic world: one small CNN trunk",
        "with content/style identity embeddings, class and instance-trait heads on them, and attribute heads",
        "(`b4m.models.judges`). Trained on renders of all contents, styles and instances (held-out classes and",
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
