"""The thread policy (b4m.threads): chosen once, recorded in the run, reused on resume."""

import json

import pytest
import torch

from b4m import threads
from b4m.errors import B4MError


def test_precedence_recorded_then_explicit_then_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "1")
    assert threads.choose() == 1
    assert threads.choose(requested=2) == 2
    assert threads.choose(requested=2, recorded=1) == 1
    monkeypatch.setenv(threads.ENV_VAR, "lots")
    with pytest.raises(B4MError, match="B4M_THREADS='lots'"):
        threads.choose()


def test_automatic_choice_is_made_once_per_process(monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "_chosen", None)
    loads = iter([0.0, 5.0])
    monkeypatch.setattr(threads, "measure_other_load", lambda interval=0.3: next(loads))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    try:
        first = threads.apply()  # a quiet machine: 2
        second = threads.apply()  # busy now, but the process keeps its count
        assert first == second == 2 == torch.get_num_threads()
        assert threads.apply(recorded=1) == 1 == torch.get_num_threads()  # a resumed run wins
    finally:
        torch.set_num_threads(before)


def test_base_model_resume_uses_the_recorded_count_whatever_the_load(tmp_path, monkeypatch):
    from test_base_model import TINY

    from b4m.models.base.config import BaseModelConfig
    from b4m.models.base.train import THREADS_FILE, train_base_model

    cfg = BaseModelConfig(
        **{**TINY.to_dict(), "pool_size": 32, "vae_steps": 2, "train_steps": 4, "batch_size": 4,
           "vae_batch_size": 4, "checkpoint_every": 2, "log_every": 2, "lr_warmup_steps": 1}
    )  # fmt: skip
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(threads.ENV_VAR, "1")
        train_base_model(BaseModelConfig.from_dict({**cfg.to_dict(), "train_steps": 2}), tmp_path,
                            progress=False)  # fmt: skip
        assert json.loads((tmp_path / THREADS_FILE).read_text()) == {"threads": 1}
        monkeypatch.setenv(threads.ENV_VAR, "2")  # the machine looks different when the run resumes
        train_base_model(cfg, tmp_path, progress=False)
        assert torch.get_num_threads() == 1
        log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
        assert [r["threads"] for r in log if r["phase"] == "threads"] == [1, 1]
        assert {r["threads"] for r in log if r["phase"] == "diffusion"} == {1}
    finally:
        torch.set_num_threads(before)
