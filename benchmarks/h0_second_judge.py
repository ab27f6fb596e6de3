"""H0 (issue 27): do the bench's judge verdicts on generated images agree with a second, independently seeded judge?

The bench scores every generated image with the shipped world judges (judge A). This script cuts each run's
``samples.png`` back into its images and scores them again through the bench's own per-image scorer
(:class:`b4m.eval.scoring.WorldScorer`), once with judge A and once with a second judges folder (judge B), for
the pair's content and style. Per row (method / arm, pooled over pairs) and overall it reports the rate of
``content_inst`` (the judge names the personal content instance) by each judge, their raw agreement and
Cohen's kappa, the same for ``style_inst``, and per pair whether the paired difference B4M minus LoRA in
content-instance rate has the same sign under both judges. It also reports how often judge A on the PNG agrees
with the verdict the bench recorded in ``done.json`` (on the un-quantised images): what the 8-bit PNG round trip
changes (and, if the shipped judges were retrained since the bench ran, that change too).

Train the second judge first (the defaults from random weights, only the seed differs from the recipe's; about
two hours at one thread), then run this script on a bench output folder:

    b4m judges train --seed 1 --out runs/judges_seed1 --report runs/judges_seed1.md
    python benchmarks/h0_second_judge.py --judges runs/judges_seed1 --bench /work/dev/bench

The shipped judges are themselves a continuation of earlier weights (``benchmarks/judges.md``), so judge B differs
from judge A in its seed and in its training history: an independent second reader, not a replicate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

INSTANCE = ("content_inst", "style_inst")
CLASS = ("content_acc", "style_acc")
REPORT = Path(__file__).resolve().parent / "h0_second_judge.md"


# ------------------------------------------------------------------------------------------------- the grid


def cut_grid(grid: Any, n: int, ncols: int) -> np.ndarray:
    """The ``n`` images of a grid made by :func:`b4m.world.sheet.image_grid` (``ncols`` columns, no labels), as an
    ``(n, H, W, 3)`` uint8 array: the exact inverse of its layout (a ``_PAD`` white border around and between
    equal cells, row-major). Raises if the grid's size or its white gaps do not fit that layout."""
    from b4m.world.sheet import _PAD

    sheet = np.asarray(grid.convert("RGB") if hasattr(grid, "convert") else grid, dtype=np.uint8)
    if sheet.ndim != 3 or sheet.shape[-1] != 3:
        raise ValueError(f"grid must be an RGB image; got shape {sheet.shape}")
    if n < 1 or ncols < 1:
        raise ValueError(f"n={n} and ncols={ncols} must be >= 1")
    nrows = (n + ncols - 1) // ncols
    height, width = sheet.shape[:2]
    w, rest_w = divmod(width - _PAD, ncols)
    h, rest_h = divmod(height - _PAD, nrows)
    w, h = w - _PAD, h - _PAD
    if rest_w or rest_h or w < 1 or h < 1:
        raise ValueError(f"a {width}x{height} grid is not {nrows} rows x {ncols} columns of equal cells")
    gaps = np.ones((height, width), dtype=bool)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for k in range(n):
        x = _PAD + (k % ncols) * (w + _PAD)
        y = _PAD + (k // ncols) * (h + _PAD)
        out[k] = sheet[y : y + h, x : x + w]
        gaps[y : y + h, x : x + w] = False
    if not (sheet[gaps] == 255).all():
        raise ValueError(
            f"the {width}x{height} grid's gaps are not white: not {nrows} x {ncols} cells of {w}x{h}"
        )
    return out


# ----------------------------------------------------------------------------------------------- agreement


def kappa(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Cohen's kappa of two raters' 0/1 verdicts on the same items: ``(p_o - p_e) / (1 - p_e)``, with ``p_o`` the
    observed agreement and ``p_e = pA pB + (1 - pA)(1 - pB)`` the agreement expected by chance from each rater's
    own rate. ``None`` when ``p_e = 1`` (both raters put every item in the same one class: 0/0, undefined; their
    agreement is then 1)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"kappa needs two equal non-empty 1-D arrays; got {x.shape} and {y.shape}")
    if not np.isin(x, (0.0, 1.0)).all() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("kappa needs 0/1 verdicts")
    p_o = float(np.mean(x == y))
    pa, pb = float(x.mean()), float(y.mean())
    p_e = pa * pb + (1.0 - pa) * (1.0 - pb)
    if p_e >= 1.0 - 1e-12:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def agreement(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``n``, each rater's rate of 1, their raw agreement and Cohen's kappa (:func:`kappa`)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return {"n": len(x), "rate_a": float(x.mean()), "rate_b": float(y.mean()),
            "agree": float(np.mean(x == y)), "kappa": kappa(x, y)}  # fmt: skip


# ------------------------------------------------------------------------------------------------- scoring


def bench_runs(bench: Path) -> list[Path]:
    """The run folders of a bench output folder that hold both ``done.json`` and ``samples.png``, sorted."""
    return sorted(
        d
        for d in (bench / "runs").glob("*/*")
        if d.is_dir() and (d / "done.json").is_file() and (d / "samples.png").is_file()
    )


def _refs(bench: Path, pair: str, which: str, resolution: int) -> Any:
    from b4m.bench.runs import slug
    from b4m.data.folders import load_images, read_image_folder

    folder = bench / "data" / slug(pair) / which
    if not folder.is_dir():
        return None
    return load_images(read_image_folder(folder).paths, resolution)


def score_run(folder: Path, bench: Path, scorers: dict[str, Any]) -> dict[str, Any] | None:
    """One run's verdicts: ``{"spec", "refs", "recorded": per_image of done.json, <scorer name>: per_image on the
    images cut from samples.png}``; ``None`` for a run the world's judges do not score (a ``--pairs-file`` run,
    scored by real encoders)."""
    import torch
    from PIL import Image

    record = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    spec = record["spec"]
    if spec.get("track") == "pairs-file":
        return None
    sample = spec["sample"]
    seeds, prompts = sample["seeds"], sample["prompts"]
    with Image.open(folder / "samples.png") as im:
        cells = cut_grid(im, len(prompts) * seeds, seeds)
    images = torch.from_numpy(cells).permute(0, 3, 1, 2).float() / 255.0  # as the bench's float images
    content, _, style = spec["pair"].partition(":")
    res = images.shape[-1]
    content_refs, style_refs = (
        _refs(bench, spec["pair"], "content", res),
        _refs(bench, spec["pair"], "style", res),
    )
    # without the exported references the continuous scores are meaningless; the 0/1 verdicts compared here
    # read the generated images alone
    refs = content_refs is not None and style_refs is not None
    if not refs:
        content_refs = style_refs = images
    attributes = [a for a in sample["attributes"] for _ in range(seeds)]
    score_prompts = [q for q in sample.get("score_prompts", prompts) for _ in range(seeds)]
    out: dict[str, Any] = {"spec": spec, "refs": refs, "recorded": record["per_image"]}
    for name, scorer in scorers.items():
        out[name] = scorer.per_image(
            images, content_refs, style_refs, content, style, attributes, score_prompts
        )
    return out


def row_of(spec: dict[str, Any]) -> tuple[str, str, int | None]:
    return spec["method"], spec["arm"], spec.get("train_seed")


def row_label(row: tuple[str, str, int | None]) -> str:
    method, arm, seed = row
    return f"{method}/{arm}" + ("" if seed is None else f" (train seed {seed})")


def _row_order(row: tuple[str, str, int | None]) -> tuple:
    method, arm, seed = row
    return (method != "base", method == "b4m", method, arm != "full", arm, -1 if seed is None else seed)


def paired_verdicts(
    runs: list[dict[str, Any]], reference: tuple[str, str, None] = ("b4m", "full", None), n_boot: int = 2000
) -> list[dict[str, Any]]:
    """The bench's paired analysis of the instance verdicts, once per judge: for every other row (main runs only,
    not the training-seed replicates) on the pairs it shares with ``reference``, the mean over pairs of
    ``reference - row`` in ``content_inst`` and ``style_inst`` with its two-level paired bootstrap interval, the
    sign-flip p, Holm across the rows and the verdict (:mod:`b4m.eval.paired`, the margins declared for the test
    suite), from judge A's and from judge B's per-image verdicts. The question: does the decision depend on the
    judge?"""
    from b4m.eval.paired import MARGINS, holm, paired_difference, verdict

    per: dict[tuple[tuple[str, str, int | None], str], dict[str, Any]] = {}
    for r in runs:
        if "content_inst" in r["A"] and "content_inst" in r["B"] and row_of(r["spec"])[2] is None:
            per[(row_of(r["spec"]), r["spec"]["pair"])] = r
    ref_pairs = sorted(p for k, p in per if k == reference)
    others = sorted({k for k, _ in per if k != reference}, key=_row_order)
    out = [{"row": list(k), "label": row_label(k), "pairs": [p for p in ref_pairs if (k, p) in per]}
           for k in others]  # fmt: skip
    out = [o for o in out if o["pairs"]]
    for judge in ("A", "B"):
        diffs = [
            paired_difference(
                [per[(reference, p)][judge] for p in o["pairs"]],
                [per[(tuple(o["row"]), p)][judge] for p in o["pairs"]],
                metrics=INSTANCE,
                n_boot=n_boot,
            )
            for o in out
        ]
        for metric in INSTANCE:
            for o, d, p_adj in zip(out, diffs, holm([d[metric]["p"] for d in diffs]), strict=True):
                o.setdefault(metric, {})[judge] = {
                    "diff": d[metric]["diff"], "ci95": d[metric]["ci95"], "p_holm": p_adj,
                    "verdict": verdict(d[metric], p_adj, MARGINS[metric]),
                }  # fmt: skip
    return out


def measure(bench: Path, judges_b: Path, judges_a: Path | None = None) -> dict[str, Any]:
    """Score every run of ``bench`` with judges A (``judges_a``; default the shipped ones) and B; returns the rows
    (per method / arm / training seed, pooled over pairs), the overall pool, the PNG round trip's agreement with
    the recorded verdicts, and the per-pair sign of B4M minus LoRA in content-instance rate."""
    from b4m.eval.scoring import WorldScorer
    from b4m.methods.cache import assets_fingerprint
    from b4m.models.judges.network import WorldJudges

    scorers = {"A": WorldScorer(WorldJudges.load(judges_a)), "B": WorldScorer(WorldJudges.load(judges_b))}
    fingerprint = assets_fingerprint()
    runs, skipped = [], 0
    for folder in bench_runs(bench):
        scored = score_run(folder, bench, scorers)
        if scored is None:
            skipped += 1
        else:
            runs.append(scored)
    if not runs:
        raise SystemExit(f"{bench}: no world run folder with done.json and samples.png under runs/")

    def pooled(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": len(chosen), "pairs": len({r["spec"]["pair"] for r in chosen})}
        for metric in INSTANCE + CLASS:
            have = [r for r in chosen if metric in r["A"] and metric in r["B"]]
            if not have:
                out[metric] = None
                continue
            a = np.concatenate([r["A"][metric] for r in have])
            out[metric] = agreement(a, np.concatenate([r["B"][metric] for r in have]))
            out[metric]["pairs"] = len({r["spec"]["pair"] for r in have})
            rec = [r for r in have if metric in r["recorded"]]
            if rec:
                pa = np.concatenate([r["A"][metric] for r in rec])
                out[metric]["agree_recorded"] = float(np.mean(pa == np.concatenate([r["recorded"][metric] for r in rec])))  # fmt: skip
        return out

    groups: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(row_of(r["spec"]), []).append(r)
    rows = [
        {"row": list(k), "label": row_label(k), **pooled(groups[k])} for k in sorted(groups, key=_row_order)
    ]

    rate = {(row_of(r["spec"]), r["spec"]["pair"]): {j: float(np.mean(r[j]["content_inst"])) for j in ("A", "B")}
            for r in runs if "content_inst" in r["A"]}  # fmt: skip
    lora = ("lora", "full", None)
    signs = []
    for key in sorted((k for k in groups if k[0] == "b4m" and k[2] is None), key=_row_order):
        pairs = [p for (k, p) in rate if k == key and (lora, p) in rate]
        per_pair = []
        for p in sorted(pairs):
            d = {j: rate[(key, p)][j] - rate[(lora, p)][j] for j in ("A", "B")}
            per_pair.append({"pair": p, "diff_a": d["A"], "diff_b": d["B"],
                             "same_sign": bool(np.sign(d["A"]) == np.sign(d["B"]))})  # fmt: skip
        if per_pair:
            signs.append({"row": list(key), "label": row_label(key), "pairs": per_pair,
                          "same": sum(p["same_sign"] for p in per_pair)})  # fmt: skip
    return {
        "bench": str(bench),
        "judges_a": "shipped" if judges_a is None else str(judges_a),
        "judges_b": str(judges_b),
        "runs": len(runs),
        "skipped_pairs_file_runs": skipped,
        "runs_without_refs": sum(not r["refs"] for r in runs),
        "runs_on_other_judges": sum(r["spec"].get("assets") not in (None, fingerprint) for r in runs),
        "images": sum(len(r["A"]["content"]) for r in runs),
        "rows": rows,
        "overall": pooled(runs),
        "signs": signs,
        "verdicts": paired_verdicts(runs),
    }


# -------------------------------------------------------------------------------------------------- report


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"


def _cells(stats: dict[str, Any] | None) -> list[str]:
    if stats is None:
        return ["0", "0", "—", "—", "—", "—", "—"]
    return [str(stats["pairs"]), str(stats["n"]), _f(stats["rate_a"]), _f(stats["rate_b"]), _f(stats["agree"]), _f(stats["kappa"]),
            _f(stats.get("agree_recorded"))]  # fmt: skip


def report(res: dict[str, Any], command: str, wall: float) -> str:
    head = ["pairs", "n", "A rate", "B rate", "agree", "kappa", "A vs done.json"]
    table_head = lambda first: [f"| {first} | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]  # noqa: E731
    notes = [
        f"Bench `{res['bench']}`: {res['runs']} runs, {res['images']} images, cut from each run's `samples.png` "
        "and scored through the bench's per-image scorer (`b4m.eval.scoring.WorldScorer`) by judge A "
        f"(`{res['judges_a']}`) and judge B (`{res['judges_b']}`)."
    ]
    if res["skipped_pairs_file_runs"]:
        notes.append(
            f"{res['skipped_pairs_file_runs']} `--pairs-file` runs skipped (scored by real encoders)."
        )
    if res["runs_without_refs"]:
        notes.append(f"{res['runs_without_refs']} runs had no exported references under `data/` (only their "
                     "continuous scores need them; those are not compared here).")  # fmt: skip
    if res["runs_on_other_judges"]:
        notes.append(f"{res['runs_on_other_judges']} runs were scored by the bench with other shipped assets than "
                     "today's (their `assets` fingerprint differs): their 'A vs done.json' column also measures "
                     "that change.")  # fmt: skip
    lines = [
        "# H0: do the bench's judge verdicts agree with a second, independently seeded judge?",
        "",
        f"Command: `{command}` ({wall:.0f} s).",
        "",
        " ".join(notes),
        "",
        "Columns: the pairs and images with the verdict (a class without personal instances has none); the rate of the verdict (1: the judge names the target) by judge A and by judge B; "
        "their raw agreement and Cohen's kappa (— : undefined, both judges gave every image the same verdict); "
        "'A vs done.json': judge A on the 8-bit PNG against the verdict the bench recorded on the float images.",
        "",
    ]
    for metric, title in (("content_inst", "Content instance (`content_inst`)"),
                          ("style_inst", "Style instance (`style_inst`)")):  # fmt: skip
        lines += [f"## {title}", "", *table_head("row (method/arm, pooled over pairs)")]
        for r in res["rows"]:
            lines.append(f"| {r['label']} | " + " | ".join(_cells(r[metric])) + " |")
        lines += ["| **overall** | " + " | ".join(_cells(res["overall"][metric])) + " |", ""]
    lines += [
        "## Every 0/1 verdict, overall (instance; class: `content_acc`, `style_acc`)",
        "",
        *table_head("verdict"),
    ]
    for metric in INSTANCE + CLASS:
        lines.append(f"| `{metric}` | " + " | ".join(_cells(res["overall"][metric])) + " |")
    lines += [
        "",
        "## Paired difference B4M minus LoRA in content-instance rate: same sign under both judges?",
        "",
        "Per pair, each B4M row's content-instance rate minus `lora/full`'s on the same pair (main runs, not the "
        "training-seed replicates), by judge A and by judge B; a zero difference has sign 0.",
        "",
    ]
    if not res["signs"]:
        lines += ["No pair has both a B4M row and `lora/full` with a content instance.", ""]
    else:
        lines += ["| B4M row | pairs | same sign | mean A | mean B |", "|---|---:|---:|---:|---:|"]
        for s in res["signs"]:
            mean = {j: float(np.mean([p[f"diff_{j}"] for p in s["pairs"]])) for j in "ab"}
            lines.append(
                f"| {s['label']} | {len(s['pairs'])} | {s['same']} | {mean['a']:+.3f} | {mean['b']:+.3f} |"
            )
        full = [s for s in res["signs"] if s["row"][:2] == ["b4m", "full"]]
        if full:
            lines += ["", "Per pair, b4m/full minus lora/full:", "", "| pair | A | B | same sign |",
                      "|---|---:|---:|---|"]  # fmt: skip
            lines += [f"| {p['pair']} | {p['diff_a']:+.3f} | {p['diff_b']:+.3f} | {'yes' if p['same_sign'] else 'NO'} |"
                      for p in full[0]["pairs"]]  # fmt: skip
        lines.append("")
    if res["verdicts"]:
        lines += [
            "## The paired verdicts, B4M (`b4m/full`) minus each row, under each judge",
            "",
            "The bench's analysis (`b4m.eval.paired`: mean over pairs of the per-pair difference, 95 % two-level "
            "paired bootstrap, sign-flip p, Holm across the rows, the declared ±0.1 equivalence margin) of the "
            "instance verdicts, once from judge A's and once from judge B's per-image verdicts (main runs).",
            "",
            "| row | pairs | content inst., A | verdict A | content inst., B | verdict B | same | style inst., A "
            "| verdict A | style inst., B | verdict B | same |",
            "|---|---:|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in res["verdicts"]:
            cells = []
            for metric in INSTANCE:
                a, b = v[metric]["A"], v[metric]["B"]
                cells += [
                    _diff(a),
                    a["verdict"],
                    _diff(b),
                    b["verdict"],
                    "yes" if a["verdict"] == b["verdict"] else "NO",
                ]
            lines.append(f"| {v['label']} | {len(v['pairs'])} | " + " | ".join(cells) + " |")
        same = {
            m: sum(v[m]["A"]["verdict"] == v[m]["B"]["verdict"] for v in res["verdicts"]) for m in INSTANCE
        }
        lines += ["", f"Same verdict under both judges: content instance {same['content_inst']} of "
                      f"{len(res['verdicts'])} rows, style instance {same['style_inst']} of {len(res['verdicts'])}.", ""]  # fmt: skip
    return "\n".join(lines)


def _diff(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    return f"{d['diff'] + 0.0:+.2f} [{lo + 0.0:+.2f}, {hi + 0.0:+.2f}]"  # + 0.0: no "-0.00"


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judges", type=Path, required=True, help="the second judges folder (judge B)")
    parser.add_argument("--bench", type=Path, required=True, help="a bench output folder (with runs/)")
    parser.add_argument(
        "--judges-a", type=Path, default=None, help="judge A's folder (default: the shipped judges)"
    )
    parser.add_argument("--md", type=Path, default=REPORT, help=f"the report (default {REPORT.name} here)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = measure(args.bench, args.judges, args.judges_a)
    text = report(res, " ".join(["python benchmarks/h0_second_judge.py", *argv]), time.perf_counter() - t0)
    args.md.write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(text)
    return args.md


if __name__ == "__main__":
    main()
