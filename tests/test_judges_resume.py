"""A stopped judges training run continues from its checkpoint to the weights of an uninterrupted run."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import b4m.models.judges.train as judges_train
from b4m.cli import main
from b4m.errors import B4MError
from b4m.models.judges.config import CONFIG_NAME, WEIGHTS_NAME, JudgesTrainConfig
from b4m.models.judges.resume import CHECKPOINTS, Resumer
from b4m.train.checkpoint import latest_checkpoint

TINY = dict(steps=5, batch_size=16, pool_size=48, refresh=4, n_eval=1, checkpoint_every=2, threads=1)


class Stop(Exception):
    pass


def stop_after(monkeypatch, n_steps):
    """Make the training loop fail in its step ``n_steps`` (0-based), as a killed process would stop there."""
    calls = {"n": 0}
    real = judges_train.augment

    def augment(*args, **kwargs):
        if calls["n"] == n_steps:
            raise Stop
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(judges_train, "augment", augment)


def stopped_run(out, monkeypatch):
    """A tiny run into ``out`` that fails in its step 3, after its checkpoint at step 2."""
    with monkeypatch.context() as m:
        stop_after(m, 3)
        with pytest.raises(Stop):
            judges_train.train_judges(out, progress=False, **TINY)


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    whole = judges_train.train_judges(tmp_path / "whole", progress=False, **TINY)
    assert not (tmp_path / "whole" / CHECKPOINTS).exists()  # removed once the judges are saved

    out = tmp_path / "stopped"
    stopped_run(out, monkeypatch)
    ckpt = latest_checkpoint(out / CHECKPOINTS)
    assert ckpt is not None and ckpt.name == "step-000002"

    resumed = judges_train.train_judges(out, progress=True, **TINY)
    printed = capsys.readouterr().out
    assert "continuing from" in printed and "rendered a pool" not in printed
    a, b = load_file(tmp_path / "whole" / WEIGHTS_NAME), load_file(out / WEIGHTS_NAME)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("final_losses", "unique_training_images", "steps"):
        assert resumed["training"][key] == whole["training"][key]
    assert resumed["clean"] == whole["clean"]
    assert json.loads((out / CONFIG_NAME).read_text())["metrics"]["training"]["steps"] == TINY["steps"]
    assert not (out / CHECKPOINTS).exists()


def test_other_settings_are_refused_before_any_work_and_overwrite_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "run"
    stopped_run(out, monkeypatch)
    with pytest.raises(B4MError, match=r"other settings \(--lr 0.003 there, 0.001 now\).*--overwrite"):
        judges_train.train_judges(out, progress=False, **{**TINY, "lr": 1e-3})
    # runtime settings may change: the thread count recorded at the start is kept
    cfg = dataclasses.replace(JudgesTrainConfig(), **{**TINY, "threads": 2, "checkpoint_every": 3})
    assert Resumer(out, cfg).threads == 1
    (out / CHECKPOINTS / "mine.txt").write_text("a user's file")
    Resumer(out, cfg, overwrite=True)
    assert latest_checkpoint(out / CHECKPOINTS) is None
    assert (out / CHECKPOINTS / "mine.txt").read_text() == "a user's file"  # never b4m's to remove


def test_cli_refuses_a_damaged_checkpoint_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    stopped_run(out, monkeypatch)
    ckpt = latest_checkpoint(out / CHECKPOINTS)
    (ckpt / "state.safetensors").write_bytes(b"\x00" * 10)
    flags = ["--steps", "5", "--batch-size", "16", "--pool-size", "48", "--refresh", "4", "--n-eval", "1"]
    capsys.readouterr()
    assert main(["judges", "train", *flags, "--checkpoint-every", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "damaged checkpoint" in err and str(ckpt) in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "--steps 0: give at least 1"),
        (["--pool-size", "8"], "--pool-size 8: give at least --batch-size (128)"),
        (["--refresh", "-1"], "--refresh -1: give 0 to --pool-size"),
        (["--checkpoint-every", "-5"], "--checkpoint-every -5: give 0 (none) or a number of steps"),
    ],
)
def test_cli_refuses_settings_the_loop_cannot_run(tmp_path, capsys, flags, message):
    assert main(["judges", "train", *flags, "--out", str(tmp_path / "j")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"b4m: error: {message}") and len(err.splitlines()) == 1
    assert not (tmp_path / "j").exists()
