"""``b4m bench`` and ``b4m eval``: bootstrap intervals against an independent computation, the cache (a second
run does no work, an interrupted one redoes only what is missing), the Markdown and HTML layouts, bad input,
and (slow) the real quick bench end to end."""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from b4m.bench import fit as bench_fit
from b4m.bench import run as bench_run
from b4m.bench import runs as bench_runs
from b4m.bench.catalogue import METRICS, SGD_LR_GRID, BenchConfig, plan
from b4m.cli import main
from b4m.eval.stats import aggregate, bootstrap, pair_bootstrap, point
from b4m.owned import Folder

PAIRS = ["teddy#3:papercut#5", "cat#2:knit#1", "mushroom:glass"]


def _fake_per_image(n: int, seed: int, inst: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per = {
        "content": rng.uniform(0.2, 0.9, n),
        "style": rng.uniform(0.2, 0.9, n),
        "content_acc": rng.integers(0, 2, n).astype(float),
        "style_acc": rng.integers(0, 2, n).astype(float),
        "leak_content": rng.uniform(0, 0.5, n),
        "leak_content_acc": rng.integers(0, 2, n).astype(float),
        "leak_style": rng.uniform(0, 0.5, n),
        "leak_style_acc": rng.integers(0, 2, n).astype(float),
        "prompt_asked": rng.integers(0, 3, n).astype(float),
    }
    per["prompt_hit"] = np.minimum(per["prompt_asked"], rng.integers(0, 3, n))
    if inst:
        per["content_inst"] = rng.integers(0, 2, n).astype(float)
        per["style_inst"] = rng.integers(0, 2, n).astype(float)
    return per


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile written out (numpy's default method)."""
    xs = sorted(values)
    pos = q / 100 * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _independent_ci(per: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, list[float]]:
    """The image bootstrap as a plain loop, one resample at a time, metrics from b4m.eval.metrics.Scores."""
    from b4m.eval.metrics import Scores

    n = len(per["content"])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps: dict[str, list[float]] = {}
    for b in range(n_boot):
        pick = [int(i) for i in idx[b]]
        mean = {k: sum(float(per[k][i]) for i in pick) / n for k in per if not k.startswith("prompt")}
        asked = sum(float(per["prompt_asked"][i]) for i in pick)
        hit = sum(float(per["prompt_hit"][i]) for i in pick)
        s = Scores(mean["content"], mean["style"], hit / asked if asked else 1.0, 0.0, 0.0, n)
        mean.update(prompt=s.prompt, mean=s.mean, hmean=s.hmean)
        for k, v in mean.items():
            reps.setdefault(k, []).append(v)
    return {k: [_percentile(v, 2.5), _percentile(v, 97.5)] for k, v in reps.items()}


def test_image_bootstrap_matches_an_independent_computation():
    per = _fake_per_image(23, seed=1)
    values, ci, reps = bootstrap(per, n_boot=400, seed=7)
    expected = _independent_ci(per, 400, 7)
    assert set(ci) == set(expected)
    for k in expected:
        assert ci[k] == pytest.approx(expected[k], abs=1e-12), k
        assert ci[k][0] <= ci[k][1]
        assert reps[k].shape == (400,)
    # point values: prompt alignment is hits over asked attributes, as score_world defines it
    assert values["prompt"] == pytest.approx(per["prompt_hit"].sum() / per["prompt_asked"].sum())
    assert values["content"] == pytest.approx(per["content"].mean())


def test_image_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    n = 400
    per = {"content": rng.normal(0.5, 0.1, n), "style": rng.normal(0.6, 0.1, n)}
    per |= {"prompt_hit": np.ones(n), "prompt_asked": np.ones(n)}
    _, ci, _ = bootstrap(per, n_boot=4000, seed=3)
    half = 1.96 * per["content"].std(ddof=1) / np.sqrt(n)
    assert (ci["content"][1] - ci["content"][0]) / 2 == pytest.approx(half, rel=0.1)


def test_pair_bootstrap_resamples_pairs_then_images():
    pers = [_fake_per_image(10, seed=s) for s in range(3)]
    boots = [bootstrap(p, n_boot=300, seed=s) for s, p in enumerate(pers)]
    mean, ci = pair_bootstrap([b[0] for b in boots], [b[2] for b in boots], seed=11)
    pick = np.random.default_rng(11).integers(0, 3, size=(300, 3))
    for k in ("content", "hmean", "style_inst"):
        assert mean[k] == pytest.approx(np.mean([b[0][k] for b in boots]))
        reps = [np.mean([boots[j][2][k][b] for j in pick[b]]) for b in range(300)]
        assert ci[k] == pytest.approx([_percentile(reps, 2.5), _percentile(reps, 97.5)])
    # a metric one pair lacks (instance accuracy of a new-class pair) is left out, not averaged wrongly
    lacking = dict(boots[2][2])
    lacking.pop("content_inst")
    mean, _ = pair_bootstrap([boots[0][0], boots[1][0], {**boots[2][0], "content_inst": None}],
                             [boots[0][2], boots[1][2], lacking])  # fmt: skip
    assert "content_inst" not in mean and "content" in mean


def test_point_values_equal_score_world():
    """The per-image scores aggregate to exactly what b4m.eval.metrics.score_world reports."""
    from b4m.eval.metrics import score_world
    from b4m.eval.scoring import WorldScorer
    from b4m.models.judges.data import render_batch
    from b4m.models.judges.network import WorldJudges
    from b4m.world.render import Scene

    judges = WorldJudges.load()
    gen = render_batch([Scene.of("teddy#3", "papercut#5", position=p) for p in ("left", "right", "center")] * 2,
                       list(range(6)))  # fmt: skip
    crefs = render_batch([Scene.of("teddy#3", "photo")] * 3, [10, 11, 12])
    srefs = render_batch([Scene.of(c, "papercut#5") for c in ("car", "fish", "house")], [20, 21, 22])
    attrs = [{"position": p} for p in ("left", "right", "center")] * 2
    per = WorldScorer(judges).per_image(gen, crefs, srefs, "teddy#3", "papercut#5", attrs, [""] * 6)
    mine = point(per)
    ref = score_world(judges, gen, crefs, srefs, "teddy#3", "papercut#5", attrs).as_dict()
    for k in ("content", "style", "prompt", "mean", "hmean", "content_acc", "style_acc", "content_inst",
              "style_inst"):  # fmt: skip
        assert mine[k] == pytest.approx(ref[k], abs=1e-6), k
    assert all(0 <= mine[k] <= 1 for k in ("leak_content_acc", "leak_style_acc"))


# --------------------------------------------------------------------------------------------- plan, CLI


def test_plan_expands_defaults_and_quick():
    p = plan(BenchConfig())
    assert [f"{c}:{s}" for c, s in p.pairs] == PAIRS
    assert p.arms[0] == "full" and "no-mcp" in p.arms and len(p.methods) == 10
    q = plan(BenchConfig(quick=True, track="new-class", rho=["sweep"]))
    assert [f"{c}:{s}" for c, s in q.pairs] == ["mushroom:glass"]
    assert q.sizes["seeds"] == 1 and q.sizes["steps"] < 50
    rhos = [a for a in q.arms if a.startswith("rho=")]
    assert rhos == ["rho=1/8", "rho=1/4", "rho=3/8", "rho=5/8", "rho=3/4", "rho=7/8"]  # 1/2 is the full arm
    only = plan(BenchConfig(methods=["ziplora,klora"]))
    assert only.methods == ("ziplora", "klora") and only.arms == ("full",)
    # an option given explicitly wins over --quick's sizes (it used to be replaced silently)
    mine = plan(BenchConfig(quick=True, seeds=3, steps=20))
    assert (mine.sizes["seeds"], mine.sizes["steps"], mine.sizes["n_content"]) == (3, 20, 2)
    assert plan(BenchConfig(seeds=4)).sizes == plan(BenchConfig()).sizes


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--pairs", "teddy#3"], "--pairs"),
        (["--pairs", "teddy:papercut#5"], "--pairs"),
        (["--methods", "b4m,nope"], "--methods"),
        (["--arms", "no-such-arm"], "--arms"),
        (["--rho", "2"], "--rho"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bench_bad_input_is_one_line_and_exit_2(argv, option, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "execute", lambda *a: pytest.fail("bad input must stop before any work"))
    assert main(["bench", "--out", str(tmp_path / "b"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("b4m: error:") and option in err
    assert not (tmp_path / "b").exists()


def test_bench_never_writes_into_a_folder_it_did_not_make(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "execute", lambda *a: pytest.fail("must stop before any work"))
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_eval_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--content-images" in err and "--prompts" in err
    (tmp_path / "p.txt").write_text("# only a comment\n")
    (tmp_path / "c").mkdir()
    argv = ["eval", "--content-images", str(tmp_path / "c"), "--style-images", str(tmp_path / "c"),
            "--prompts", str(tmp_path / "p.txt"), "--clip", "x", "--out", str(tmp_path / "e.json")]  # fmt: skip
    assert main(argv) == 2
    assert "--clip and --dino" in capsys.readouterr().err


def test_prompt_files_and_attributes(tmp_path):
    from b4m.eval.scoring import prompt_attributes, read_prompts, reference_concept
    from b4m.world.export import export_concept
    from b4m.world.render import Scene, caption

    for attrs in ({}, {"position": "left"}, {"size": "small", "background": "blue"},
                  {"position": "right", "size": "large", "background": "yellow"}):  # fmt: skip
        text = caption(Scene.of("teddy#3", "papercut#5", **attrs), content_word="snq teddy")
        assert prompt_attributes(text) == attrs, text
    (tmp_path / "p.txt").write_text("# prompts\na snq teddy in wzk papercut style on the left\n\n")
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": "a teddy", "attributes": {"size": "small"}}) + "\n"
    )
    assert read_prompts(tmp_path / "p.txt") == (["a snq teddy in wzk papercut style on the left"],
                                                [{"position": "left"}])  # fmt: skip
    assert read_prompts(tmp_path / "p.jsonl") == (["a teddy"], [{"size": "small"}])
    export_concept(tmp_path / "c", content="teddy#3", n=2)
    export_concept(tmp_path / "s", style="papercut#5", n=2)
    assert reference_concept(tmp_path / "c", "content") == "teddy#3"
    assert reference_concept(tmp_path / "s", "style") == "papercut#5"
    assert reference_concept(tmp_path / "s", "content") is None  # its contents vary


# --------------------------------------------------------------------------------------------- the cache


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.balanced = True

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("html", "body", "section", "table", "figure"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("html", "body", "section", "table", "figure"):
            self.balanced &= bool(self.stack) and self.stack.pop() == tag


def check_report_html(path: Path, pairs: list[str], rho: bool) -> str:
    """Structure of report.html: one self-contained file with a grid per pair and the plots."""
    text = path.read_text(encoding="utf-8")
    parser = _Parser()
    parser.feed(text)
    assert parser.balanced and not parser.stack
    tags = parser.tags
    sections = [a.get("data-pair") for t, a in tags if t == "section" and a.get("class") == "pair"]
    assert sections == pairs
    images = [a["src"] for t, a in tags if t == "img"]
    assert images and all(src.startswith("data:image/png;base64,") for src in images)  # nothing external
    assert not [a for t, a in tags if t in ("link", "script") and (a.get("href") or a.get("src"))]
    plots = [a.get("data-plot") for t, a in tags if t == "figure"]
    assert "bars" in plots and "scatter" in plots and ("rho" in plots) == rho
    assert "image-rendering:pixelated" in text
    return text


def _fake_execute(calls):
    def execute(ctx, run, folder):
        from PIL import Image

        calls.append((run.pair, run.method, run.arm))
        Image.new("RGB", (34 * run.spec["sample"]["seeds"], 34 * 5), (200, 100, 50)).save(
            folder / "samples.png"
        )
        Folder(folder).record("samples.png")  # as execute() records what it writes
        per = _fake_per_image(5 * run.spec["sample"]["seeds"], int(run.key[:6], 16), inst="#" in run.pair)
        return {"per_image": {k: v.tolist() for k, v in per.items()}, "fit_s": 1.0, "sample_s": 2.0,
                "adapter": None}  # fmt: skip

    return execute


def test_bench_caches_resumes_and_lays_out_its_reports(tmp_path, monkeypatch):
    calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(bench_run, "execute", _fake_execute(calls))
    out = tmp_path / "bench"
    argv = ["bench", "--out", str(out), "--pairs", "teddy#3:papercut#5,mushroom:glass", "--methods",
            "b4m,lora,ziplora", "--arms", "full,no-rp", "--rho", "1/4,1/2", "--seeds", "2", "--bootstrap", "300"]  # fmt: skip
    assert main(argv) == 0
    # per pair: base, 3 methods, no-rp and rho=1/4 (rho=1/2 is the full arm)
    assert len(calls) == 2 * 6 and len(set(calls)) == 12
    first = json.loads((out / "results.json").read_text())
    assert main(argv) == 0
    assert len(calls) == 12  # the second run did no work
    second = json.loads((out / "results.json").read_text())
    assert second["rows"] == first["rows"] and second["computed"] == 0 and first["computed"] == 12

    # an interrupted bench: one run lost its done.json (killed mid-way); only that run is redone
    victim = out / first["rows"][3]["samples"]
    (victim.parent / "done.json").unlink()
    assert main(argv) == 0
    assert len(calls) == 13 and calls[-1] == ("teddy#3:papercut#5", "ziplora", "full")

    rows = first["rows"]
    keys = {"method", "arm", "pair", "track", "content", "style", "prompt", "mean", "hmean", "content_acc",
            "style_acc", "content_inst", "style_inst", "leakage", "n", "ci"}  # fmt: skip
    assert all(keys <= set(r) for r in rows)
    assert {(r["method"], r["arm"]) for r in rows} == {("base", "full"), ("b4m", "full"), ("lora", "full"),
                                                       ("ziplora", "full"), ("b4m", "no-rp"), ("b4m", "rho=1/4")}  # fmt: skip
    assert all(r["n"] == 10 for r in rows)
    new_class = [r for r in rows if r["pair"] == "mushroom:glass"]
    assert all(r["track"] == "new-class" and r["content_inst"] is None for r in new_class)

    # every row's interval is the image bootstrap of its own per-image scores (independent computation)
    for r in rows[:3]:
        record = json.loads((out / r["samples"]).with_name("done.json").read_text())
        per = {k: np.asarray(v) for k, v in record["per_image"].items()}
        expected = _independent_ci(per, 300, int(r["key"][:8], 16))
        for k, v in r["ci"].items():
            if k in ("content_acc", "style_acc", "content_inst", "style_inst"):  # 0/1 per image: Wilson
                hits, n = float(np.sum(per[k])), len(per[k])
                z2 = 1.959963984540054**2
                centre = (hits + z2 / 2) / (n + z2)
                half = math.sqrt(z2) * math.sqrt(hits * (n - hits) / n + z2 / 4) / (n + z2)
                assert v == pytest.approx([max(0, centre - half), min(1, centre + half)], abs=1e-9), k
            else:
                assert v == pytest.approx(expected[k], abs=1e-12), k
        assert r["mean"] == pytest.approx(float(aggregate(per, np.arange(10)[None])["mean"][0]))

    # aggregated rows: one per track x method x arm
    agg = first["aggregated"]
    assert len(agg) == 12 and {a["track"] for a in agg} == {"instance", "new-class"}
    assert all(set(METRICS) <= set(a) and a["n"] == 10 for a in agg)

    # paired comparisons: B4M minus each other row of its track, on the pairs both ran
    (inst,) = [c for c in first["comparisons"] if c["track"] == "instance"]
    assert [(t["method"], t["arm"]) for t in inst["comparators"]] == [
        ("base", "full"), ("lora", "full"), ("ziplora", "full"), ("b4m", "no-rp"), ("b4m", "rho=1/4")]  # fmt: skip
    point = {(r["method"], r["arm"]): r for r in rows if r["pair"] == "teddy#3:papercut#5"}
    for t in inst["comparators"]:
        want = point[("b4m", "full")]["hmean"] - point[(t["method"], t["arm"])]["hmean"]
        assert t["diff"]["hmean"]["diff"] == pytest.approx(want, abs=1e-12)
        assert (
            t["diff"]["hmean"]["p"] == 1.0 and t["diff"]["hmean"]["verdict"] != "better"
        )  # 1 pair decides nothing

    md = (out / "results.md").read_text()
    check_markdown(md, tracks=2, rows_per_track=6)
    assert "## Paired comparisons" in md and "| compared with | pairs | Δ h-mean |" in md
    check_report_html(out / "report.html", ["teddy#3:papercut#5", "mushroom:glass"], rho=True)

    # a copied bench folder resumes too (cache keys hold no absolute paths)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert main([*argv[:2], str(moved), *argv[3:]]) == 0
    assert len(calls) == 13

    # a retrained base model or new judges change every cache key: everything is recomputed
    monkeypatch.setattr(bench_runs, "assets_fingerprint", lambda: "another-base")
    assert main(argv) == 0
    assert len(calls) == 13 + 12


def check_markdown(md: str, tracks: int, rows_per_track: int) -> None:
    """Table-1 layout: per track a table, base model first, every metric cell 'value ± half-width'."""
    sections = re.split(r"^## ", md, flags=re.M)
    track_sections = [s for s in sections if s.startswith("Track: ")]
    assert len(track_sections) == tracks
    for section in track_sections:
        table = [line for line in section.splitlines() if line.startswith("|")]
        head, rule, *body = table
        assert head.startswith("| method | content | style | prompt | mean | h-mean |") and "leak" in head
        assert re.fullmatch(r"\|---\|(---:\|)+", rule)
        assert len(body) == rows_per_track and body[0].startswith("| base model (prompt only) |")
        width = head.count("|")
        for line in body:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert line.count("|") == width
            assert all(re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}|–", c) for c in cells[1:-1]), line
            assert cells[-1].isdigit()
    assert "## Per pair" in md


# --------------------------------------------------------------------------------------------- slow: real runs


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_shards_split_the_pairs_and_shard_0_writes_what_one_process_writes(tmp_path, monkeypatch):
    """Two bench processes (here threads, as ``--shard 0/2`` and ``--shard 1/2``) on one --out: each pair runs in
    exactly one shard, shard 0 waits for the other and writes the same rows as a single process."""
    import threading

    calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(bench_run, "execute", _fake_execute(calls))
    common = ["bench", "--pairs", "teddy#3:papercut#5,mushroom:glass,cat#2:knit#1", "--methods", "b4m,lora",
              "--arms", "full,no-rp", "--seeds", "2", "--bootstrap", "200"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    calls.clear()

    out = str(tmp_path / "two")
    second = threading.Thread(target=main, args=([*common, "--out", out, "--shard", "1/2"],), daemon=True)
    second.start()
    assert main([*common, "--out", out, "--shard", "0/2"]) == 0
    second.join(timeout=60)
    assert not second.is_alive()
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 3 * 4  # every run once, in one of the shards
    both = json.loads((tmp_path / "two" / "results.json").read_text())
    strip = ("samples", "fit_s", "sample_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in both["rows"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in single["rows"]
    ]
    assert bench_run.process_slot("1/2") == (1, 2)


def test_a_failing_shard_stops_shard_0_with_its_error(tmp_path, monkeypatch):
    import threading

    def boom(ctx, run, folder):
        if run.pair == "mushroom:glass":
            raise RuntimeError("out of memory")
        return _fake_execute([])(ctx, run, folder)

    monkeypatch.setattr(bench_run, "execute", boom)
    common = ["bench", "--pairs", "teddy#3:papercut#5,mushroom:glass", "--methods", "lora", "--arms", "none",
              "--seeds", "1", "--bootstrap", "200", "--out", str(tmp_path / "b")]  # fmt: skip
    errors = []
    second = threading.Thread(
        target=lambda: errors.append(_catch(lambda: main([*common, "--shard", "1/2"]))), daemon=True
    )
    second.start()
    assert main([*common, "--shard", "0/2"]) == 2  # shard 0 stops with shard 1's error, not a hang
    second.join(timeout=60)
    assert errors and "out of memory" in str(errors[0])


def _catch(fn):
    try:
        return fn()
    except Exception as err:  # the shard's own error, re-raised after it left its note
        return err


def test_rp_sgd_rate_is_the_grid_value_with_the_lowest_training_loss(tmp_path, monkeypatch):
    """``tune_sgd_lr`` on a stand-in fit whose logged losses are known: it picks the argmin (a diverged rate
    counts as infinite), removes the candidates' folders, and a second call reads the cache instead of training."""

    def loss_of(lr):  # lowest at 3e-2; the largest rate diverges
        return float("nan") if lr >= 1.0 else (np.log10(lr) + 1.5) ** 2 + 0.1

    trained = []

    def fake_fit(lr, out):
        trained.append(lr)
        out.mkdir(parents=True)
        rows = [{"step": 10 * i, "loss": loss_of(lr) + 0.01 * i} for i in range(1, 4)]
        (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        Folder(out).record("train_log.jsonl")  # as the training session records its log

    shared = tmp_path / "shared"
    shared.mkdir()
    spec = {"stage2_steps": 30}
    result = bench_fit.tune_sgd_lr(fake_fit, spec, shared)
    assert trained == list(SGD_LR_GRID)
    assert result["chosen"] == 3e-2
    expected = {f"{lr:g}": loss_of(lr) + 0.02 for lr in SGD_LR_GRID}
    for key, value in expected.items():
        assert result["mean_loss"][key] == (float("inf") if np.isnan(value) else pytest.approx(value))
    assert not (shared / "sgd_lr_tuning").exists() or not any((shared / "sgd_lr_tuning").iterdir())
    assert bench_fit.tune_sgd_lr(fake_fit, spec, shared) == result
    assert len(trained) == len(SGD_LR_GRID)  # cached: nothing trained again


def test_quick_bench_end_to_end(tmp_path):
    """The real quick bench (under a minute on 2 quiet cores; the issue wants it in .ci/run): output structure
    only, not the methods' quality. Where a Chromium is installed, the report is also rendered headless."""
    import subprocess
    import time

    out = tmp_path / "quick"
    t0 = time.perf_counter()
    assert main(["bench", "--quick", "--rho", "1/4", "--out", str(out)]) == 0
    elapsed = time.perf_counter() - t0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert {r["method"] for r in rows} == {"base", "b4m", "lora", "direct-merge", "ziplora"}
    assert {r["arm"] for r in rows} == {"full", "fusion-only", "rp-sgd", "rho=1/4"}
    (sgd,) = [r for r in rows if r["arm"] == "rp-sgd"]
    assert sgd["sgd_lr"] in SGD_LR_GRID and len(sgd["sgd_lr_mean_loss"]) == len(SGD_LR_GRID)
    assert sgd["sgd_lr_mean_loss"][f"{sgd['sgd_lr']:g}"] == min(sgd["sgd_lr_mean_loss"].values())
    assert all(r["pair"] == "teddy#3:papercut#5" and r["n"] == 5 for r in rows)
    for r in rows:
        assert all(0 <= r[k] <= 1 for k in ("content_acc", "style_acc", "content_inst", "leak_style_acc"))
        assert all(lo <= hi for lo, hi in r["ci"].values())
    check_markdown((out / "results.md").read_text(), tracks=1, rows_per_track=8)
    check_report_html(out / "report.html", ["teddy#3:papercut#5"], rho=True)
    print(f"quick bench: {elapsed:.0f} s")
    browser = _browser()
    if browser is not None:  # only a browser already installed (apt-get install chromium); CI has none
        shot = tmp_path / "shot.png"
        subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                        (out / "report.html").as_uri()], timeout=120, check=True, capture_output=True)  # fmt: skip
        assert shot.stat().st_size > 0


@pytest.mark.slow
def test_eval_scores_the_base_model(tmp_path, capsys):
    from b4m.world.export import export_concept

    export_concept(tmp_path / "c", content="teddy#3", n=2)
    export_concept(tmp_path / "s", style="papercut#5", n=2)
    (tmp_path / "p.txt").write_text("a teddy in papercut style on the left\na photo of a teddy, small\n")
    argv = ["eval", "--content-images", str(tmp_path / "c"), "--style-images", str(tmp_path / "s"),
            "--prompts", str(tmp_path / "p.txt"), "-n", "1", "--steps", "3", "--out", str(tmp_path / "e.json")]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "e.json").read_text())
    assert results["content"] == "teddy#3" and results["style"] == "papercut#5"
    assert results["scores"]["n"] == 2 and set(results["ci"]) >= {
        "content",
        "style",
        "prompt",
        "leak_content",
    }
    assert "hmean" in capsys.readouterr().out
    assert main(argv) == 2  # never overwrites without --overwrite


def test_training_seed_replicates_run_apart_and_give_the_seed_variance(tmp_path, monkeypatch):
    """--train-seeds: the replicated rows of the first pairs run again at each seed (their own cache keys, after
    the main runs), stay out of the main tables and comparisons, and give within-pair SDs equal to a hand
    computation from the records."""
    calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(bench_run, "execute", _fake_execute(calls))
    out = tmp_path / "bench"
    pairs = "teddy#3:papercut#5,cat#2:knit#1,teddy#0:knit#0"
    argv = ["bench", "--out", str(out), "--pairs", pairs, "--methods", "b4m,lora,ziplora", "--arms",
            "full,content-alone", "--seeds", "2", "--bootstrap", "200", "--train-seeds", "1,2",
            "--replicate-pairs", "2"]  # fmt: skip
    assert main(argv) == 0
    main_runs = 3 * 5  # per pair: base, b4m, lora, ziplora, content-alone
    replicated = 2 * 2 * 3  # 2 pairs x 2 seeds x (b4m, lora, content-alone)
    assert len(calls) == main_runs + replicated
    assert {c[1] for c in calls[main_runs:]} == {"b4m", "lora"}  # replicates come after every main run
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == main_runs and all("train_seed" not in r for r in res["rows"])

    p = plan(BenchConfig(out=out, pairs=[pairs], methods=["b4m,lora,ziplora"], arms=["full,content-alone"],
                         seeds=2, bootstrap=200, train_seeds=["1,2"], replicate_pairs=2))  # fmt: skip
    runs = bench_runs.bench_runs(p)
    by = {(r.method, r.arm, r.pair, r.train_seed): r for r in runs}
    assert len({r.key for r in runs}) == len(runs)  # every replicate has its own cache key

    from b4m.eval.metrics import Scores

    def value(method, arm, pair, seed, k):
        per = json.loads((by[(method, arm, pair, seed)].folder(out) / "done.json").read_text())["per_image"]
        if k != "hmean":
            return float(np.mean(per[k]))
        asked = sum(per["prompt_asked"])  # the h-mean of the run's means, written out
        prompt = sum(per["prompt_hit"]) / asked if asked else 1.0
        return Scores(float(np.mean(per["content"])), float(np.mean(per["style"])), prompt, 0.0, 0.0, 1).hmean

    entries = {e["label"]: e for e in res["seed_variance"]}
    assert set(entries) == {
        "b4m",
        "lora",
        "b4m: stage-1 content adapter alone [A;B_c][C,D_aux]",
        "b4m minus lora",
    }
    reps = ["teddy#3:papercut#5", "cat#2:knit#1"]
    for k in ("hmean", "content_inst", "style_inst"):
        b4m = [[value("b4m", "full", q, s, k) for s in (None, 1, 2)] for q in reps]
        want = math.sqrt(np.mean([np.var(v, ddof=1) for v in b4m]))
        assert entries["b4m"]["within_sd"][k] == pytest.approx(want)
        diff = [
            [value("b4m", "full", q, s, k) - value("lora", "full", q, s, k) for s in (None, 1, 2)]
            for q in reps
        ]
        assert entries["b4m minus lora"]["within_sd"][k] == pytest.approx(
            math.sqrt(np.mean([np.var(v, ddof=1) for v in diff]))
        )
        main_vals = [value("b4m", "full", q, None, k) for q in pairs.split(",")]
        assert entries["b4m"]["between_sd"][k] == pytest.approx(float(np.std(main_vals, ddof=1)))
    assert "## Training-seed variance" in (out / "results.md").read_text()


def test_suite_test_plans_its_replicates_and_bad_seeds_are_refused(tmp_path, capsys):
    from b4m.bench.suites import REPLICATES, SUITES

    p = plan(BenchConfig(out=tmp_path / "b", suite="test", methods=["b4m,lora,ziplora"], arms=["none"]))
    assert p.replicates == REPLICATES["test"]
    runs = bench_runs.bench_runs(p)
    reps = [r for r in runs if r.train_seed is not None]
    assert {r.pair for r in reps} == set(SUITES["test"][:4]) and {r.train_seed for r in reps} == {1, 2}
    assert len(reps) == 4 * 2 * 2  # b4m and lora
    assert plan(BenchConfig(out=tmp_path / "b", suite="dev", methods=["b4m"])).replicates is None
    assert (
        main(["bench", "--out", str(tmp_path / "c"), "--train-seeds", "0,x", "--replicate-pairs", "0"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--train-seeds 0: that is --seed itself" in err
    assert "--train-seeds x: give whole numbers" in err and "--replicate-pairs 0: give at least 1" in err
