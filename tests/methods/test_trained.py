"""lora, joint and b4m through the contract: initialisation, what trains, and B4M unchanged by the wrapper."""

import json
from pathlib import Path

import pytest
import torch

from b4m.adapters.codec import load_lora
from b4m.adapters.deltas import target_linears
from b4m.adapters.inject import DEFAULT_TARGETS
from b4m.errors import B4MError
from b4m.methods import fit_method
from b4m.options import Stage1Config, Stage2Config
from b4m.paths import resolve_recorded

QUICK = {"lr": 1e-2, "rank": 4, "resolution": 32, "base": "tiny"}


def test_lora_starts_at_zero_and_trains_only_the_adapter(world, tiny_sdxl, tmp_path):
    data = world(tiny_sdxl().unet)
    zero = fit_method(
        "lora",
        pipe=tiny_sdxl(),
        progress=False,
        steps=0,
        out=tmp_path / "z",
        content_images=data["content_images"],
        content_prompt=data["content_prompt"],
        **QUICK,
    )
    layers = target_linears(tiny_sdxl().unet, DEFAULT_TARGETS)
    for name, (u, v) in load_lora(zero.path).factors.items():
        n = layers[name].in_features
        assert u.abs().sum() == 0 and 0 < v.abs().max() <= n**-0.5  # peft's init: dW = 0, V ~ U(+-1/sqrt(n))
    pipe = tiny_sdxl()
    fitted = fit_method(
        "lora",
        pipe=pipe,
        progress=False,
        steps=3,
        out=tmp_path / "t",
        content_images=data["content_images"],
        content_prompt=data["content_prompt"],
        **QUICK,
    )
    fresh = dict(tiny_sdxl().unet.named_parameters())
    for name, p in pipe.unet.named_parameters():
        if ".delta." not in name:  # every base weight is frozen and untouched
            assert torch.equal(p, fresh[name.replace(".base_layer", "")]), name
    assert all(u.abs().sum() > 0 for u, _ in load_lora(fitted.path).factors.values())
    log = (tmp_path / "t" / "train_log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["step"] == 3


def test_lora_of_a_style_learns_the_style_images(world, tiny_sdxl, tmp_path):
    data = world(tiny_sdxl().unet)
    fitted = fit_method(
        "lora",
        pipe=tiny_sdxl(),
        progress=False,
        steps=1,
        out=tmp_path / "s",
        concept="style",
        style_images=data["style_images"],
        style_prompt=data["style_prompt"],
        **QUICK,
    )
    meta = load_lora(fitted.path).meta
    # the file records its images relative to its own folder (no user folder names in a shared file)
    assert meta["role"] == "style" and not Path(meta["images"]).is_absolute()
    assert resolve_recorded(meta["images"], fitted.path.parent).resolve() == data["style_images"].resolve()
    assert meta["prompt"] == "a paper in w@z style"
    with pytest.raises(B4MError, match="--concept style: give --style-images"):
        fit_method("lora", concept="style", content_images=data["content_images"], out=tmp_path / "e")


def test_joint_trains_on_one_content_and_one_style_sample_per_step(world, tiny_sdxl, tmp_path, monkeypatch):
    import b4m.methods.lora as lora_mod

    data = world(tiny_sdxl().unet)
    seen = []
    real = lora_mod.sample_batch

    def spy(sets, counts, gen, scheduler, *rest):
        seen.append(([s.prompts[0] for s in sets], counts))
        return real(sets, counts, gen, scheduler, *rest)

    monkeypatch.setattr(lora_mod, "sample_batch", spy)
    keys = ("content_images", "content_prompt", "style_images", "style_prompt")
    fitted = fit_method(
        "joint",
        pipe=tiny_sdxl(),
        progress=False,
        steps=2,
        out=tmp_path / "j",
        **{k: data[k] for k in keys},
        **QUICK,
    )
    assert seen == [(["a photo of snq teddy", "a paper in w@z style"], [1, 1])] * 2
    record = json.loads((tmp_path / "j" / "train_log.jsonl").read_text().splitlines()[-1])
    assert {"loss_0", "loss_1"} <= set(record)
    assert record["loss"] == pytest.approx((record["loss_0"] + record["loss_1"]) / 2, rel=1e-5)
    assert set(load_lora(fitted.path).meta["trigger_words"]) == {"snq", "w@z"}


def test_b4m_through_the_contract_equals_the_stages_run_directly(world, tiny_sd, tmp_path):
    """The registry's b4m is a thin wrapper: same files, bit for bit, as stage 1 + stage 1 + stage 2."""
    from b4m.train.stage1 import train_stage1
    from b4m.train.stage2 import train_stage2

    data = world(tiny_sd().unet)
    keys = ("content_images", "content_prompt", "style_images", "style_prompt", "aux_styles", "aux_contents")
    fitted = fit_method(
        "b4m",
        pipe=tiny_sd(),
        progress=False,
        steps=3,
        stage2_steps=2,
        checkpoint_every=0,
        out=tmp_path / "w",
        **{k: data[k] for k in keys},
        **QUICK,
    )
    shared = dict(base="tiny", steps=3, lr=1e-2, rank=4, resolution=32, checkpoint_every=0)
    c = train_stage1(
        Stage1Config(
            images=data["content_images"],
            prompt=data["content_prompt"],
            aux=data["aux_styles"],
            out=tmp_path / "d" / "content",
            **shared,
        ),
        "content",
        pipe=tiny_sd(),
        progress=False,
    )
    s = train_stage1(
        Stage1Config(
            images=data["style_images"],
            prompt=data["style_prompt"],
            aux=data["aux_contents"],
            out=tmp_path / "d" / "style",
            **shared,
        ),
        "style",
        pipe=tiny_sd(),
        progress=False,
    )
    f = train_stage2(
        Stage2Config(
            content=c,
            style=s,
            base="tiny",
            out=tmp_path / "d",
            stage2_steps=2,
            resolution=32,
            content_images=data["content_images"],
            content_prompt=data["content_prompt"],
            style_images=data["style_images"],
            style_prompt=data["style_prompt"],
        ),
        pipe=tiny_sd(),
        progress=False,
    )
    for mine, theirs in (
        (tmp_path / "w" / "content" / "adapter.safetensors", c),
        (tmp_path / "w" / "style" / "adapter.safetensors", s),
        (fitted.path, f),
    ):
        a, b = load_lora(mine).factors, load_lora(theirs).factors
        assert set(a) == set(b)
        for m in a:
            assert torch.equal(a[m][0], b[m][0]) and torch.equal(a[m][1], b[m][1])
    assert load_lora(fitted.path).meta["stage"] == 2


def _stage1(pipe, data, tmp_path, name, **kw):
    from b4m.train.stage1 import train_stage1

    cfg = Stage1Config(
        images=data["content_images"],
        prompt=data["content_prompt"],
        aux=kw.pop("aux", data["aux_styles"]),
        out=tmp_path / name,
        base="tiny",
        steps=1,
        lr=1e-2,
        rank=4,
        resolution=32,
        checkpoint_every=0,
        **kw,
    )
    return load_lora(train_stage1(cfg, "content", pipe=pipe, progress=False))


def _parts(lora):
    from b4m.adapters.plp import split_dims

    out = {}
    for m, (u, v) in lora.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], 0.5)
        out[m] = (u[d_out:], v[:, d_in:])
    return out


def test_official_leaky_routing_lets_the_auxiliary_loss_reach_b(world, tiny_sd, tmp_path):
    """At step 1 D = 0, so under strict routing B's update cannot depend on the auxiliary images; leaky it does."""
    from .conftest import image_folder

    data = world(tiny_sd().unet)
    other = [
        str(image_folder(tmp_path / f"o{i}", 90 + i, n=1, caption=f"a photo in style {i}")) for i in range(2)
    ]
    runs = {}
    for routing in ("strict", "leaky"):
        for name, aux in (("a", data["aux_styles"]), ("b", other)):
            runs[routing, name] = _parts(
                _stage1(tiny_sd(), data, tmp_path, f"{routing}{name}", aux=aux, routing=routing)
            )
    same = all(torch.equal(runs["strict", "a"][m][0], runs["strict", "b"][m][0]) for m in runs["strict", "a"])
    differ = any(
        not torch.equal(runs["leaky", "a"][m][0], runs["leaky", "b"][m][0]) for m in runs["leaky", "a"]
    )
    assert same and differ


def test_official_aux_learning_rate_is_a_tenth(world, tiny_sd, tmp_path):
    data = world(tiny_sd().unet)
    parts = _parts(_stage1(tiny_sd(), data, tmp_path, "r", routing="leaky", aux_lr_scale=0.1))
    b_max = max(b.abs().max().item() for b, _ in parts.values())
    d_max = max(d.abs().max().item() for _, d in parts.values())
    # Adam's first step moves every parameter by about lr (1e-2) in size: B by lr, D by lr / 10.
    assert 0.9e-2 < b_max <= 1.01e-2 and 0.9e-3 < d_max <= 1.01e-3
    assert load_lora(tmp_path / "r" / "adapter.safetensors").meta["routing"] == "leaky"


def test_b4m_official_defaults_and_reinitialised_half(world, tiny_sd, tmp_path):
    from b4m.train.stage2 import fuse

    data = world(tiny_sd().unet)
    keys = ("content_images", "content_prompt", "style_images", "style_prompt", "aux_styles", "aux_contents")
    fitted = fit_method(
        "b4m-official",
        pipe=tiny_sd(),
        progress=False,
        steps=2,
        stage2_steps=0,
        checkpoint_every=0,
        out=tmp_path / "o",
        **{k: data[k] for k in keys},
        **QUICK,
    )
    lora = load_lora(fitted.path)
    assert lora.meta["orth"] == "approx" and lora.meta["config"]["optimizer"] == "adamw"
    assert lora.meta["reinit_every"] == 2
    plain, _ = fuse(
        tmp_path / "o" / "content" / "adapter.safetensors", tmp_path / "o" / "style" / "adapter.safetensors"
    )
    got, want = _parts(lora), _parts(plain)
    for i, m in enumerate(sorted(got)):
        if i % 2 == 0:
            assert got[m][0].abs().sum() == 0 and got[m][1].abs().sum() == 0
        else:
            assert torch.equal(got[m][0], want[m][0]) and torch.equal(got[m][1], want[m][1])
    assert any(want[m][0].abs().sum() > 0 for m in sorted(got)[::2])  # something was really reset
