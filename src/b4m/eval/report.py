"""HTML report built from a ``results.json`` alone (rebuildable without retraining or regenerating)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from b4m.io import write_text

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{image-rendering:pixelated;border:1px solid #ddd;max-width:100%}
.grid{display:flex;gap:2em;flex-wrap:wrap}.grid div{flex:1;min-width:300px}
code{background:#f3f3f3;padding:1px 4px}
"""

_COLUMNS = [
    ("content", "content align."),
    ("style", "style align."),
    ("prompt", "prompt align."),
    ("mean", "mean"),
    ("hmean", "harmonic mean"),
    ("content_acc", "content acc."),
    ("style_acc", "style acc."),
]


def _table(rows: dict[str, dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in _COLUMNS)
    body = []
    for name, scores in rows.items():
        cells = "".join(f"<td>{scores[key]:.3f}</td>" for key, _ in _COLUMNS)
        body.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"


def write_report(results_path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` next to ``results.json`` (or at ``out``); image paths are relative to it."""
    results_path = Path(results_path)
    results = json.loads(results_path.read_text())
    out = Path(out) if out else results_path.with_name("report.html")
    parts = [
        f"<!doctype html><meta charset=utf-8><title>b4m report</title><style>{_CSS}</style>",
        f"<h1>{html.escape(results.get('title', 'b4m report'))}</h1>",
    ]
    if results.get("summary"):
        parts.append(f"<p>{html.escape(results['summary'])}</p>")
    parts.append("<h2>Scores (judges of the built-in world)</h2>" + _table(results["scores"]))
    parts.append(
        "<p>Alignment = cosine of the judges' content / style embeddings to the reference images' mean "
        "(the paper's DINOv2 / CLIP protocol); prompt alignment = fraction of the prompt's attributes the "
        "attribute judges find; accuracies = how often the judges name the target content / style.</p>"
    )
    if results.get("references"):
        parts.append("<h2>References</h2><div class=grid>")
        for label, image in results["references"].items():
            parts.append(f"<div><h3>{html.escape(label)}</h3><img src='{html.escape(image)}'></div>")
        parts.append("</div>")
    parts.append("<h2>Samples</h2><p>Rows: prompts; columns: seeds (equal noise across models).</p><ol>")
    parts.extend(f"<li><code>{html.escape(p)}</code></li>" for p in results.get("prompts", []))
    parts.append("</ol><div class=grid>")
    for label, image in results.get("grids", {}).items():
        parts.append(f"<div><h3>{html.escape(label)}</h3><img src='{html.escape(image)}'></div>")
    parts.append("</div>")
    if results.get("timings"):
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>" for k, v in results["timings"].items()
        )
        parts.append(f"<h2>Time</h2><table><tr><th>stage</th><th>wall time</th></tr>{rows}</table>")
    if results.get("commands"):
        parts.append("<h2>Reproduce</h2><pre>" + html.escape("\n".join(results["commands"])) + "</pre>")
    return write_text(out, "\n".join(parts))
