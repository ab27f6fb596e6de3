"""Nothing b4m is handed destroys work: non-finite numbers stop a run, a full disk keeps the last checkpoint,
``--resume`` continues only the same run (stage 1 and stage 2, to bit-identical weights), outputs follow the
umask, killed writes are cleaned up, and the demo never treats files it did not make as its own."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from helpers import image_folder as _folder

import b4m.train.loop as loop_mod
import b4m.train.stage1 as stage1_mod
import b4m.train.stage2 as stage2_mod
from b4m.adapters import load_lora
from b4m.errors import B4MError, DiskFullError
from b4m.options import Stage1Config, Stage2Config
from b4m.owned import MANIFEST
from b4m.train.stage1 import train_stage1
from b4m.train.stage2 import train_stage2


@pytest.fixture
def data(tmp_path):
    return {
        "content": _folder(tmp_path / "content", 0, n=3),
        "aux": [_folder(tmp_path / f"as{i}", 10 + i, n=1, caption=f"a photo in style {i}") for i in range(2)],
        "style": _folder(tmp_path / "style", 1, n=2),
        "aux_contents": [
            _folder(tmp_path / f"ac{i}", 20 + i, n=1, caption=f"a toy number {i}") for i in range(2)
        ],
    }


def _s1(data, out, role="content", **kw):
    images, aux = (
        (data["content"], data["aux"]) if role == "content" else (data["style"], data["aux_contents"])
    )
    cfg = dict(
        images=images,
        prompt="a photo of snq teddy" if role == "content" else "a paper in w@z style",
        aux=[str(a) for a in aux],
        base="tiny",
        out=out,
        steps=6,
        lr=1e-2,
        rank=4,
        resolution=32,
        checkpoint_every=2,
    )
    return Stage1Config(**(cfg | kw))


def _same(a, b):
    fa, fb = load_lora(a).factors, load_lora(b).factors
    assert fa.keys() == fb.keys()
    return all(torch.equal(fa[m][0], fb[m][0]) and torch.equal(fa[m][1], fb[m][1]) for m in fa)


def _strict_json_lines(path):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _nan_at(module, monkeypatch, call):
    real = module.per_sample_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] >= call else out

    monkeypatch.setattr(module, "per_sample_loss", loss)


def test_stage1_stops_at_a_non_finite_loss_keeping_the_last_good_checkpoint(
    tiny_sd, data, tmp_path, monkeypatch
):
    _nan_at(stage1_mod, monkeypatch, call=5)
    out = tmp_path / "run"
    with pytest.raises(
        B4MError,
        match=r"stage 1 \(content\): the loss is not finite at step 5; stopped and kept "
        r"the last good checkpoint .*step-000004 \(the adapter was not saved\)",
    ):
        train_stage1(_s1(data, out), "content", pipe=tiny_sd(), progress=False)
    assert not (out / "adapter.safetensors").exists()
    assert _steps(out) == ["step-000004"]


def _steps(out):
    """The checkpoints in ``out`` (b4m's manifest left out)."""
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.name != MANIFEST)


def test_stage2_stops_at_a_non_finite_loss(tiny_sd, data, tmp_path, monkeypatch):
    c = train_stage1(_s1(data, tmp_path / "c", steps=2), "content", pipe=tiny_sd(), progress=False)
    s = train_stage1(_s1(data, tmp_path / "s", "style", steps=2), "style", pipe=tiny_sd(), progress=False)
    _nan_at(stage2_mod, monkeypatch, call=2)
    cfg = Stage2Config(content=c, style=s, base="tiny", out=tmp_path / "f", stage2_steps=4, resolution=32)
    with pytest.raises(
        B4MError,
        match=r"stage 2: the loss is not finite at step 2; stopped and no checkpoint.*lower --stage2-lr",
    ):
        train_stage2(cfg, pipe=tiny_sd(), progress=False)
    assert not (tmp_path / "f" / "adapter.safetensors").exists()


def test_train_log_records_null_for_nan(tmp_path):
    from b4m.train.loop import TrainLog

    log = TrainLog(tmp_path / "train_log.jsonl")
    log.write(step=1, loss=float("nan"), other=float("inf"))
    log.write(step=2, loss=0.5)
    rows = _strict_json_lines(tmp_path / "train_log.jsonl")
    assert rows[0]["loss"] is None and rows[0]["other"] is None and rows[1]["loss"] == 0.5


def _full_disk_on(monkeypatch, match, nth=1, rust=True):
    """Make the ``nth`` safetensors write whose path contains ``match`` fail as a full disk does (after a partial
    write): with the safetensors writer's own error type and message (``rust``), or an ``OSError``."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file
    seen = {"n": 0}

    def save(tensors, filename, metadata=None):
        if match in str(filename) or match in Path(filename).name:
            seen["n"] += 1
            if seen["n"] == nth:
                with open(filename, "wb") as f:
                    f.write(b"partial")
                if rust:  # what safetensors 0.4-0.6 raise on a real full disk
                    raise SafetensorError(
                        "Error while serializing: I/O error: No space left on device (os error 28)"
                    )
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save)


def _no_temp_files(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") and p.name != MANIFEST] == []


def test_stage1_full_disk_at_a_checkpoint_then_resume_is_bit_identical(tiny_sd, data, tmp_path, monkeypatch):
    full = train_stage1(_s1(data, tmp_path / "a"), "content", pipe=tiny_sd(), progress=False)
    out = tmp_path / "b"
    _full_disk_on(monkeypatch, "state.safetensors", nth=2)  # the checkpoint at step 4
    with pytest.raises(
        DiskFullError, match=r"no space left writing .*step-000004; free space and rerun the same command"
    ):
        train_stage1(_s1(data, out), "content", pipe=tiny_sd(), progress=False)
    monkeypatch.undo()
    assert _steps(out) == ["step-000002"] and _no_temp_files(out)
    # Another run's settings or data are refused, naming what differs.
    with pytest.raises(B4MError, match=r"belongs to another run; differs: --lr 0.02 \(recorded: 0.01\)"):
        train_stage1(_s1(data, out, lr=2e-2, resume=True), "content", pipe=tiny_sd(), progress=False)
    with pytest.raises(B4MError, match=r"differs: --rank 8 \(recorded: 4\)"):
        train_stage1(_s1(data, out, rank=8, resume=True), "content", pipe=tiny_sd(), progress=False)
    caption = data["aux"][0] / "00.txt"
    caption.write_text("a photo in another style")
    with pytest.raises(B4MError, match=r"differs: the images, captions"):
        train_stage1(_s1(data, out, resume=True), "content", pipe=tiny_sd(), progress=False)
    caption.write_text("a photo in style 0")
    resumed = train_stage1(_s1(data, out), "content", pipe=tiny_sd(), progress=False)  # the same command
    assert _same(full, resumed)


@pytest.mark.parametrize("rust", [True, False])
def test_stage1_full_disk_at_the_final_save_keeps_the_trained_state(
    tiny_sd, data, tmp_path, monkeypatch, rust
):
    full = train_stage1(_s1(data, tmp_path / "a"), "content", pipe=tiny_sd(), progress=False)
    out = tmp_path / "b"
    _full_disk_on(monkeypatch, "adapter.safetensors", rust=rust)
    with pytest.raises(
        DiskFullError,
        match=r"no space left writing .*adapter.safetensors; free space and rerun the same command to continue; "
        r"the trained state is kept in .*step-000006: free space and rerun the same command",
    ):
        train_stage1(_s1(data, out), "content", pipe=tiny_sd(), progress=False)
    monkeypatch.undo()
    assert not (out / "adapter.safetensors").exists() and _no_temp_files(out)
    assert _steps(out) == ["step-000006"]  # the last step, not the checkpoint before it
    resumed = train_stage1(_s1(data, out), "content", pipe=tiny_sd(), progress=False)  # only saves
    assert _same(full, resumed)


def test_full_disk_at_the_final_save_without_checkpoints_keeps_the_weights(
    tiny_sd, data, tmp_path, monkeypatch
):
    """``--checkpoint-every 0`` and a disk too full for a checkpoint as well: the trained tensors go to the
    system's temporary folder, and the message says where."""
    full = train_stage1(
        _s1(data, tmp_path / "a", checkpoint_every=0), "content", pipe=tiny_sd(), progress=False
    )
    out = tmp_path / "b"
    _full_disk_on(monkeypatch, "adapter.safetensors")
    _full_disk_on(monkeypatch, "state.safetensors")
    with pytest.raises(
        DiskFullError, match=r"the trained tensors are kept in (\S+trained_weights.safetensors)"
    ) as err:
        train_stage1(_s1(data, out, checkpoint_every=0), "content", pipe=tiny_sd(), progress=False)
    monkeypatch.undo()
    rescue = re.search(r"kept in (\S+\.safetensors)", str(err.value)).group(1)
    from safetensors.torch import load_file

    saved, want = load_file(rescue), load_lora(full).factors
    assert len(saved) == 2 * len(want)
    for layer, (
        u,
        v,
    ) in want.items():  # U = [A; B], V = [C, D]: the learnable parts are U's last rows, V's last columns
        b, d = saved[f"{layer}.B"], saved[f"{layer}.D"]
        assert torch.equal(b, u[u.shape[0] - b.shape[0] :]) and torch.equal(
            d, v[:, v.shape[1] - d.shape[1] :]
        )


@pytest.fixture
def pair(tiny_sd, data, tmp_path):
    c = train_stage1(_s1(data, tmp_path / "c", steps=2), "content", pipe=tiny_sd(), progress=False)
    s = train_stage1(_s1(data, tmp_path / "s", "style", steps=2), "style", pipe=tiny_sd(), progress=False)
    return c, s


def _s2(pair, out, **kw):
    c, s = pair
    cfg = dict(content=c, style=s, base="tiny", out=out, stage2_steps=6, stage2_lr=1e-2, resolution=32)
    return Stage2Config(**(cfg | {"checkpoint_every": 2} | kw))


def test_stage2_killed_then_resumed_is_bit_identical(tiny_sd, pair, tmp_path, monkeypatch):
    full = train_stage2(_s2(pair, tmp_path / "a"), pipe=tiny_sd(), progress=False)
    real_save = loop_mod.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the checkpoint at step 2

    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_stage2(_s2(pair, tmp_path / "b"), pipe=tiny_sd(), progress=False)
    monkeypatch.undo()
    with pytest.raises(B4MError, match=r"differs: --stage2-lr 0.005"):
        train_stage2(_s2(pair, tmp_path / "b", stage2_lr=5e-3), pipe=tiny_sd(), progress=False)
    resumed = train_stage2(_s2(pair, tmp_path / "b"), pipe=tiny_sd(), progress=False)  # the same command
    assert _same(full, resumed)


def test_stage2_full_disk_at_a_checkpoint_then_resume_is_bit_identical(tiny_sd, pair, tmp_path, monkeypatch):
    full = train_stage2(_s2(pair, tmp_path / "a"), pipe=tiny_sd(), progress=False)
    out = tmp_path / "b"
    _full_disk_on(monkeypatch, "state.safetensors", nth=2)
    with pytest.raises(
        DiskFullError, match=r"no space left writing .*step-000004; free space and rerun the same command"
    ):
        train_stage2(_s2(pair, out), pipe=tiny_sd(), progress=False)
    monkeypatch.undo()
    assert _steps(out) == ["step-000002"] and _no_temp_files(out)
    resumed = train_stage2(_s2(pair, out), pipe=tiny_sd(), progress=False)
    assert _same(full, resumed)


def test_a_killed_write_leaves_nothing_after_the_next_start(tiny_sd, data, tmp_path):
    out = tmp_path / "run"
    first = train_stage1(_s1(data, out, steps=4), "content", pipe=tiny_sd(), progress=False)
    (out / "checkpoints" / ".ckpt-abc123").mkdir()  # what kill -9 during a checkpoint write leaves
    (out / "checkpoints" / ".ckpt-abc123" / MANIFEST).write_text(
        (out / "checkpoints" / MANIFEST).read_text()
    )  # save_checkpoint writes its manifest first
    (out / "checkpoints" / ".ckpt-abc123" / "state.json").write_text("{")
    (out / ".adapter.safetensors.x1y2.b4m-tmp").write_bytes(b"partial")
    train_stage1(_s1(data, out, steps=4, resume=True), "content", pipe=tiny_sd(), progress=False)
    assert _no_temp_files(out) and first.is_file()


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    from b4m.adapters import save_lora
    from b4m.train.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        path = save_lora(tmp_path / "a.safetensors", {"x.to_q": (torch.ones(4, 2), torch.ones(2, 4))})
        p = torch.nn.Parameter(torch.zeros(2))
        ckpt = save_checkpoint(tmp_path / "ck", 1, {"p": p}, torch.optim.SGD([p], lr=0.1), torch.Generator())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert stat.S_IMODE(ckpt.stat().st_mode) == dir_mode
    assert stat.S_IMODE((ckpt / "state.safetensors").stat().st_mode) == file_mode


def test_shared_files_hold_no_absolute_paths(tiny_sd, data, tmp_path):
    path = train_stage1(
        _s1(data, tmp_path / "runs" / "content", steps=2), "content", pipe=tiny_sd(), progress=False
    )
    header = json.dumps(load_lora(path).meta)
    assert str(tmp_path) not in header
    assert load_lora(path).meta["images"] == "../../content"  # relative to the adapter's folder


def test_reports_and_exports_follow_the_umask(tmp_path):
    """``report.html`` used to be created 0600 and world exports 0700 whatever the umask."""
    from b4m.eval.report import write_report
    from b4m.world.export import export_concept

    (tmp_path / "results.json").write_text(json.dumps({"title": "t", "scores": {}, "grids": {}}))
    old = os.umask(0o022)
    try:
        report = write_report(tmp_path / "results.json")
        refs = export_concept(tmp_path / "refs", content="teddy#3", n=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert stat.S_IMODE(refs.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in refs.iterdir()} == {0o644}


def test_a_resumed_run_logs_every_step_once(tiny_sd, data, tmp_path, monkeypatch):
    """Killed after logging step 20 but before its checkpoint: the run continues from step 10, and its log holds
    steps 10, 20, 30 once each, as an uninterrupted run's does."""
    full = tmp_path / "a"
    train_stage1(_s1(data, full, steps=30, checkpoint_every=10), "content", pipe=tiny_sd(), progress=False)
    real, calls = loop_mod.save_checkpoint, {"n": 0}

    def die_before_the_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "save_checkpoint", die_before_the_second)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train_stage1(_s1(data, out, steps=30, checkpoint_every=10), "content", pipe=tiny_sd(), progress=False)
    monkeypatch.undo()
    assert [r["step"] for r in _strict_json_lines(out / "train_log.jsonl")] == [10, 20]
    train_stage1(_s1(data, out, steps=30, checkpoint_every=10), "content", pipe=tiny_sd(), progress=False)

    def steps(folder):
        return [
            {k: v for k, v in r.items() if k != "time_s"}
            for r in _strict_json_lines(folder / "train_log.jsonl")
        ]

    assert [r["step"] for r in steps(out)] == [10, 20, 30] and steps(out) == steps(full)
