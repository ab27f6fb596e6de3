"""``b4m bench --pairs-file``: the pairs file's checks (one line naming the file and key, exit 2, before any work),
the --dry-run plan and its cost arithmetic, the paper's encoders against a direct transformers computation (CSD
from safetensors only), pairwise vs centroid cosines, a tiny 1 x 1 run end to end; slow: a 2 x 2 file with three
methods on tiny SDXL and FLUX pipelines, resumed after a kill, and sharded over two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pairs_fixtures import image_folder, save_encoders, save_pipeline, write_pairs_file

from b4m.bench import run as bench_run
from b4m.cli import main

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD pipeline folder, tiny encoders and a 2 x 2 pairs file (built once per module)."""
    folder = tmp_path_factory.mktemp("pairs")
    base = save_pipeline("sd", folder / "sd")
    enc = save_encoders(folder / "enc")
    pairs = write_pairs_file(folder, 2, 2, base=str(base))
    return {"folder": folder, "base": base, "pairs": pairs, **enc}


def _encoder_args(world) -> list[str]:
    return ["--clip", str(world["clip"]), "--dino", str(world["dino"]), "--csd", str(world["csd"])]


def _edit(path: Path, out: Path, change) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)
    out.write_text(yaml.safe_dump(data))
    return out


# --------------------------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["contents"]["c0"].update(images="refs/nope"), "contents.c0.images"),
        (lambda d: d["contents"]["c1"].pop("token"), "contents.c1.token"),
        (lambda d: d["styles"]["s0"].update(colour="red"), "styles.s0.colour"),
        (lambda d: d["styles"]["s1"].pop("aux"), "styles.s1.aux"),
        (lambda d: d.update(prompts=["a {content} in {styel} style"]), "prompts[0]"),
        (lambda d: d.update(prompts=["a {content} alone"]), "prompts[0]"),
        (lambda d: d.update(pairs=["c0:s9"]), "pairs[0]"),
        (lambda d: d.update(pairs=["c0:s0", "c0:s0"]), "pairs"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["contents"].update({"bad:name": d["contents"]["c0"]}), "contents.bad:name"),
    ],
)
def test_a_bad_pairs_file_is_one_line_naming_file_and_key(world, change, key, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "execute", lambda *a: pytest.fail("bad input must stop before any work"))
    bad = _edit(world["pairs"], world["folder"] / "bad.yaml", change)
    out = tmp_path / "b"
    argv = [
        "bench",
        "--pairs-file",
        str(bad),
        "--methods",
        "lora,b4m",
        "--out",
        str(out),
        *_encoder_args(world),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("b4m: error:"), err
    assert key in err and ("bad.yaml" in err or "refs/nope" in err), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--csd", "model.pt"], "--csd"),
        (["--pairs", "c0:s0"], "--pairs"),
        (["--resolution", "30"], "--resolution"),
        (["--gpu-costs", "warp=9"], "--gpu-costs"),
        (["--dino", "/no/such/dino"], "--dino"),
    ],
)
def test_bad_options_of_a_pairs_file_bench(world, extra, option, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "execute", lambda *a: pytest.fail("bad input must stop before any work"))
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not a pickle b4m would open")
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--pairs-file", str(world["pairs"]), "--methods", "lora", "--out", str(tmp_path / "b"),
            *_encoder_args(world)]  # fmt: skip
    for k in range(0, len(extra), 2):  # an option given twice: the later wins
        argv += extra[k : k + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err, err
    assert not (tmp_path / "b").exists()


def test_real_model_options_need_a_pairs_file_and_a_base(world, tmp_path, capsys):
    assert main(["bench", "--base", str(world["base"]), "--out", str(tmp_path / "b")]) == 2
    assert "--base" in capsys.readouterr().err
    nobase = _edit(world["pairs"], world["folder"] / "nobase.yaml", lambda d: d.pop("base"))
    assert main(["bench", "--pairs-file", str(nobase), "--dry-run", "--methods", "lora"]) == 2
    assert "--base" in capsys.readouterr().err
    assert (
        main(
            ["bench", "--pairs-file", str(world["pairs"]), "--methods", "lora", "--out", str(tmp_path / "c")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--dino" in err and "--clip" in err


# --------------------------------------------------------------------------------------------- dry run


def test_dry_run_counts_fits_after_reuse_and_writes_nothing(world, tmp_path, capsys):
    from b4m.bench.catalogue import BenchConfig, plan
    from b4m.bench.costs import estimate

    argv = ["bench", "--pairs-file", str(world["pairs"]), "--methods", "lora,direct-merge,b4m", "--dry-run",
            "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "pairs: 4 (2 contents x 2 styles)" in text and "estimated GPU hours" in text
    assert not (tmp_path / "b").exists()

    cfg = BenchConfig(pairs_file=world["pairs"], methods=["lora,direct-merge,b4m"], dry_run=True)
    e = estimate(plan(cfg))
    # sources: one LoRA per concept (2 contents + 2 styles; the lora row is the content source itself);
    # B4M: one stage 1 per concept, one stage 2 per pair; direct merge: training-free, one per pair
    assert e["fits"] == {"sources": 4, "stage1": 4, "trained": 4, "training-free": 4, "tuning": 0}
    assert e["runs"] == 4 * 4 and e["images"] == 16 * 2 * 4  # 2 prompts x 4 seeds per run
    # the SD preset: 1000 steps for the sources and stage 1 (4 samples a step), 100 stage-2 steps (2 a step)
    assert e["train_samples"] == 4 * 1000 + 4 * 1000 * 4 + 4 * 100 * 2
    gpu = e["costs"]["gpu"]
    train_h = e["train_samples"] * 0.82 / (gpu["peak_tflops"] * gpu["train_mfu"]) / 3600
    sample_h = e["images"] * 25 * 2 * 0.40 / (gpu["peak_tflops"] * gpu["sample_mfu"]) / 3600
    assert e["hours"]["training"] == pytest.approx(train_h) and e["hours"]["sampling"] == pytest.approx(
        sample_h
    )
    faster = estimate(plan(BenchConfig(pairs_file=world["pairs"], methods=["lora,direct-merge,b4m"],
                                       gpu_costs=["peak_tflops=624"], dry_run=True)))  # fmt: skip
    assert faster["hours"]["training"] == pytest.approx(train_h / 2)


# --------------------------------------------------------------------------------------------- encoders


def test_csd_features_equal_a_direct_transformers_computation(world, tmp_path):
    from safetensors.torch import save_file

    from b4m.errors import B4MError
    from b4m.eval.csd import load_csd
    from b4m.eval.encoders import CLIP_MEAN, CLIP_STD, preprocess_images

    tower, style = world["tower"], world["style"]
    images = torch.rand(3, 3, 32, 40)
    pixels = preprocess_images(images, 30, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tower(pixel_values=pixels).pooler_output @ style, dim=-1)
    for source in (world["csd"], world["csd"].parent):  # the file, or the folder holding it
        feats = load_csd(source).image_features(images)
        assert feats.shape == (3, 12) and torch.allclose(feats, ref, atol=1e-5)
    # transformers' key names with the tower's config.json
    tf = tmp_path / "tf"
    tf.mkdir()
    save_file({**{f"vision_model.{k}": v.contiguous() for k, v in tower.state_dict().items()},
               "style_projection": style}, str(tf / "model.safetensors"))  # fmt: skip
    tower.config.save_pretrained(tf)
    assert torch.allclose(load_csd(tf).image_features(images), ref, atol=1e-5)
    # never a pickle
    (tmp_path / "checkpoint.pth").write_bytes(b"\x80\x04")
    with pytest.raises(B4MError, match="only from a .safetensors file"):
        load_csd(tmp_path / "checkpoint.pth")


def test_protocol_scores_are_pairwise_averages_and_centroids(world):
    """Each per-image score against an independent numpy computation on the encoders' own features."""
    from b4m.eval.protocol import load_protocol_scorer

    scorer = load_protocol_scorer(str(world["clip"]), str(world["dino"]), str(world["csd"]))
    gen, crefs, srefs = torch.rand(4, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(2, 3, 32, 32)
    prompts = ["a photo of teddy in paper style"] * 2 + ["a teddy"] * 2
    per = scorer.per_image(gen, crefs, srefs, None, None, [{}] * 4, prompts)

    def unit(x):
        x = x.double().numpy()
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for key, enc, refs in (("content", scorer.dino, crefs), ("style", scorer.clip, srefs),
                           ("style_csd", scorer.csd, srefs)):  # fmt: skip
        g, r = unit(enc.image_features(gen)), unit(enc.image_features(refs))
        pairs = [[float(g[i] @ r[j]) for j in range(len(r))] for i in range(len(g))]
        assert per[key] == pytest.approx([sum(row) / len(row) for row in pairs], abs=1e-6)
        centroid = r.mean(0) / np.linalg.norm(r.mean(0))
        assert per[f"{key}_centroid"] == pytest.approx(g @ centroid, abs=1e-6)
    # the mean over images of the per-image pairwise averages is the mean over all generated x reference pairs
    g, r = unit(scorer.dino.image_features(gen)), unit(scorer.dino.image_features(crefs))
    assert per["content"].mean() == pytest.approx((g @ r.T).mean(), abs=1e-6)
    text = unit(scorer.clip.text_features(prompts))
    assert per["prompt_hit"] == pytest.approx((unit(scorer.clip.image_features(gen)) * text).sum(1), abs=1e-6)


# --------------------------------------------------------------------------------------------- runs


def _run_args(
    world, out: Path, pairs: Path | None = None, methods: str = "lora,direct-merge,b4m"
) -> list[str]:
    return ["bench", "--pairs-file", str(pairs or world["pairs"]), "--methods", methods, "--steps", "2",
            "--stage2-steps", "1", "--merge-steps", "1", "--sample-steps", "2", "--seeds", "1", "--resolution",
            "32", "--rank", "4", "--bootstrap", "100", "--out", str(out), *_encoder_args(world)]  # fmt: skip


def test_a_one_by_one_pairs_file_runs_end_to_end(world, tmp_path):
    one = _edit(world["pairs"], world["folder"] / "one.yaml",
                lambda d: d.update(pairs=["c0:s1"], prompts=["a {content} in {style} style"]))  # fmt: skip
    out = tmp_path / "one"
    assert main(_run_args(world, out, one, "lora")) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["method"], r["pair"], r["track"], r["n"]) for r in rows] == [
        ("base", "c0:s1", "pairs-file", 1), ("lora", "c0:s1", "pairs-file", 1)]  # fmt: skip
    for r in rows:
        assert {
            "content",
            "style",
            "style_csd",
            "content_centroid",
            "style_centroid",
            "prompt",
            "hmean",
        } <= set(r)
        assert (
            r["peak_rss_mb"] > 0 and r["fit_s"] >= 0 and "peak_cuda_mb" not in r or r["peak_cuda_mb"] is None
        )
        assert (
            r["fit_cpu_s"] >= 0 and r["sample_cpu_s"] > 0
        )  # this process's CPU seconds (b4m.bench.resources)
    assert results["prompts"]["c0:s1"] == ["a teddy0 in paper1 style"]  # generated with the tokens
    record = json.loads((out / rows[1]["samples"]).with_name("done.json").read_text())
    assert record["adapter"].startswith("cache/lora/")
    md = (out / "results.md").read_text()
    assert "## Track: your pairs (c0:s1)" in md and "style (CSD)" in md and "peak" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # references, two rows of samples, plots


# --------------------------------------------------------------------------------------------- slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "B4M_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "b4m.cli", *args]


def _fits(kind: Path) -> int:
    """Cached sub-fits of one kind: its folders (a manifest file may sit beside them)."""
    return sum(p.is_dir() for p in kind.iterdir())


def _strip(rows: list[dict]) -> list[dict]:
    return [
        {
            k: v
            for k, v in r.items()
            if k not in ("fit_s", "sample_s", "fit_cpu_s", "sample_cpu_s", "peak_rss_mb", "peak_cuda_mb")
        }
        for r in rows
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sdxl", "flux"])
def test_two_by_two_three_methods_resume_after_a_kill(kind, world, tmp_path):
    base = save_pipeline(kind, tmp_path / kind)
    pairs = write_pairs_file(tmp_path, 2, 2, base=str(base))
    out = tmp_path / "bench"
    args = _run_args(world, out, pairs)
    # killed while running: SIGKILL once the first runs are finished
    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(_cli(args), env=_env(), stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(out.glob("runs/*/*/done.json"))) < 3 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]  # still running: kill it
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/done.json")}
    assert finished, "the first runs did not finish"
    rerun = subprocess.run(_cli(args), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 4 * 4 and results["computed"] == 16 - len(finished)
    for path, mtime in finished.items():  # a finished run is reused as it is
        assert path.stat().st_mtime_ns == mtime
    # per-concept reuse: one source LoRA per concept, one B4M stage 1 per concept
    assert _fits(out / "cache" / "lora") == 4
    assert _fits(out / "cache" / "b4m-stage1-content") == 2
    assert _fits(out / "cache" / "b4m-stage1-style") == 2
    # a rerun of the finished bench computes nothing
    again = subprocess.run(_cli(args), env=_env(), check=True, capture_output=True, text=True)
    assert "(0 computed now)" in again.stdout


@pytest.mark.slow
def test_two_shards_write_the_rows_of_one_process(world, tmp_path):
    args = _run_args(world, tmp_path / "one")[1:]
    one = subprocess.run(_cli(["bench", *args]), env=_env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    two = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in args]
    procs = [subprocess.Popen(_cli(["bench", *two, "--shard", f"{k}/2"]), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for k in (1, 0)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()[-2000:]
    both = json.loads((tmp_path / "two" / "results.json").read_text())
    assert _strip(both["rows"]) == _strip(single["rows"])
    # the shared concepts were fitted once, by whichever shard came first
    assert _fits(tmp_path / "two" / "cache" / "lora") == 4


def test_the_example_pairs_file_is_valid(tmp_path):
    """examples/pairs.yaml (the README's) passes every check once its folders exist."""
    import shutil

    from b4m.bench.pairs_file import load_pairs_file

    example = shutil.copy(ROOT / "examples" / "pairs.yaml", tmp_path / "pairs.yaml")
    data = yaml.safe_load(Path(example).read_text())
    for section in ("contents", "styles"):
        for k, concept in enumerate(data[section].values()):
            image_folder(tmp_path / concept["images"], k)
            for i, aux in enumerate(concept["aux"]):
                image_folder(tmp_path / aux, 50 + i, n=1, caption="a caption")
    spec = load_pairs_file(example, need_aux=True)
    assert spec.pairs == (("teddy", "papercut"), ("teddy", "watercolor"), ("vase", "papercut"),
                          ("vase", "watercolor"))  # fmt: skip
    assert spec.base == "stabilityai/stable-diffusion-xl-base-1.0" and len(spec.prompts) == 5
    assert spec.generation_prompts("teddy:papercut")[1] == "a snq teddy bear in wzk papercut style on a beach"
    assert spec.scoring_prompts("teddy:papercut")[1] == "a teddy bear in papercut style on a beach"
