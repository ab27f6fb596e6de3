"""Watching a run learn: previews every N steps (bit-identical adapter with and without them), the TensorBoard
tracker read back, default preview prompts per stage, and bad values refused in one line."""

import json

import numpy as np
import pytest
import torch
from helpers import image_folder as _folder
from PIL import Image

from b4m.adapters import load_lora
from b4m.errors import B4MError
from b4m.options import Stage1Config, Stage2Config
from b4m.owned import Folder
from b4m.train.previews import combined_prompt, stage1_plan, stage2_plan
from b4m.train.stage1 import train_stage1
from b4m.train.stage2 import train_stage2


@pytest.fixture
def data(tmp_path):
    return {
        "content": _folder(tmp_path / "content", 0),
        "style": _folder(tmp_path / "style", 1),
        "aux": [
            str(_folder(tmp_path / f"as{i}", 10 + i, n=1, caption=f"a photo in style {i}")) for i in range(2)
        ],
    }


def _cfg(data, out, **kw):
    base = dict(
        images=data["content"],
        prompt="a photo of snq teddy",
        aux=data["aux"],
        base="tiny",
        out=out,
        steps=4,
        lr=1e-2,
        rank=4,
        resolution=32,
        checkpoint_every=0,
    )
    return Stage1Config(**(base | kw))


def _tensors(path):
    lora = load_lora(path)
    return {k: torch.cat([u.flatten(), v.flatten()]) for k, (u, v) in lora.factors.items()}


def test_previews_and_tensorboard_leave_the_adapter_bit_identical(tiny_sd, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pipes = tiny_sd(), tiny_sd()
    torch.manual_seed(123)  # the global RNG must come out of a run with previews as out of one without
    plain = train_stage1(_cfg(data, tmp_path / "plain"), "content", pipe=pipes[0], progress=False)
    after_plain = torch.random.get_rng_state()
    torch.manual_seed(123)
    watched = train_stage1(
        _cfg(data, tmp_path / "watched", sample_every=2, sample_steps=2, report_to="tensorboard"),
        "content",
        pipe=pipes[1],
        progress=False,
    )
    assert torch.equal(torch.random.get_rng_state(), after_plain)
    a, b = _tensors(plain), _tensors(watched)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    out = tmp_path / "watched"
    steps = sorted(p.name for p in (out / "samples").iterdir() if p.is_dir())
    assert steps == ["step-00002", "step-00004"]
    for step in steps:
        folder = out / "samples" / step
        info = json.loads((folder / "prompts.json").read_text())
        assert [e["prompt"] for e in info["images"]] == stage1_plan(
            "content", "a photo of snq teddy", []
        ).prompts
        assert Image.open(folder / "sheet.png").width >= 128 * 3
        assert all(Folder(folder).owns(e["file"]) for e in info["images"]) and Folder(folder).owns(
            "sheet.png"
        )
    assert Folder(out).owns("samples") and Folder(out / "samples").owns("step-00002")
    # same seed, same prompt: step 2 and step 4 differ only by what was learned
    first = np.asarray(Image.open(out / "samples/step-00002/00.png"), dtype=float)
    last = np.asarray(Image.open(out / "samples/step-00004/00.png"), dtype=float)
    assert first.shape == last.shape == (32, 32, 3)

    runs = [p for p in (out / "tensorboard").iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["stage-1-content"]
    events = EventAccumulator(str(runs[0]), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/loss_target", "lr/group0"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [4]
    assert "samples" in tags["images"] and [e.step for e in events.Images("samples")] == [2, 4]
    event_files = [p.name for p in runs[0].iterdir() if p.name.startswith("events.")]
    assert event_files and all(Folder(runs[0]).owns(n) for n in event_files)


def test_stage2_previews_the_combined_prompt_at_three_strengths(tiny_sd, data, tmp_path):
    content = train_stage1(_cfg(data, tmp_path / "c", steps=1), "content", pipe=tiny_sd(), progress=False)
    style = train_stage1(
        _cfg(data, tmp_path / "s", steps=1, images=data["style"], prompt="a cup in wzk papercut style"),
        "style",
        pipe=tiny_sd(),
        progress=False,
    )
    kw = dict(content=content, style=style, base="tiny", stage2_steps=2, stage2_lr=1e-2, resolution=32,
              checkpoint_every=0)  # fmt: skip
    plain = train_stage2(Stage2Config(out=tmp_path / "f0", **kw), pipe=tiny_sd(), progress=False)
    watched = train_stage2(
        Stage2Config(out=tmp_path / "f1", sample_every=2, sample_steps=1, **kw),
        pipe=tiny_sd(),
        progress=False,
    )
    a, b = _tensors(plain), _tensors(watched)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the strengths were restored exactly
    info = json.loads((tmp_path / "f1/samples/step-00002/prompts.json").read_text())
    assert [(e["prompt"], e["content_scale"], e["style_scale"]) for e in info["images"]] == [
        ("snq teddy in wzk papercut style", 1.0, 1.0),
        ("snq teddy in wzk papercut style", 1.0, 0.5),
        ("snq teddy in wzk papercut style", 0.5, 1.0),
    ]
    files = [tmp_path / "f1/samples/step-00002" / e["file"] for e in info["images"]]
    pixels = [np.asarray(Image.open(f), dtype=float) for f in files]
    assert all(p.shape == (32, 32, 3) for p in pixels)


def test_default_preview_prompts():
    assert stage1_plan("content", "a photo of snq teddy", []).prompts == [
        "a photo of snq teddy",
        "a photo of snq teddy on the left",
        "a photo of snq teddy, on a blue background",
    ]
    style = stage1_plan(
        "style", "a cup in wzk papercut style", ["a photo of a teddy", "a photo of a car, small"]
    )
    assert style.prompts == [
        "a cup in wzk papercut style",
        "a teddy in wzk papercut style",
        "a car in wzk papercut style",
    ]
    assert stage1_plan("style", "wzk papercut", ["x"]).prompts == ["wzk papercut", "x"]
    assert combined_prompt("a photo of snq teddy", "a cup in wzk papercut style") == (
        "snq teddy in wzk papercut style"
    )
    assert combined_prompt("snq teddy", "wzk papercut") == "snq teddy, wzk papercut"
    plan = stage2_plan("a photo of snq teddy", "a cup in wzk papercut style", None)
    assert plan.scales == [(1.0, 1.0), (1.0, 0.5), (0.5, 1.0)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_every": -1}, "--sample-every -1"),
        ({"sample_steps": 0}, "--sample-steps 0"),
        ({"sample_prompts": [" "]}, "--sample-prompts"),
        ({"quantize_base": "int4"}, "--quantize-base int4"),
    ],
)
def test_bad_values_fail_in_one_line_before_the_model_loads(data, tmp_path, options, message):
    with pytest.raises(B4MError, match=message.replace("-", r"\-")):
        train_stage1(_cfg(data, tmp_path / "bad", **options), "content", progress=False)
    assert not (tmp_path / "bad").exists()


def test_report_to_wandb_without_wandb_is_one_line(data, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(B4MError, match="--report-to wandb: wandb is not installed"):
        train_stage1(_cfg(data, tmp_path / "w", report_to="wandb"), "content", progress=False)


def test_cli_report_to_wandb_missing_exits_2(data, tmp_path, monkeypatch, capsys):
    import importlib.util

    from b4m.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    code = main(["train", "content", "--images", str(data["content"]), "--no-mcp", "--prompt", "a snq teddy",
                 "--out", str(tmp_path / "o"), "--report-to", "wandb"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--report-to wandb" in err[0]
