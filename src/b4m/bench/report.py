"""The bench's reports, built from its results alone: ``results.md`` and one self-contained ``report.html``.

``results.md`` follows the layout of the B4M paper's Table 1 (Xu et al., ACM TOG 2025): one table per track, rows
= methods and ablation arms (the base model, prompt only, first as the floor), columns = metrics, each
``value ± half-width of its 95 % bootstrap interval``; then the paired comparisons of B4M with every other row
(:mod:`b4m.eval.paired`), the training budgets per row (:mod:`b4m.bench.budgets`: image-steps per pair, measured
fit wall and CPU seconds) and one table per pair. ``report.html`` adds, as inline base64 PNGs (no file next to it
is needed): per track bar charts of every metric with their intervals, a content-vs-style scatter, the rho curve
(the paper's Fig. 11: content and style alignment against rho), a forest plot of the paired comparisons (per
verdict metric the mean difference and its 95 % interval against 0 and the equivalence margins, with the
verdict) and an identity scatter (content-instance against style-instance accuracy, per row and per pair); then
per pair an image grid (references | base | each method, 32 px images enlarged with nearest-neighbour scaling).
Results written before a part existed (no comparisons, no budgets, no CPU seconds) still give both reports,
without it.
"""

from __future__ import annotations

import base64
import html
import io
from fractions import Fraction
from pathlib import Path
from typing import Any

from b4m.bench.catalogue import ARMS_OF, METRICS, SIZE_HELP

__all__ = ["HEADERS", "write_html", "write_markdown"]

HEADERS: dict[str, str] = {
    "content": "content",
    "style": "style",
    "prompt": "prompt",
    "mean": "mean",
    "hmean": "h-mean",
    "style_csd": "style (CSD)",
    "content_centroid": "content (centroid)",
    "style_centroid": "style (centroid)",
    "style_csd_centroid": "style CSD (centroid)",
    "content_acc": "content acc.",
    "style_acc": "style acc.",
    "content_inst": "content inst.",
    "style_inst": "style inst.",
    "leak_content": "content leak",
    "leak_content_acc": "content leak acc.",
    "leak_style": "style leak",
    "leak_style_acc": "style leak acc.",
}
TRACKS = {"instance": "personal instances", "new-class": "new classes", "pairs-file": "your pairs"}
SCALE = 4


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    lo, hi = row.get("ci", {}).get(key, (value, value))
    return f"{value:.3f} ± {(hi - lo) / 2:.3f}"


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in METRICS if any(r.get(k) is not None for r in rows)]


def _md_table(rows: list[dict[str, Any]], first: str) -> list[str]:
    cols = _columns(rows)
    lines = [
        f"| {first} | " + " | ".join(HEADERS[c] for c in cols) + " | n |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for r in rows:
        name = r["label"] if first == "method" else f"{r['label']} ({r['pair']})"
        lines.append(f"| {name} | " + " | ".join(_cell(r, c) for c in cols) + f" | {r['n']} |")
    return lines


def _diff_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    lo, hi = d["ci95"]
    p = d.get("p_holm", d["p"])
    tag = f" **{d['verdict']}**" if "verdict" in d else ""
    return f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={p:.2g}{tag}"


def _md_comparisons(comparisons: list[dict[str, Any]]) -> list[str]:
    """Per track: B4M minus each other row, paired over the pairs both ran (:mod:`b4m.eval.paired`)."""
    from b4m.eval.paired import MARGINS

    lines: list[str] = ["", "## Paired comparisons"] if comparisons else []
    for entry in comparisons:
        cols = [m for m in ("hmean", "content_inst", "style_inst")
                if any(m in t["diff"] for t in entry["comparators"])]  # fmt: skip
        if not cols:
            continue
        lines += [
            "",
            f"### Paired: {entry['reference']} minus each row ({TRACKS.get(entry['track'], entry['track'])})",
            "",
            "Mean over pairs of the per-pair difference, its 95 % paired bootstrap interval (pairs, then the same "
            "prompt x seed cells for both), the sign-flip p over pairs, Holm-adjusted across the rows; "
            "a verdict needs p < 0.05, 'equivalent' a 90 % interval inside "
            + ", ".join(f"±{MARGINS[m]:g} {HEADERS[m]}" for m in cols)
            + ".",
            "",
            "| compared with | pairs | " + " | ".join(f"Δ {HEADERS[m]}" for m in cols) + " |",
            "|---|---:|" + "---|" * len(cols),
        ]
        for t in entry["comparators"]:
            cells = " | ".join(_diff_cell(t["diff"].get(m)) for m in cols)
            lines.append(f"| {t['label']} | {len(t['pairs'])} | {cells} |")
        ret = entry.get("identity_retention")
        if ret and ret["ratio"] is not None:
            lo, hi = ret["ci95"]
            per = ", ".join(f"{p}: {f:.2f}/{a:.2f}" for p, f, a in
                            zip(ret["pairs"], ret["fused"], ret["content_alone"], strict=True))  # fmt: skip
            lines += ["", f"Identity retention (fused content inst. / content adapter alone, summed over pairs): "
                      f"**{ret['ratio']:.2f}** [{lo:.2f}, {hi:.2f}] ({per})."]  # fmt: skip
    return lines


def _md_seed_variance(entries: list[dict[str, Any]]) -> list[str]:
    """The training-seed replicates: per row, the within-pair SD across training seeds beside the between-pair SD,
    then each replicated pair's values by seed."""
    if not entries:
        return []
    seeds = ", ".join(str(s) for s in entries[0]["seeds"])
    lines = ["", "## Training-seed variance", "",
             f"The first {len(entries[0]['pairs'])} pairs trained again at seeds {seeds} (references, prompts and "
             "sampling noise unchanged). Within = the SD of a pair's value across training seeds (pooled over the "
             "replicated pairs); between = the SD over all the track's pairs at the bench's seed. A within SD well "
             "below the between SD means the pairs, not the training seed, carry the spread.", "",
             "| row | track | pairs | h-mean within / between | content inst. within / between | "
             "style inst. within / between |", "|---|---|---:|---|---|---|"]  # fmt: skip

    def sd(e: dict[str, Any], k: str) -> str:
        w, b = e["within_sd"].get(k), e["between_sd"].get(k)
        return "–" if w is None else f"{w:.3f} / {'–' if b is None else f'{b:.3f}'}"

    for e in entries:
        lines.append(f"| {e['label']} | {e['track']} | {len(e['pairs'])} of {e['n_pairs']} | {sd(e, 'hmean')} | "
                     f"{sd(e, 'content_inst')} | {sd(e, 'style_inst')} |")  # fmt: skip
    lines += ["", "Per replicated pair, the values at the bench's seed, then each replicate seed:", ""]
    for e in entries:
        for pair, values in e["per_pair"].items():
            cells = "; ".join(f"{HEADERS.get(k, k)} {', '.join(f'{v:+.2f}' if e['minus'] else f'{v:.2f}' for v in vs)}"
                              for k, vs in values.items())  # fmt: skip
            lines.append(f"- {e['label']}, {pair}: {cells}")
    return lines


BUDGET_CAPTION = (
    "Training sample-gradients per pair, as image-steps: the images of every training step, summed over the "
    "row's own training and every sub-fit it is built on (a merge's two source LoRAs at 1 image a step; B4M's two "
    "stage-1 runs at 4 images a step, the target and the built-in world's 3 auxiliary samples (counted so for a "
    "--pairs-file too, as --dry-run does), or 1 without MCP, and its stage 2 at 2; rp-sgd's tuning fits at each "
    "candidate rate), from the runs' training settings. † an arm that only samples a part of B4M's fit trains "
    "nothing itself: its row shows the budget of the fit it samples. Fit wall and CPU seconds (this process's CPU "
    "time, all threads) are the measured means per pair over the runs that recorded them; a sub-fit shared "
    "between runs (the sources, B4M's stage 1, the fit a sampled arm reads) is paid by the first run that trains "
    "it and read from the cache by the others, so the seconds depend on the run order and the image-steps do not."
)


def _seconds(row: dict[str, Any], key: str) -> str:
    value, runs = row.get(key), row.get(f"{key}_runs", 0)
    if value is None:
        return "–"
    return f"{value:.1f}" + ("" if runs == len(row["pairs"]) else f" ({runs} of {len(row['pairs'])} runs)")


def _md_budgets(budgets: list[dict[str, Any]]) -> list[str]:
    """Per track: each row's training image-steps per pair, what they are made of and its fit seconds."""
    lines: list[str] = ["", "## Budgets", "", BUDGET_CAPTION] if budgets else []
    for entry in budgets:
        lines += [
            "",
            f"### Budgets: {TRACKS.get(entry['track'], entry['track'])}",
            "",
            "| row | pairs | image-steps per pair | of which | fit wall s per pair | fit CPU s per pair |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for r in entry["rows"]:
            parts = " + ".join(
                f"{f['fit']}" + (f" {f['steps']}×{f['per_step']}" if f["kind"] != "training-free" else "")
                for f in r["fits"]
            )
            name = r["label"] + (" †" if r["sampling_only"] else "")
            lines.append(f"| {name} | {len(r['pairs'])} | {r['image_steps']:,.0f} | {parts or '–'} | "
                         f"{_seconds(r, 'fit_s')} | {_seconds(r, 'fit_cpu_s')} |")  # fmt: skip
    return lines


def write_markdown(results: dict[str, Any]) -> str:
    """``results.md``: per track a Table-1 style table of the aggregated rows, the paired comparisons, the
    budgets, then one table per pair."""
    agg = results["aggregated"]
    n_prompts = len(next(iter(results["prompts"].values()), [])) or 5
    scoring = results.get("scoring") or (
        "Scores are the world judges' (b4m.eval.scoring): content / style = cosine to the references' centroid "
        "embedding, prompt = fraction of asked attributes present, acc. = the judge names the target class, "
        "inst. = it names the personal instance, leak = the other references' content (style) showing up (lower "
        "is better; compare with the base model)."
    )
    steps = results["sizes"]["steps"]
    steps_text = "the methods' preset" if steps is None else str(steps)
    lines = [
        f"# {results.get('heading') or 'b4m bench: methods and B4M ablations on the built-in world'}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Pairs: {', '.join(results['pairs'])}; {n_prompts} prompts x {results['sizes']['seeds']} seeds per "
        f"pair; {steps_text} training steps. {scoring} "
        "± = half the 95 % interval: per pair, the image bootstrap (Wilson score intervals for the 0/1 accuracies); "
        "per track, over pairs then images.",
    ]
    for track, title in TRACKS.items():
        rows = [r for r in agg if r["track"] == track]
        if rows:
            lines += [
                "",
                f"## Track: {title} ({', '.join(rows[0]['pairs'])})",
                "",
                *_md_table(rows, "method"),
            ]
    lines += _md_comparisons(results.get("comparisons", []))
    lines += _md_seed_variance(results.get("seed_variance", []))
    lines += _md_budgets(results.get("budgets", []))
    lines += ["", "## Per pair", ""]
    for pair in results["pairs"]:
        lines += [
            f"### {pair}",
            "",
            *_md_table([r for r in results["rows"] if r["pair"] == pair], "method"),
            "",
        ]
    tuned = [r for r in results["rows"] if "sgd_lr" in r]
    if tuned:
        lines += ["RP-SGD's stage-2 learning rate, tuned per pair on its own training loss (mean logged loss per "
                  "candidate rate; the lowest wins):", ""]  # fmt: skip
        for r in tuned:
            grid = ", ".join(f"{lr}: {loss:.3g}" for lr, loss in r["sgd_lr_mean_loss"].items())
            lines.append(f"- {r['pair']}: **{r['sgd_lr']:g}** ({grid})")
        lines.append("")
    timed = [r for r in results["rows"] if r.get("fit_s") is not None]
    if timed:
        lines += ["Wall time per run (fit + sample; CPU time where recorded):", ""]
        lines += [f"- {r['pair']} / {r['label']}: {r['fit_s']:.0f} s + {r['sample_s']:.0f} s{_cpu(r)}{_memory(r)}"
                  for r in timed]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cpu(row: dict[str, Any]) -> str:
    """``" (CPU 12 s + 3 s)"`` where the run recorded its CPU seconds (:mod:`b4m.bench.resources`)."""
    if row.get("fit_cpu_s") is None or row.get("sample_cpu_s") is None:
        return ""
    return f" (CPU {row['fit_cpu_s']:.0f} s + {row['sample_cpu_s']:.0f} s)"


def _memory(row: dict[str, Any]) -> str:
    """``", peak 1.2 GiB RSS, 10.3 GiB GPU"`` where the run recorded them (:mod:`b4m.bench.resources`)."""
    parts = [f"{row[k] / 1024:.1f} GiB {name}" for k, name in (("peak_rss_mb", "RSS"), ("peak_cuda_mb", "GPU"))
             if row.get(k) is not None]  # fmt: skip
    return f", peak {', '.join(parts)}" if parts else ""


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid #ddd}
table.grid td{vertical-align:middle;text-align:left}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}
figure.plot img{max-width:100%;height:auto}
.scroll{overflow-x:auto}
"""


def _png(image: Any, scale: int = SCALE) -> str:
    """A PIL image as an inline ``<img>``, enlarged ``scale`` x with nearest-neighbour sampling."""
    from PIL import Image

    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img class=px src='data:image/png;base64,{data}' width={big.width} height={big.height}>"


def _figure(fig: Any, caption: str, kind: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f"<figure class=plot data-plot={kind}><img src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _errors(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[list[float]]]:
    values = [r[key] for r in rows]
    lo = [max(0.0, v - r["ci"].get(key, (v, v))[0]) for v, r in zip(values, rows, strict=True)]
    hi = [max(0.0, r["ci"].get(key, (v, v))[1] - v) for v, r in zip(values, rows, strict=True)]
    return values, [lo, hi]


def _bars(rows: list[dict[str, Any]], title: str) -> str:
    import matplotlib.pyplot as plt

    cols = _columns(rows)
    ncols = 4
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 0.25 * len(rows) * nrows + 1.5 * nrows),
                             squeeze=False)  # fmt: skip
    for ax, key in zip(axes.flat, cols, strict=False):
        have = [r for r in rows if r.get(key) is not None]
        values, err = _errors(have, key)
        ax.barh(range(len(have)), values, xerr=err, color="#4a7ab5", ecolor="#333", capsize=2)
        ax.set_yticks(range(len(have)), [r["label"] for r in have], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(HEADERS[key], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the suptitle above the panel titles
    return _figure(fig, f"{title}: every metric with its 95 % bootstrap interval", "bars")


def _rho(rows: list[dict[str, Any]], title: str) -> str | None:
    import matplotlib.pyplot as plt

    points = []
    for r in rows:
        if r["method"] == ARMS_OF and r["arm"].startswith("rho=") and "+" not in r["arm"]:
            points.append((float(Fraction(r["arm"][4:])), r))  # --rho's 3/8 or an option arm's 0.375
        elif r["method"] == ARMS_OF and r["arm"] == "full":
            points.append((0.5, r))
    if len(points) < 2:
        return None
    points.sort(key=lambda t: t[0])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [x for x, _ in points]
    for key, color in (("content", "#c0392b"), ("style", "#2471a3")):
        values, err = _errors([r for _, r in points], key)
        ax.errorbar(xs, values, yerr=err, marker="o", capsize=3, color=color, label=f"{key} alignment")
    ax.set_xlabel("rho (frozen fraction of each projection)")
    ax.set_ylabel("alignment")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _figure(fig, f"{title}: content and style alignment vs rho (B4M paper Fig. 11)", "rho")


def _scatter(rows: list[dict[str, Any]], title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for r in rows:
        (x,), xerr = _errors([r], "content")
        (y,), yerr = _errors([r], "style")
        base = r["method"] == "base"
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="s" if base else "o", capsize=2,
                    color="#777" if base else "#1f618d")  # fmt: skip
        ax.annotate(r["label"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("content alignment")
    ax.set_ylabel("style alignment")
    ax.set_title(title, fontsize=10)
    return _figure(fig, f"{title}: content vs style alignment (up and right is better)", "scatter")


VERDICT_COLOURS = {"better": "#1e8449", "worse": "#c0392b", "equivalent": "#2471a3"}
"""Forest-plot colours per verdict (anything else, "undecided at this size", grey)."""


def _forest(entry: dict[str, Any], title: str) -> str | None:
    """The paired comparisons of one track as a forest plot: a panel per verdict metric, a line per comparator."""
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    from b4m.eval.paired import MARGINS

    table = entry["comparators"]
    cols = [m for m in MARGINS if any(m in t["diff"] for t in table)]
    if not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 0.3 * len(table) + 1.3), squeeze=False,
                             sharey=True, gridspec_kw={"wspace": 0.75})  # fmt: skip
    for ax, metric in zip(axes[0], cols, strict=True):
        margin = MARGINS[metric]
        at_right = blended_transform_factory(ax.transAxes, ax.transData)
        for i, t in enumerate(table):
            d = t["diff"].get(metric)
            if d is None:
                continue
            verdict = d.get("verdict", "")
            colour = VERDICT_COLOURS.get(verdict, "#777")
            lo, hi = d["ci95"]
            ax.plot(
                [lo, hi], [i, i], color=colour, lw=1.6, solid_capstyle="butt", gid=f"interval:{t['label']}"
            )
            ax.plot([d["diff"]], [i], "o", color=colour, ms=4, gid=f"mean:{t['label']}")
            ax.text(1.03, i, verdict, transform=at_right, fontsize=7, va="center", color=colour)
        ax.axvline(0.0, color="#222", lw=1, gid="rule:0")
        for x, gid in ((-margin, "rule:-margin"), (margin, "rule:+margin")):
            ax.axvline(x, color="#555", lw=1, ls=":", gid=gid)
        ax.set_yticks(range(len(table)), [t["label"] for t in table], fontsize=7)
        ax.set_ylim(len(table) - 0.5, -0.5)
        ax.set_title(f"Δ {HEADERS[metric]} (±{margin:g})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{title}: {entry['reference']} minus each row", fontsize=10)
    caption = (
        f"{title}: forest plot of {entry['reference']} minus each row, paired over the pairs both ran, one panel "
        "per verdict metric. Dot: the mean over pairs of the per-pair difference; bar: its 95 % paired bootstrap "
        "interval; right of the solid line at 0 the reference scores higher. Dotted lines: the equivalence margin "
        f"({', '.join(f'±{MARGINS[m]:g} {HEADERS[m]}' for m in cols)}), which a 90 % interval must lie inside for "
        "'equivalent'. Right of each panel: the verdict (better / worse: Holm-adjusted sign-flip p < 0.05 and a "
        "95 % interval excluding 0)."
    )
    return _figure(fig, caption, "forest")


def _identity(rows: list[dict[str, Any]], per_pair: list[dict[str, Any]], title: str) -> str | None:
    """Content-instance against style-instance accuracy: a marker per aggregated row, faint dots per pair."""
    import matplotlib.pyplot as plt

    have = [r for r in rows if r.get("content_inst") is not None and r.get("style_inst") is not None]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(6, 5.5))
    palette, shapes = plt.get_cmap("tab20"), "oD^vP*Xh<>"
    for k, r in enumerate(have):
        base = r["method"] == "base"
        colour = "#777" if base else palette(k % 20)
        dots = [p for p in per_pair if (p["track"], p["method"], p["arm"]) == (r["track"], r["method"], r["arm"])
                and p.get("content_inst") is not None and p.get("style_inst") is not None]  # fmt: skip
        ax.scatter([p["content_inst"] for p in dots], [p["style_inst"] for p in dots], s=12, color=colour,
                   alpha=0.3, linewidths=0, gid=f"pairs:{r['label']}")  # fmt: skip
        (x,), xerr = _errors([r], "content_inst")
        (y,), yerr = _errors([r], "style_inst")
        mark = ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="s" if base else shapes[k % len(shapes)], ms=6,
                           mfc="none" if k >= len(shapes) else colour, capsize=2, elinewidth=0.6, color=colour,
                           label=r["label"])  # fmt: skip
        mark.lines[0].set_gid(f"row:{r['label']}")
        for whisker in mark.lines[2]:
            whisker.set_alpha(0.5)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("content-instance accuracy (the judge names the personal instance)")
    ax.set_ylabel("style-instance accuracy (the judge names the style instance)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title(title, fontsize=10)
    caption = (
        f"{title}: identity, content-instance accuracy (x: how often the judge names the personal instance) "
        "against style-instance accuracy (y: how often it names the style instance). Large marker: a row's mean "
        "over pairs with its 95 % interval (grey square: the base model; the legend names the rows); small faint "
        "dots of the same colour: that row on each pair. Up and right keeps both instances; B4M's content-alone "
        "arm, where it ran, shows what its stage-1 content adapter knew before the fusion."
    )
    return _figure(fig, caption, "identity")


def _html_table(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(HEADERS[c])}</th>" for c in cols)
    body = "".join(
        f"<tr><td>{html.escape(r['label'])}</td>" + "".join(f"<td>{_cell(r, c)}</td>" for c in cols)
        + f"<td>{r['n']}</td></tr>" for r in rows
    )  # fmt: skip
    return f"<table class=scores><tr><th>method</th>{head}<th>n</th></tr>{body}</table>"


def _grid(results: dict[str, Any], pair: str, root: Path) -> str:
    from PIL import Image

    from b4m.data.folders import read_image_folder
    from b4m.world.sheet import image_grid

    cells = []
    refs = results["references"][pair]
    for kind in ("content", "style"):
        try:
            paths = read_image_folder(root / refs[kind]).paths
            strip = image_grid([Image.open(p).convert("RGB") for p in paths], ncols=len(paths))
            cells.append(f"<tr><td>{kind} references</td><td>{_png(strip)}</td></tr>")
        except Exception:  # a report is still written when a folder went missing
            cells.append(f"<tr><td>{kind} references</td><td>(missing: {html.escape(refs[kind])})</td></tr>")
    for r in (r for r in results["rows"] if r["pair"] == pair):
        path = root / r["samples"]
        image = _png(Image.open(path).convert("RGB")) if path.is_file() else "(missing)"
        cells.append(f"<tr><td>{html.escape(r['label'])}</td><td>{image}</td></tr>")
    prompts = "".join(f"<li><code>{html.escape(q)}</code></li>" for q in results["prompts"].get(pair, []))
    return (f"<section class=pair data-pair='{html.escape(pair)}'><h3>{html.escape(pair)}</h3>"
            f"<p>Rows of each grid: prompts; columns: seeds (equal noise across methods).</p><ol>{prompts}</ol>"
            f"<table class=grid>{''.join(cells)}</table></section>")  # fmt: skip


def write_html(results: dict[str, Any], root: Path) -> str:
    """The HTML of ``report.html`` (images and plots inline: one self-contained file)."""
    import matplotlib

    matplotlib.use("Agg")
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(results['title'])}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(results['title'])}</h1>",
        f"<p>Command: <code>{html.escape(results['command'])}</code>. {html.escape(results.get('scoring') or SIZE_HELP)}</p>",
    ]
    agg = results["aggregated"]
    for track, title in TRACKS.items():
        rows = [r for r in agg if r["track"] == track]
        if not rows:
            continue
        name = f"Track: {title}"
        parts += [f"<section class=track data-track={track}><h2>{html.escape(name)}</h2>", _html_table(rows),
                  _bars(rows, name), _scatter(rows, name)]  # fmt: skip
        rho = _rho(rows, name)
        parts.append(rho or "<p class=no-rho>No rho arms in this bench: run with <code>--rho sweep</code> for "
                            "the rho curve.</p>")  # fmt: skip
        entry = next((c for c in results.get("comparisons", []) if c["track"] == track), None)
        forest = None if entry is None else _forest(entry, name)
        identity = _identity(rows, [r for r in results["rows"] if r["track"] == track], name)
        parts += [x for x in (forest, identity) if x is not None]
        parts.append("</section>")
    parts.append("<h2>Samples</h2>")
    parts += [_grid(results, pair, root) for pair in results["pairs"]]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
