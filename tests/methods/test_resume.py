"""Checkpoint and resume of the trained baselines: a killed run, run again by the same command, ends bit-identical
to an uninterrupted one; another run's checkpoint is refused, naming what differs."""

import json
import re

import pytest
import torch

import b4m.train.loop as loop_mod
from b4m.adapters.codec import load_lora
from b4m.errors import B4MError
from b4m.methods import fit_method
from b4m.owned import MANIFEST

QUICK = {"lr": 1e-2, "rank": 4, "resolution": 32, "base": "tiny", "steps": 6, "checkpoint_every": 2}
_LORA = ("content_images", "content_prompt")
_JOINT = (*_LORA, "style_images", "style_prompt")
_MERGE = (*_JOINT, "content_lora", "style_lora")
INPUTS = {"lora": _LORA, "joint": _JOINT, "qrlora": _JOINT, "ziplora": _MERGE, "duolora": _MERGE}


def _fit(method, data, tiny_sdxl, out, **kw):
    options = {k: data[k] for k in INPUTS[method]} | QUICK | kw
    return fit_method(method, pipe=tiny_sdxl(), progress=False, out=out, **options)


def _killed_after_checkpoint(monkeypatch, nth):
    """Make the ``nth`` checkpoint write of the loop the last thing the run does (as a kill right after it)."""
    real = loop_mod.save_checkpoint
    seen = {"n": 0}

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        seen["n"] += 1
        if seen["n"] == nth:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)


def _same_files(a, b):
    names = sorted(p.name for p in a.glob("*.safetensors"))
    assert names == sorted(p.name for p in b.glob("*.safetensors")) and names
    for name in names:
        fa, fb = load_lora(a / name).factors, load_lora(b / name).factors
        assert fa.keys() == fb.keys()
        for m in fa:
            assert torch.equal(fa[m][0], fb[m][0]) and torch.equal(fa[m][1], fb[m][1]), (name, m)


def _steps(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.name != MANIFEST)


def _log(out):
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


@pytest.mark.parametrize(
    ("method", "nth", "step"),
    [
        ("lora", 1, 2),
        ("joint", 2, 4),
        ("ziplora", 2, 4),
        ("duolora", 1, 2),
        ("qrlora", 1, 2),
        pytest.param(
            "qrlora", 3, 8, marks=pytest.mark.slow
        ),  # its second loop; the first is in the default run
    ],
)
def test_a_killed_run_resumes_to_the_same_adapter(world, tiny_sdxl, tmp_path, monkeypatch, method, nth, step):
    """qrlora's third checkpoint is of its second loop (style, run steps 7..12): the finished content loop is
    restored from it, not trained again."""
    data = world(tiny_sdxl().unet)
    full = _fit(method, data, tiny_sdxl, tmp_path / "full")
    _killed_after_checkpoint(monkeypatch, nth)
    with pytest.raises(KeyboardInterrupt):
        _fit(method, data, tiny_sdxl, tmp_path / "run")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    assert _steps(tmp_path / "run") == [f"step-{step:06d}"]
    resumed = _fit(method, data, tiny_sdxl, tmp_path / "run")  # the same command, run again
    _same_files(tmp_path / "full", tmp_path / "run")
    assert _log(tmp_path / "full") == _log(tmp_path / "run")
    if method == "ziplora":  # the per-step record of a resumed run covers the steps before the kill too
        assert resumed.info["max_move_per_step"] == full.info["max_move_per_step"]


def test_another_runs_checkpoint_is_refused_and_overwrite_starts_over(
    world, tiny_sdxl, tmp_path, monkeypatch
):
    data = world(tiny_sdxl().unet)
    out = tmp_path / "run"
    _killed_after_checkpoint(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        _fit("lora", data, tiny_sdxl, out)
    monkeypatch.undo()
    ckpt = r".*checkpoints/step-000002 belongs to another run; differs: "
    with pytest.raises(B4MError, match=rf"--out {re.escape(str(out))}: {ckpt}--lr 0.02 \(recorded: 0.01\);"):
        _fit("lora", data, tiny_sdxl, out, lr=2e-2)
    with pytest.raises(B4MError, match=r"differs: --rank 8 \(recorded: 4\)"):
        _fit("lora", data, tiny_sdxl, out, rank=8)
    image = data["content_images"] / "00.png"
    original = image.read_bytes()
    image.write_bytes((data["style_images"] / "00.png").read_bytes())
    with pytest.raises(
        B4MError, match=r"differs: the images, captions or source files \(their bytes or prompts changed\)"
    ):
        _fit("lora", data, tiny_sdxl, out)
    image.write_bytes(original)
    with pytest.raises(B4MError, match=r"--method 'joint' \(recorded: 'lora'\)"):
        _fit("joint", data, tiny_sdxl, out)
    assert _steps(out) == ["step-000002"]  # refused: nothing touched
    _fit("lora", data, tiny_sdxl, out, lr=2e-2, overwrite=True)  # starts over with the new setting
    _fit("lora", data, tiny_sdxl, tmp_path / "fresh", lr=2e-2)
    _same_files(tmp_path / "fresh", out)
    assert _log(tmp_path / "fresh") == _log(out)


def test_a_finished_run_is_reused_and_checkpoint_every_0_writes_none(world, tiny_sdxl, tmp_path, capsys):
    data = world(tiny_sdxl().unet)
    first = _fit("lora", data, tiny_sdxl, tmp_path / "a").path
    before = first.read_bytes()
    assert _fit("lora", data, tiny_sdxl, tmp_path / "a").path == first  # the same command: nothing to train
    assert "nothing to train" in capsys.readouterr().err and first.read_bytes() == before
    with pytest.raises(B4MError, match=r"finished adapter of another run; differs: --lr 0.02.*--overwrite"):
        _fit("lora", data, tiny_sdxl, tmp_path / "a", lr=2e-2)
    _fit("lora", data, tiny_sdxl, tmp_path / "b", checkpoint_every=0)
    assert not (tmp_path / "b" / "checkpoints").exists()
    with pytest.raises(B4MError, match="--checkpoint-every"):
        _fit("lora", data, tiny_sdxl, tmp_path / "c", checkpoint_every=-1)


@pytest.mark.parametrize("where", [pytest.param("stage1-style", marks=pytest.mark.slow), "stage2"])
def test_a_killed_b4m_run_resumes_to_the_same_files(world, tiny_sdxl, tmp_path, monkeypatch, where):
    """``b4m run b4m`` killed in its style stage (right after its checkpoint) or in stage 2, then run again by
    the same command: every file (content, style, fused) equals an uninterrupted run's, bit for bit, and the
    finished stages are reused, not trained again."""
    import b4m.train.stage2 as stage2_mod

    data = world(tiny_sdxl().unet)
    keys = ("content_images", "content_prompt", "style_images", "style_prompt", "aux_styles", "aux_contents")
    options = {k: data[k] for k in keys} | QUICK | {"steps": 4, "stage2_steps": 4}

    def fit(out):
        return fit_method("b4m", pipe=tiny_sdxl(), progress=False, out=out, **options)

    fit(tmp_path / "full")
    if where == "stage1-style":
        _killed_after_checkpoint(monkeypatch, 2)  # each stage-1 run checkpoints once, at step 2 of 4
    else:
        real, calls = stage2_mod.per_sample_loss, {"n": 0}

        def loss_then_die(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(stage2_mod, "per_sample_loss", loss_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "run")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    done = ("content",) if where == "stage1-style" else ("content", "style")
    before = {s: (tmp_path / "run" / s / "adapter.safetensors").stat().st_mtime_ns for s in done}
    fit(tmp_path / "run")  # the same command
    for stage in ("content", "style"):
        _same_files(tmp_path / "full" / stage, tmp_path / "run" / stage)
    _same_files(tmp_path / "full", tmp_path / "run")
    after = {s: (tmp_path / "run" / s / "adapter.safetensors").stat().st_mtime_ns for s in done}
    assert after == before  # finished stages were not trained again
