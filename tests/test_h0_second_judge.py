"""benchmarks/h0_second_judge.py: the grid cut inverts image_grid, Cohen's kappa, and an end-to-end run on a tiny
hand-made bench folder scored by the shipped judges as both judges."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


h0 = _load("h0_second_judge")


@pytest.mark.parametrize(
    ("n", "ncols", "hw"), [(40, 8, (32, 32)), (7, 3, (32, 32)), (1, 1, (5, 9)), (6, 6, (16, 16))]
)
def test_cut_grid_inverts_image_grid(n, ncols, hw):
    from b4m.world.sheet import image_grid

    rng = np.random.default_rng(n * 100 + ncols)
    images = rng.integers(0, 256, size=(n, *hw, 3), dtype=np.uint8)
    assert np.array_equal(h0.cut_grid(image_grid(list(images), ncols=ncols), n, ncols), images)
    # float (C, H, W) images on the 8-bit grid, as the bench passes its tensors: quantised exactly
    floats = [np.moveaxis(im, -1, 0).astype(np.float32) / 255.0 for im in images]
    assert np.array_equal(h0.cut_grid(image_grid(floats, ncols=ncols), n, ncols), images)


def test_cut_grid_rejects_a_wrong_layout():
    from b4m.world.sheet import image_grid

    images = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    grid = image_grid(list(images), ncols=3)
    with pytest.raises(ValueError):
        h0.cut_grid(grid, 6, 4)  # the width does not divide into 4 columns
    with pytest.raises(ValueError):
        h0.cut_grid(grid, 6, 2)  # 3 rows of 2: the height does not divide into 3 rows
    with pytest.raises(ValueError):
        h0.cut_grid(grid.crop((0, 0, grid.width, grid.height - 1)), 6, 3)


def _raters(table):
    """Two raters' 0/1 verdicts from a 2x2 table [[both 1, A 1 B 0], [A 0 B 1, both 0]]."""
    (a11, a10), (a01, a00) = table
    a = [1] * a11 + [1] * a10 + [0] * a01 + [0] * a00
    b = [1] * a11 + [0] * a10 + [1] * a01 + [0] * a00
    return a, b


def test_kappa_on_known_tables():
    # by hand: n = 50, p_o = (20 + 15) / 50 = 0.7; pA = 25 / 50 = 0.5, pB = 30 / 50 = 0.6;
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert h0.kappa(*_raters([[20, 5], [10, 15]])) == pytest.approx(0.4)
    # perfect agreement with both classes present
    assert h0.kappa(*_raters([[12, 0], [0, 30]])) == pytest.approx(1.0)
    # complete disagreement, balanced: p_o = 0, p_e = 0.5, kappa = -1
    assert h0.kappa(*_raters([[0, 10], [10, 0]])) == pytest.approx(-1.0)
    # exact independence: the joint counts are the products of the margins (pA = 0.4, pB = 0.6)
    assert h0.kappa(*_raters([[6, 4], [9, 6]])) == pytest.approx(0.0, abs=1e-12)
    # independent random raters: about 0
    rng = np.random.default_rng(0)
    assert abs(h0.kappa(rng.random(20000) < 0.3, rng.random(20000) < 0.6)) < 0.03
    # one rater constant, the other not: agreement only by chance, kappa 0
    assert h0.kappa([1, 1, 1, 1], [1, 0, 1, 1]) == pytest.approx(0.0)
    # both constant and equal: undefined (0/0), reported as None, agreement 1
    assert h0.kappa([1, 1, 1], [1, 1, 1]) is None
    assert h0.kappa([0, 0], [0, 0]) is None
    stats = h0.agreement([1, 1, 1], [1, 1, 1])
    assert stats["agree"] == 1.0 and stats["kappa"] is None and stats["rate_a"] == stats["rate_b"] == 1.0
    with pytest.raises(ValueError):
        h0.kappa([1, 0], [1])
    with pytest.raises(ValueError):
        h0.kappa([0.5], [1])


def _fake_run(bench, pair, method, arm, drawn, prompts, attributes, seeds, refs):
    """A run folder as the bench writes it: samples.png by image_grid, done.json with the shipped judges'
    per-image verdicts on the same images (rendered: already 8-bit, so the PNG changes nothing)."""
    import torch

    from b4m.bench.runs import slug
    from b4m.eval.scoring import WorldScorer
    from b4m.world.render import Scene, render
    from b4m.world.sheet import image_grid

    content, _, style = drawn.partition(":")
    cells = np.stack([render(Scene.of(content, style, **a), 500 + 10 * i + s)
                      for i, a in enumerate(attributes) for s in range(seeds)])  # fmt: skip
    images = torch.from_numpy(cells).permute(0, 3, 1, 2).float() / 255.0
    c, _, st = pair.partition(":")
    content_refs, style_refs = refs if refs is not None else (images, images)
    per = WorldScorer().per_image(images, content_refs, style_refs, c, st,
                                  [a for a in attributes for _ in range(seeds)],
                                  [q for q in prompts for _ in range(seeds)])  # fmt: skip
    spec = {"pair": pair, "method": method, "arm": arm,
            "sample": {"seeds": seeds, "steps": None, "prompts": prompts, "attributes": attributes}}  # fmt: skip
    folder = bench / "runs" / slug(pair) / f"{method}_{arm}_0123456789abcdef"
    folder.mkdir(parents=True)
    image_grid(list(images), ncols=seeds).save(folder / "samples.png")
    (folder / "done.json").write_text(
        json.dumps({"spec": spec, "per_image": {k: v.tolist() for k, v in per.items()}})
    )


def _refs(bench, pair):
    from PIL import Image

    from b4m.bench.runs import slug
    from b4m.data.folders import load_images, read_image_folder
    from b4m.world.render import Scene, render

    c, _, s = pair.partition(":")
    out = []
    for which, scene in (("content", Scene.of(c, "photo")), ("style", Scene.of("house", s))):
        folder = bench / "data" / slug(pair) / which
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(render(scene, 70 + k)).save(folder / f"{k:04d}.png")
        out.append(load_images(read_image_folder(folder).paths, 32))
    return tuple(out)


def test_end_to_end_with_the_shipped_judges_as_both(tmp_path):
    from b4m.models.judges.config import DEFAULT_DIR
    from b4m.world.refs import PairRefs, prompt_set

    bench = tmp_path / "bench"
    pair = "teddy#3:papercut#5"
    prompts, attributes = (x[:2] for x in prompt_set(PairRefs(content="teddy#3", style="papercut#5")))
    refs = _refs(bench, pair)
    # b4m draws the target; "lora" another teddy and another papercut: both verdicts occur in the pool
    _fake_run(bench, pair, "b4m", "full", pair, prompts, attributes, 3, refs)
    _fake_run(bench, pair, "lora", "full", "teddy#0:papercut#2", prompts, attributes, 3, refs)
    other = "cat#2:knit#1"  # no exported references: the verdicts need none
    _fake_run(bench, other, "b4m", "full", other, prompts[:1], attributes[:1], 2, None)
    (bench / "runs" / "stray").mkdir()  # neither done.json nor samples.png: not a run
    real = bench / "runs" / "photo_painting" / "b4m_full_0123456789abcdef"  # a --pairs-file run: skipped
    real.mkdir(parents=True)
    (real / "done.json").write_text(json.dumps({"spec": {"track": "pairs-file", "pair": "photo:painting"}}))
    (real / "samples.png").write_bytes(b"not read")

    md = tmp_path / "h0.md"
    out = h0.main(["--judges", str(DEFAULT_DIR), "--bench", str(bench), "--md", str(md),
                   "--json", str(tmp_path / "h0.json")])  # fmt: skip
    assert out == md
    res = json.loads((tmp_path / "h0.json").read_text())
    assert res["skipped_pairs_file_runs"] == 1
    assert res["runs"] == 3 and res["images"] == 6 + 6 + 2 and res["runs_without_refs"] == 1
    for metric in ("content_inst", "style_inst"):
        overall = res["overall"][metric]
        assert overall["n"] == 14
        assert overall["agree"] == 1.0 and overall["agree_recorded"] == 1.0
        assert overall["rate_a"] == overall["rate_b"]
        assert 0.0 < overall["rate_a"] < 1.0, "the fake bench must hold both verdicts"
        assert overall["kappa"] == pytest.approx(1.0)
        for row in res["rows"]:
            r = row[metric]
            assert r["agree"] == 1.0 and r["agree_recorded"] == 1.0
            # one verdict only in a row: kappa undefined (None), never a number other than 1
            assert r["kappa"] == pytest.approx(1.0) if r["rate_a"] not in (0.0, 1.0) else r["kappa"] is None
    assert [r["label"] for r in res["rows"]] == ["lora/full", "b4m/full"]
    assert [r["pairs"] for r in res["rows"]] == [1, 2]
    (sign,) = res["signs"]
    assert sign["label"] == "b4m/full" and sign["same"] == 1
    (p,) = sign["pairs"]
    assert p["pair"] == pair and p["diff_a"] == p["diff_b"] and p["same_sign"]
    (v,) = res["verdicts"]  # one judge twice: the same paired verdicts
    assert v["label"] == "lora/full" and v["pairs"] == [pair]
    assert v["content_inst"]["A"] == v["content_inst"]["B"] and v["style_inst"]["A"] == v["style_inst"]["B"]
    text = md.read_text()
    assert "Same verdict under both judges: content instance 1 of 1 rows, style instance 1 of 1." in text
    assert text.startswith("# H0") and "Command: `python benchmarks/h0_second_judge.py --judges" in text
    assert text.count("| **overall** | 2 | 14 | ") == 2 and "-0.000" not in text


def _per_image(content_inst, style_inst, n=8):
    ones = np.ones(n)
    return {"content": ones, "style": ones, "prompt_hit": ones, "prompt_asked": ones,
            "content_inst": np.full(n, float(content_inst)), "style_inst": np.full(n, float(style_inst))}  # fmt: skip


def test_paired_verdicts_follow_each_judge():
    """16 pairs: under judge A, B4M names the content on every image and LoRA on none (an exact sign-flip p of
    2 / 2^16: "better"); under judge B both name it everywhere (a zero difference: "equivalent" within ±0.1). The
    style verdicts are identical and tied under both judges. A training-seed replicate is left out."""
    runs = []
    for k in range(16):
        pair = f"teddy#{k}:papercut#{k}"
        for method, a, b in (("b4m", 1, 1), ("lora", 0, 1)):
            spec = {"pair": pair, "method": method, "arm": "full"}
            runs.append({"spec": spec, "A": _per_image(a, 1), "B": _per_image(b, 1)})
    runs.append({"spec": {"pair": "teddy#0:papercut#0", "method": "lora", "arm": "full", "train_seed": 1},
                 "A": _per_image(1, 0), "B": _per_image(1, 0)})  # fmt: skip
    (v,) = h0.paired_verdicts(runs, n_boot=200)
    assert v["label"] == "lora/full" and len(v["pairs"]) == 16
    a, b = v["content_inst"]["A"], v["content_inst"]["B"]
    assert a["diff"] == 1.0 and a["ci95"] == [1.0, 1.0] and a["verdict"] == "better"
    assert a["p_holm"] == pytest.approx(2 / 2**16)
    assert b["diff"] == 0.0 and b["verdict"] == "equivalent" and b["p_holm"] == 1.0
    for judge in "AB":
        assert v["style_inst"][judge]["diff"] == 0.0 and v["style_inst"][judge]["verdict"] == "equivalent"
