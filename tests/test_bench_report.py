"""The bench's budgets and report figures: CPU seconds per phase (:mod:`b4m.bench.resources`), training
image-steps per row against a hand count from the runs' specs (:mod:`b4m.bench.budgets`), the Budgets table of
results.md, and report.html's forest plot and identity scatter checked against the numbers of results.json."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from test_bench import _fake_per_image, check_report_html

from b4m.bench import report as bench_report
from b4m.bench import resources
from b4m.bench import run as bench_run
from b4m.bench.budgets import budgets
from b4m.bench.catalogue import SGD_LR_GRID, BenchConfig, plan
from b4m.bench.costs import estimate, training_fits
from b4m.bench.runs import bench_runs
from b4m.cli import main
from b4m.owned import Folder

# --------------------------------------------------------------------------------------------- CPU seconds


def _spin(clock, seconds: float) -> None:
    t0 = clock()
    while clock() - t0 < seconds:
        pass


def test_measure_records_this_process_cpu_seconds(monkeypatch):
    with resources.measure() as idle:  # waiting costs wall time, not CPU time
        time.sleep(0.3)
    assert idle["wall_s"] >= 0.3 and 0 <= idle["cpu_s"] < 0.1
    with resources.measure() as busy:
        _spin(time.process_time, 0.2)
    assert 0.2 <= busy["cpu_s"] <= busy["wall_s"] + 0.05
    with resources.measure() as threaded:  # another thread's CPU time is the process's too
        worker = threading.Thread(target=_spin, args=(time.thread_time, 0.2))
        worker.start()
        worker.join()
    assert threaded["cpu_s"] >= 0.2
    ticks = [10.0, 12.5]  # exactly process_time's difference over the phase
    monkeypatch.setattr(resources.time, "process_time", lambda: ticks.pop(0) if len(ticks) > 1 else ticks[0])
    with resources.measure() as fake:
        pass
    assert fake["cpu_s"] == 2.5


# --------------------------------------------------------------------------------------------- budgets


def _hand_count(run) -> int:
    """Training image-steps of one run, written out per method from its spec's training settings."""
    t = run.spec["train"]
    # B4M's stage 1: the target and 3 auxiliary samples a step; the target alone without MCP
    stage1_per_step = 1 if t.get("mcp") is False else 4
    if run.method == "b4m":
        tuning = len(t["sgd_lr_grid"]) if t.get("stage2_lr") == "tuned" else 0
        return 2 * t["steps"] * stage1_per_step + (1 + tuning) * t["stage2_steps"] * 2
    if run.method == "lora":
        return t["steps"] * 1
    if run.method == "ziplora":  # two source LoRAs at 1 image a step, the merger at 2
        return 2 * t["sources_steps"] * 1 + t["steps"] * 2
    if run.method == "direct-merge":  # the two source LoRAs; the merge trains nothing
        return 2 * t["sources_steps"] * 1
    assert run.method == "base" and t == {}
    return 0


def test_budgets_count_every_training_a_row_is_built_on():
    p = plan(BenchConfig(pairs=["teddy#3:papercut#5", "cat#2:knit#1"], methods=["b4m,lora,ziplora,direct-merge"],
                         arms=["full,content-alone,no-mcp,fusion-only,rp-sgd,paper"], steps=7, stage2_steps=3,
                         merge_steps=5))  # fmt: skip
    runs = bench_runs(p)
    # the first pair's runs recorded fit CPU seconds, the second's are records from before they existed
    records = [{"fit_s": 1.0 if r.pair.startswith("teddy") else 3.0} | ({"fit_cpu_s": 0.5} if r.pair.startswith(
        "teddy") else {}) for r in runs]  # fmt: skip
    (entry,) = budgets(runs, records)
    assert entry["track"] == "instance"
    rows = {(r["method"], r["arm"]): r for r in entry["rows"]}
    assert len(rows) == len(entry["rows"]) == 10
    for run in runs:
        assert rows[(run.method, run.arm)]["image_steps"] == _hand_count(run), (run.method, run.arm)
    # the same numbers written out: 7 steps, 3 stage-2 steps, 5 merger steps
    want = {("base", "full"): 0, ("b4m", "full"): 2 * 7 * 4 + 3 * 2, ("lora", "full"): 7,
            ("ziplora", "full"): 7 + 7 + 5 * 2, ("direct-merge", "full"): 7 + 7,
            ("b4m", "content-alone"): 62, ("b4m", "no-mcp"): 2 * 7 + 3 * 2, ("b4m", "fusion-only"): 2 * 7 * 4,
            ("b4m", "rp-sgd"): 56 + (1 + len(SGD_LR_GRID)) * 3 * 2, ("b4m", "paper"): 56 + 40 * 2}  # fmt: skip
    assert {k: r["image_steps"] for k, r in rows.items()} == want
    assert [r["sampling_only"] for r in entry["rows"]] == [k == ("b4m", "content-alone") for k in rows]
    assert [(f["fit"], f["steps"], f["per_step"]) for f in rows[("ziplora", "full")]["fits"]] == [
        ("source lora (content)", 7, 1), ("source lora (style)", 7, 1), ("ziplora merger", 5, 2)]  # fmt: skip
    for r in entry["rows"]:  # measured: the mean over the runs that have the number
        assert r["pairs"] == ["teddy#3:papercut#5", "cat#2:knit#1"]
        assert (r["fit_s"], r["fit_s_runs"], r["fit_cpu_s"], r["fit_cpu_s_runs"]) == (2.0, 2, 0.5, 1)

    # None steps: the methods' presets on the base (built-in: 800 stage-1 / lora steps, 100 stage-2 and merger)
    assert sum(f["image_steps"] for f in training_fits("b4m", {"steps": None, "stage2_steps": None}, "builtin")) == (
        2 * 800 * 4 + 100 * 2)  # fmt: skip
    fits = training_fits("ziplora", {"steps": None, "sources_steps": None}, "builtin")
    assert sum(f["image_steps"] for f in fits) == 2 * 800 + 100 * 2


def test_dry_run_estimate_counts_each_cached_fit_once():
    """The plan's estimate reads the same trainings (b4m.bench.costs.training_fits), each cached fit once: the
    sources per concept (the lora row is the content source), stage 1 per concept and setting, and a sampling-only
    arm's fit is full's."""
    p = plan(BenchConfig(pairs=["teddy#3:papercut#5", "cat#2:knit#1"], methods=["b4m,lora,ziplora,direct-merge"],
                         arms=["full,content-alone,no-mcp"], steps=7, stage2_steps=3, merge_steps=5))  # fmt: skip
    e = estimate(p)
    assert e["fits"] == {"sources": 4, "stage1": 8, "trained": 6, "training-free": 2, "tuning": 0}
    # 4 source LoRAs x 7; stage 1: 4 (full) x 7 x 4 + 4 (no-mcp) x 7 x 1; stage 2: 2 x 2 x 3 x 2; ziplora 2 x 5 x 2
    assert e["train_samples"] == 4 * 7 + 4 * 28 + 4 * 7 + 4 * 6 + 2 * 10


# --------------------------------------------------------------------------------------------- reports


def _fake_execute(ctx, run, folder):
    from PIL import Image

    seeds = run.spec["sample"]["seeds"]
    Image.new("RGB", (34 * seeds, 34 * 5), (200, 100, 50)).save(folder / "samples.png")
    Folder(folder).record("samples.png")
    per = _fake_per_image(5 * seeds, int(run.key[:6], 16), inst="#" in run.pair)
    fit_s = {"teddy#3:papercut#5": 1.0, "cat#2:knit#1": 3.0}.get(run.pair, 5.0)
    # the first pair's records have CPU seconds; the others are records from before they existed
    cpu = {"fit_cpu_s": 4.0, "sample_cpu_s": 1.0} if run.pair.startswith("teddy") else {}
    return {"per_image": {k: v.tolist() for k, v in per.items()}, "fit_s": fit_s, "sample_s": 2.0, **cpu,
            "adapter": None}  # fmt: skip


def _lines(ax, prefix: str) -> dict:
    """The axes' lines whose gid starts with ``prefix``, by the rest of their gid."""
    return {
        ln.get_gid()[len(prefix) :]: ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)
    }


def test_budgets_table_forest_and_identity_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_run, "execute", _fake_execute)
    drawn: list[tuple[object, str, str]] = []
    figure = bench_report._figure
    monkeypatch.setattr(bench_report, "_figure", lambda fig, caption, kind: drawn.append((fig, caption, kind))
                        or figure(fig, caption, kind))  # fmt: skip
    out = tmp_path / "bench"
    argv = ["bench", "--out", str(out), "--pairs", "teddy#3:papercut#5,cat#2:knit#1,mushroom:glass", "--methods",
            "b4m,lora,ziplora,direct-merge", "--arms", "full,content-alone", "--steps", "7", "--stage2-steps", "3",
            "--merge-steps", "5", "--seeds", "2", "--bootstrap", "300"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())

    # CPU seconds reach the rows where the record has them; older records still load
    teddy = [r for r in results["rows"] if r["pair"] == "teddy#3:papercut#5"]
    assert all(r["fit_cpu_s"] == 4.0 and r["sample_cpu_s"] == 1.0 for r in teddy)
    assert all("fit_cpu_s" not in r for r in results["rows"] if r["pair"] != "teddy#3:papercut#5")

    # results.md: the Budgets table after the paired comparisons, numbers per pair
    md = (out / "results.md").read_text()
    assert md.index("## Paired comparisons") < md.index("## Budgets") < md.index("## Per pair")
    budget_md = md[md.index("## Budgets") : md.index("## Per pair")]
    assert "paid by the first run that trains it and read from the cache by the others" in budget_md
    assert "its row shows the budget of the fit it samples" in budget_md
    lines = budget_md.splitlines()
    for line in (
        "| ziplora | 2 | 24 | source lora (content) 7×1 + source lora (style) 7×1 + ziplora merger 5×2 | 2.0 | "
        "4.0 (1 of 2 runs) |",
        "| b4m | 2 | 62 | stage 1 (content) 7×4 + stage 1 (style) 7×4 + stage 2 3×2 | 2.0 | 4.0 (1 of 2 runs) |",
        "| lora | 2 | 7 | lora (content) 7×1 | 2.0 | 4.0 (1 of 2 runs) |",
        "| base model (prompt only) | 1 | 0 | – | 5.0 | – |",  # the new-class track: mushroom:glass alone
        "| direct-merge | 1 | 14 | source lora (content) 7×1 + source lora (style) 7×1 + direct-merge "
        "(training-free) | 5.0 | – |",
    ):
        assert line in lines, line
    assert "| b4m: stage-1 content adapter alone [A;B_c][C,D_aux] † | 2 | 62 |" in budget_md
    assert "- teddy#3:papercut#5 / ziplora: 1 s + 2 s (CPU 4 s + 1 s)" in md.splitlines()
    assert "- cat#2:knit#1 / ziplora: 3 s + 2 s" in md.splitlines()  # an old record: no CPU seconds
    assert budget_md.count("### Budgets: ") == 2

    # report.html: per track a forest plot; the identity scatter where the instances are scored
    text = check_report_html(
        out / "report.html", ["teddy#3:papercut#5", "cat#2:knit#1", "mushroom:glass"], rho=False
    )
    kinds = [k for _, _, k in drawn]
    assert kinds.count("forest") == 2 and kinds.count("identity") == 1
    assert text.count("data-plot=forest") == 2 and text.count("data-plot=identity") == 1
    assert "forest plot of b4m minus each row" in text and "identity, content-instance accuracy (x" in text

    from b4m.eval.paired import MARGINS

    forests = [(fig, c) for fig, c, k in drawn if k == "forest"]
    for (fig, caption), entry in zip(forests, results["comparisons"], strict=True):
        metrics = [m for m in MARGINS if m in entry["comparators"][0]["diff"]]
        assert f"forest plot of {entry['reference']} minus each row" in caption and "±0.05 h-mean" in caption
        assert metrics == (
            ["hmean", "content_inst", "style_inst"] if entry["track"] == "instance" else ["hmean"]
        )
        assert len(fig.axes) == len(metrics)
        for ax, m in zip(fig.axes, metrics, strict=True):
            intervals, means = _lines(ax, "interval:"), _lines(ax, "mean:")
            rules = {k: ln.get_xdata()[0] for k, ln in _lines(ax, "rule:").items()}
            assert rules == {"0": 0.0, "-margin": -MARGINS[m], "+margin": MARGINS[m]}
            assert [t.get_text() for t in ax.texts] == [t["diff"][m]["verdict"] for t in entry["comparators"]]
            for i, t in enumerate(entry["comparators"]):
                d = t["diff"][m]
                assert list(intervals[t["label"]].get_xdata()) == pytest.approx(d["ci95"], abs=1e-12)
                assert list(intervals[t["label"]].get_ydata()) == [i, i]
                assert list(means[t["label"]].get_xdata()) == pytest.approx([d["diff"]], abs=1e-12)

    ((fig, _),) = [(fig, c) for fig, c, k in drawn if k == "identity"]
    (ax,) = fig.axes
    agg = [r for r in results["aggregated"] if r["track"] == "instance"]
    marks = _lines(ax, "row:")
    dots = {c.get_gid()[len("pairs:") :]: c.get_offsets() for c in ax.collections
            if (c.get_gid() or "").startswith("pairs:")}  # fmt: skip
    assert set(marks) == set(dots) == {r["label"] for r in agg} and len(agg) == 6
    for r in agg:
        assert [marks[r["label"]].get_xdata()[0], marks[r["label"]].get_ydata()[0]] == pytest.approx(
            [r["content_inst"], r["style_inst"]], abs=1e-12)  # fmt: skip
        per_pair = [[p["content_inst"], p["style_inst"]] for p in results["rows"]
                    if (p["method"], p["arm"], p["track"]) == (r["method"], r["arm"], "instance")]  # fmt: skip
        assert len(per_pair) == 2 and np.allclose(np.asarray(dots[r["label"]]), per_pair)

    # an old results.json (no comparisons, budgets or CPU seconds) still gives both reports, without them
    old = {k: v for k, v in results.items() if k not in ("comparisons", "budgets")}
    old["rows"] = [
        {k: v for k, v in r.items() if k not in ("fit_cpu_s", "sample_cpu_s")} for r in old["rows"]
    ]
    drawn.clear()
    (out / "report.html").write_text(bench_report.write_html(old, out), encoding="utf-8")
    check_report_html(
        out / "report.html", ["teddy#3:papercut#5", "cat#2:knit#1", "mushroom:glass"], rho=False
    )
    assert [k for _, _, k in drawn].count("forest") == 0
    md_old = bench_report.write_markdown(old)
    assert "## Budgets" not in md_old and "## Paired comparisons" not in md_old and "## Per pair" in md_old
    assert "(CPU " not in md_old and "- cat#2:knit#1 / ziplora: 3 s + 2 s" in md_old.splitlines()


def test_rho_curve_reads_option_arms_and_skips_combinations():
    """The rho curve takes --rho's k/8 arms and rho=x option arms (the dev experiments' spelling), and leaves out
    rho combined with other options; the points sit at the right rho."""
    from b4m.bench import report

    def row(arm, content):
        return {"method": "b4m", "arm": arm, "content": content, "style": 0.5,
                "ci": {"content": [content - 0.1, content + 0.1], "style": [0.4, 0.6]}}  # fmt: skip

    seen = []
    real = report._figure
    rows = [row("full", 0.5), row("rho=1/8", 0.8), row("rho=0.25", 0.7), row("rho=0.25+aux_lr_scale=0.1", 0.1),
            row("content-alone+rho=0.25", 0.2)]  # fmt: skip

    def spy(fig, caption, kind):
        seen.append(
            sorted(zip(fig.axes[0].lines[0].get_xdata(), fig.axes[0].lines[0].get_ydata(), strict=True))
        )
        return real(fig, caption, kind)

    report._figure = spy
    try:
        assert report._rho(rows, "t") is not None
    finally:
        report._figure = real
    assert seen == [[(0.125, 0.8), (0.25, 0.7), (0.5, 0.5)]]
