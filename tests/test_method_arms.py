"""``b4m bench --arms METHOD:key=value``: option arms for every method (the baselines' tuning budget), their rows,
labels and specs, the fit they pass to the method (never to its sources), their dry-run counts and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bench import _fake_execute

from b4m.bench import run as bench_run
from b4m.bench.catalogue import BenchConfig, plan
from b4m.bench.costs import estimate, training_fits
from b4m.bench.runs import bench_runs
from b4m.cli import main

PAIR = "teddy#3:papercut#5"
ARMS = "full,lora:lr=0.001,ziplora:lambda_merge=0.1"


def _plan(arms: str = ARMS, methods: str = "b4m,lora,ziplora", **sizes):
    return plan(BenchConfig(pairs=[PAIR], methods=[methods], arms=[arms], **sizes))


def test_method_arms_rows_labels_specs_and_keys():
    p = _plan()
    assert p.arms == ("full", "lora:lr=0.001", "ziplora:lambda_merge=0.1")
    runs = bench_runs(p)
    assert [(r.method, r.arm) for r in runs] == [
        ("base", "full"), ("b4m", "full"), ("lora", "full"), ("lora", "lr=0.001"), ("ziplora", "full"),
        ("ziplora", "lambda_merge=0.1"),
    ]  # fmt: skip
    by = {(r.method, r.arm): r for r in runs}
    assert by["lora", "lr=0.001"].label == "lora: lr=0.001"
    assert by["ziplora", "lambda_merge=0.1"].label == "ziplora: lambda_merge=0.1"
    assert by["lora", "lr=0.001"].spec["train"] == {**by["lora", "full"].spec["train"], "lr": 0.001}
    zip_arm, zip_full = by["ziplora", "lambda_merge=0.1"].spec["train"], by["ziplora", "full"].spec["train"]
    assert zip_arm == {**zip_full, "lambda_merge": 0.1} and zip_arm["sources_steps"] == p.sizes["steps"]
    assert len({r.key for r in runs}) == len(runs)
    # a bare key=value arm stays B4M's, after the methods' rows; b4m:... is the same arm
    q = _plan("aux_lr_scale=0.1,b4m:no-rp,lora:steps=200")
    assert [(r.method, r.arm) for r in bench_runs(q)][2:] == [
        ("lora", "full"), ("lora", "steps=200"), ("ziplora", "full"), ("b4m", "aux_lr_scale=0.1"), ("b4m", "no-rp")
    ]  # fmt: skip


def test_fake_bench_compares_b4m_with_the_method_arms(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(bench_run, "execute", _fake_execute(calls))
    out = tmp_path / "bench"
    argv = ["bench", "--out", str(out), "--pairs", PAIR, "--methods", "b4m,lora,ziplora", "--arms", ARMS,
            "--seeds", "1", "--bootstrap", "200"]  # fmt: skip
    assert main(argv) == 0
    assert ("teddy#3:papercut#5", "lora", "lr=0.001") in calls and len(calls) == 6
    results = json.loads((out / "results.json").read_text())
    labels = [c["label"] for entry in results["comparisons"] for c in entry["comparators"]]
    assert "lora: lr=0.001" in labels and "ziplora: lambda_merge=0.1" in labels
    assert "lora: lr=0.001" in (out / "results.md").read_text()


class _Fitted:
    def __init__(self, path: Path) -> None:
        self.path, self.parts = path, {}


def test_fit_run_gives_the_override_to_the_method_not_its_sources(tmp_path, monkeypatch):
    import b4m.methods
    from b4m.bench.fit import fit_run

    fits: list[tuple[str, dict]] = []

    def fake_fit_cached(method, cache, pipe=None, **kwargs):
        fits.append((method, kwargs))
        return _Fitted(tmp_path / f"{method}_{len(fits)}.safetensors")

    monkeypatch.setattr(b4m.methods, "fit_cached", fake_fit_cached)
    p = _plan()
    data = {"content": tmp_path / "c", "content_prompt": "a sks teddy", "style": tmp_path / "s",
            "style_prompt": "in zwx style"}  # fmt: skip
    ctx = SimpleNamespace(root=tmp_path, plan=p, data=lambda pair: data, fresh_pipe=lambda: None, notes={})
    by = {(r.method, r.arm): r for r in bench_runs(p)}

    fit_run(ctx, by["lora", "lr=0.001"], tmp_path / "run")
    assert fits[-1][0] == "lora" and fits[-1][1]["lr"] == 0.001 and fits[-1][1]["steps"] == p.sizes["steps"]
    fit_run(ctx, by["lora", "full"], tmp_path / "run")
    assert "lr" not in fits[-1][1]

    fits.clear()
    fit_run(ctx, by["ziplora", "lambda_merge=0.1"], tmp_path / "run")
    arm_sources = [kw for m, kw in fits[:-1]]
    assert [m for m, _ in fits] == ["lora", "lora", "ziplora"]
    assert fits[-1][1]["lambda_merge"] == 0.1
    assert all("lambda_merge" not in kw and kw["steps"] == p.sizes["steps"] for kw in arm_sources)
    fits.clear()
    fit_run(ctx, by["ziplora", "full"], tmp_path / "run")
    assert [kw for m, kw in fits[:-1]] == arm_sources  # the same source LoRAs (the same cached fits)
    assert "lambda_merge" not in fits[-1][1]


def test_dry_run_counts_a_method_arm_by_hand():
    sizes = {"steps": 10, "stage2_steps": 3, "merge_steps": 5}
    p = _plan("full,lora:steps=200", **sizes)
    (arm,) = training_fits("lora", {"steps": 200}, "builtin")
    assert (arm["steps"], arm["per_step"], arm["image_steps"]) == (200, 1, 200)
    assert training_fits("lora", {"steps": 10, "lr": 1e-3}, "builtin")[0]["kind"] == "trained"
    # b4m: stage 1 2 x 10 steps x 4 images + stage 2 3 x 2; lora: the content source, 10; ziplora: the style
    # source 10 + merger 5 x 2; the arm: 200 x 1
    e = estimate(p)
    assert e["train_samples"] == 80 + 6 + 10 + 10 + 10 + 200
    # a lora at 200 steps is a one-concept lora fit like the sources (a source at 200 steps would be the same)
    assert e["fits"] == {"sources": 3, "stage1": 2, "trained": 2, "training-free": 0, "tuning": 0}
    assert estimate(_plan("full", **sizes))["train_samples"] == 80 + 6 + 10 + 10 + 10


def test_method_arms_budgets(tmp_path):
    from b4m.bench.budgets import budgets

    runs = [r for r in bench_runs(_plan("full,lora:steps=200", steps=10)) if r.method == "lora"]
    (track,) = budgets(runs, [{} for _ in runs])
    assert [(r["label"], r["image_steps"]) for r in track["rows"]] == [("lora", 10), ("lora: steps=200", 200)]


@pytest.mark.parametrize(
    ("arms", "methods", "message"),
    [
        ("lora:bogus=1", "b4m,lora", "--arms lora:bogus=1: bogus is not a lora training option"),
        ("nosuch:lr=1", "b4m,lora", "--arms nosuch:lr=1: unknown method nosuch; known: b4m,"),
        ("ziplora:lambda_merge=x", "ziplora", "--arms ziplora:lambda_merge=x: lambda_merge=x:"),
        ("ziplora:lambda_merge=nan", "ziplora", "lambda_merge takes a finite number"),
        ("lora:lr=0.001", "b4m,ziplora", "--arms lora:lr=0.001: add lora to --methods"),
        ("lora:seed=3", "lora", "--arms lora:seed=3: seed is not a lora training option"),
        ("lora:concept=style", "lora", "concept is not a lora training option"),
        ("lora:content_images=x", "lora", "content_images is not a lora training option"),
        ("lora:no-rp", "lora", "--arms lora:no-rp: write 'no-rp' as key=value"),
    ],
)
def test_bad_method_arms_are_one_line_with_exit_2(tmp_path, capsys, arms, methods, message):
    out = tmp_path / "b"
    assert main(["bench", "--out", str(out), "--pairs", PAIR, "--methods", methods, "--arms", arms]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not out.exists()
