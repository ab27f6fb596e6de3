"""Stage 1 (PLP + MCP) and stage 2 (fusion + Riemannian preconditioning) on tiny SD/SDXL pipelines."""

import pytest
import torch
from helpers import image_folder as _folder

import b4m.train.loop as loop_mod
from b4m.adapters import PLPSpec, inject_plp, load_lora, mcp_routing
from b4m.diffusion.pipeline import encode_images, encode_prompts, per_sample_loss, training_scheduler
from b4m.errors import B4MError
from b4m.options import Stage1Config, Stage2Config
from b4m.train.stage1 import train_stage1
from b4m.train.stage2 import fuse, train_stage2


@pytest.fixture
def data(tmp_path):
    return {
        "content": _folder(tmp_path / "content", 0, n=3),
        "style": _folder(tmp_path / "style", 1, n=2),
        "aux_styles": [
            _folder(tmp_path / f"as{i}", 10 + i, n=1, caption=f"a photo in style {i}") for i in range(3)
        ],
        "aux_contents": [
            _folder(tmp_path / f"ac{i}", 20 + i, n=1, caption=f"a teddy number {i}") for i in range(2)
        ],
    }


def _s1(data, tmp_path, role, **kw):
    images, aux = (
        (data["content"], data["aux_styles"]) if role == "content" else (data["style"], data["aux_contents"])
    )
    prompt = "a photo of snq teddy" if role == "content" else "a paper in w@z style"
    base = dict(
        images=images,
        prompt=prompt,
        aux=[str(a) for a in aux],
        base="tiny",
        out=tmp_path / role,
        steps=4,
        lr=1e-2,
        rank=4,
        resolution=32,
        checkpoint_every=0,
    )
    base.update(kw)
    return Stage1Config(**base)


def test_batched_mcp_step_routes_gradients_strictly(tiny_sdxl):
    """On an SDXL UNet: L_target never reaches D, L_aux never reaches B (content stage), in one forward."""
    pipe = tiny_sdxl()
    pipe.unet.requires_grad_(False)
    adapter = inject_plp(pipe.unet, PLPSpec(rank=4))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.05)
    g = torch.Generator().manual_seed(0)
    latents = encode_images(pipe, torch.rand(4, 3, 32, 32, generator=g))
    cond = encode_prompts(pipe, ["a photo of snq teddy", "a in style", "b in style", "c in style"], 32)
    noise = torch.randn(1, *latents.shape[1:], generator=g).expand_as(latents)
    sched = training_scheduler(pipe)
    t = torch.full((4,), 500)

    def grads(rows):
        for p in adapter.parameters("BD"):
            p.grad = None
        with mcp_routing(1, "B"):
            losses = per_sample_loss(pipe.unet, sched, latents, cond, noise, t)
        losses[rows].sum().backward()
        return {
            k: sum(0.0 if p.grad is None else p.grad.abs().sum().item() for p in adapter.parameters(k))
            for k in "BD"
        }

    target = grads(slice(0, 1))
    assert target["D"] == 0.0 and target["B"] > 0
    aux = grads(slice(1, 4))
    assert aux["B"] == 0.0 and aux["D"] > 0


@pytest.mark.parametrize("role", ["content", "style"])
def test_stage1_trains_only_its_parts_and_keeps_frozen(tiny_sd, data, tmp_path, role):
    path = train_stage1(_s1(data, tmp_path, role), role, pipe=tiny_sd(), progress=False)
    lora = load_lora(path)
    meta = lora.meta
    assert meta["role"] == role and meta["stage"] == 1 and meta["base_model"] == "tiny"
    assert meta["trigger_words"] == (["snq"] if role == "content" else ["w@z"])
    from b4m.adapters.plp import frozen_parts, split_dims

    spec = PLPSpec(rank=4)
    for module, (u, v) in lora.factors.items():
        a, c = frozen_parts(spec, module, u.shape[0], v.shape[1])
        d_out, d_in = split_dims(u.shape[0], v.shape[1], 0.5)
        assert torch.equal(u[:d_out], a) and torch.equal(v[:, :d_in], c)  # bit-exact frozen parts
    b_norm = sum(
        u[split_dims(u.shape[0], v.shape[1], 0.5)[0] :].abs().sum() for u, v in lora.factors.values()
    )
    d_norm = sum(
        v[:, split_dims(u.shape[0], v.shape[1], 0.5)[1] :].abs().sum() for u, v in lora.factors.values()
    )
    assert b_norm > 0 and d_norm > 0  # MCP: the target trains one part, the auxiliaries the other
    log = (tmp_path / role / "train_log.jsonl").read_text().splitlines()
    assert log and '"step": 4' in log[-1]


def test_no_mcp_trains_the_target_part_only(tiny_sd, data, tmp_path):
    path = train_stage1(
        _s1(data, tmp_path, "content", mcp=False, aux=[]), "content", pipe=tiny_sd(), progress=False
    )
    from b4m.adapters.plp import split_dims

    lora = load_lora(path)
    d_total = sum(
        v[:, split_dims(u.shape[0], v.shape[1], 0.5)[1] :].abs().sum() for u, v in lora.factors.values()
    )
    assert d_total == 0


def test_killed_run_resumes_to_the_same_result(tiny_sd, data, tmp_path, monkeypatch):
    full = train_stage1(
        _s1(data, tmp_path, "content", steps=6, checkpoint_every=3, out=tmp_path / "a"),
        "content",
        pipe=tiny_sd(),
        progress=False,
    )
    real_save = loop_mod.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the checkpoint at step 3

    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    cfg = _s1(data, tmp_path, "content", steps=6, checkpoint_every=3, out=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train_stage1(cfg, "content", pipe=tiny_sd(), progress=False)
    monkeypatch.setattr(loop_mod, "save_checkpoint", real_save)

    from b4m.train.checkpoint import recorded_threads

    assert recorded_threads(tmp_path / "b" / "checkpoints") == torch.get_num_threads()  # the run's count
    resumed = train_stage1(cfg, "content", pipe=tiny_sd(), progress=False)  # the same command continues
    a, b = load_lora(full).factors, load_lora(resumed).factors
    for m in a:
        assert torch.equal(a[m][0], b[m][0]) and torch.equal(a[m][1], b[m][1])


def test_a_finished_run_is_reused_and_another_run_refused(tiny_sd, data, tmp_path, capsys):
    from dataclasses import replace

    cfg = _s1(data, tmp_path, "content", steps=2)
    path = train_stage1(cfg, "content", pipe=tiny_sd(), progress=False)
    before = path.read_bytes()
    assert train_stage1(cfg, "content", pipe=tiny_sd(), progress=False) == path  # the same command: reused
    assert "nothing to train" in capsys.readouterr().err
    assert train_stage1(replace(cfg, resume=True), "content", pipe=tiny_sd(), progress=False) == path
    assert path.read_bytes() == before
    other = replace(cfg, lr=0.05)  # the user asked for another run: never the old adapter in its name
    with pytest.raises(B4MError, match=r"finished adapter of another run; differs: --lr 0\.05.*--overwrite"):
        train_stage1(other, "content", pipe=tiny_sd(), progress=False)
    with pytest.raises(B4MError, match=r"differs: --lr 0\.05"):
        train_stage1(replace(other, resume=True), "content", pipe=tiny_sd(), progress=False)
    assert path.read_bytes() == before
    train_stage1(replace(other, overwrite=True), "content", pipe=tiny_sd(), progress=False)
    assert load_lora(path).meta["config"]["lr"] == 0.05


def test_stage1_input_errors_name_the_option(data, tmp_path):
    with pytest.raises(B4MError, match="--aux-styles: give at least one auxiliary folder"):
        train_stage1(_s1(data, tmp_path, "content", aux=[]), "content", pipe=object())
    with pytest.raises(B4MError, match="--images .*no such folder"):
        train_stage1(
            _s1(data, tmp_path, "content", images=tmp_path / "nope"), "content", pipe=_tiny_pipe(tmp_path)
        )


def _tiny_pipe(tmp_path):
    from b4m.diffusion.tiny import tiny_sd_pipeline

    return tiny_sd_pipeline(tmp_path / "tokx")


@pytest.fixture
def trained_pair(tiny_sd, data, tmp_path):
    c = train_stage1(_s1(data, tmp_path, "content"), "content", pipe=tiny_sd(), progress=False)
    s = train_stage1(_s1(data, tmp_path, "style"), "style", pipe=tiny_sd(), progress=False)
    return c, s


def test_fuse_keeps_content_b_and_style_d_exactly(trained_pair):
    c, s = trained_pair
    fused, spec = fuse(c, s)
    lc, ls = load_lora(c).factors, load_lora(s).factors
    for m, (u, v) in fused.factors.items():
        assert torch.equal(u, lc[m][0])  # U_f = [A; B_content]
        assert torch.equal(v, ls[m][1])  # V_f = [C, D_style]
    assert fused.meta["trigger_words"] == ["snq", "w@z"]
    with pytest.raises(B4MError, match="this is a style adapter"):
        fuse(s, c)


def test_fuse_refuses_other_bases(tiny_sd, data, tmp_path, trained_pair):
    c, _ = trained_pair
    other = train_stage1(
        _s1(data, tmp_path, "style", basis_seed=1, out=tmp_path / "s2"),
        "style",
        pipe=tiny_sd(),
        progress=False,
    )
    with pytest.raises(B4MError, match="basis ids differ"):
        fuse(c, other)


@pytest.mark.parametrize("optimizer", ["riemannian-adamw", "riemannian-sgd", "adamw"])
def test_stage2_fine_tunes_b_and_d(tiny_sd, trained_pair, tmp_path, optimizer):
    c, s = trained_pair
    cfg = Stage2Config(
        content=c,
        style=s,
        base="tiny",
        out=tmp_path / optimizer,
        stage2_steps=3,
        stage2_lr=1e-2,
        optimizer=optimizer,
        resolution=32,
    )
    path = train_stage2(cfg, pipe=tiny_sd(), progress=False)
    fused, _ = fuse(c, s)
    tuned = load_lora(path)
    assert tuned.meta["stage"] == 2 and tuned.meta["role"] == "fused"
    changed = sum(not torch.equal(tuned.factors[m][0], fused.factors[m][0]) for m in fused.factors)
    assert changed == len(fused.factors)
    for u, v in tuned.factors.values():
        assert torch.isfinite(u).all() and torch.isfinite(v).all()


def test_stage2_zero_steps_is_the_plain_fusion(tiny_sd, trained_pair, tmp_path):
    c, s = trained_pair
    path = train_stage2(
        Stage2Config(content=c, style=s, base="tiny", out=tmp_path / "f0", stage2_steps=0, resolution=32),
        pipe=tiny_sd(),
        progress=False,
    )
    fused, _ = fuse(c, s)
    got = load_lora(path).factors
    for m in fused.factors:
        assert torch.equal(got[m][0], fused.factors[m][0]) and torch.equal(got[m][1], fused.factors[m][1])


def test_stage1_on_sdxl_and_fused_file_loads_in_stock_pipeline(tiny_sdxl, data, tmp_path, sdxl_inputs):
    c = train_stage1(
        _s1(data, tmp_path, "content", out=tmp_path / "xc"), "content", pipe=tiny_sdxl(), progress=False
    )
    s = train_stage1(
        _s1(data, tmp_path, "style", out=tmp_path / "xs"), "style", pipe=tiny_sdxl(), progress=False
    )
    pipe = tiny_sdxl()
    path = train_stage2(
        Stage2Config(
            content=c,
            style=s,
            base="tiny",
            out=tmp_path / "xf",
            stage2_steps=2,
            stage2_lr=1e-2,
            resolution=32,
        ),
        pipe=pipe,
        progress=False,
    )
    inputs = sdxl_inputs(pipe.unet)
    with torch.no_grad():
        in_memory = pipe.unet(**inputs).sample
        fresh = tiny_sdxl()
        base_out = fresh.unet(**inputs).sample
        fresh.load_lora_weights(str(path))
        reloaded = fresh.unet(**inputs).sample
    assert (in_memory - base_out).abs().max() > 1e-4
    assert torch.allclose(reloaded, in_memory, atol=1e-5, rtol=0)


def test_a_half_precision_base_keeps_fp32_adapters_that_learn(tiny_sd, data, tmp_path):
    """On a GPU, --mixed-precision bf16 loads the frozen base in bf16 (loop.base_dtype); the PLP parts stay fp32,
    so stage 1 on a bf16 base moves B and D, keeps A and C bit-exact and writes an fp32 file."""
    from b4m.adapters.plp import frozen_parts, split_dims
    from b4m.train.loop import base_dtype

    assert base_dtype("bf16") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert base_dtype("no") == torch.float32
    pipe = tiny_sd().to(dtype=torch.bfloat16)
    path = train_stage1(_s1(data, tmp_path, "content"), "content", pipe=pipe, progress=False)
    layer = pipe.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert {p.dtype for p in layer.lora_A["b4m"].parameters()} == {torch.float32}
    lora = load_lora(path)
    spec = PLPSpec(rank=4)
    for module, (u, v) in lora.factors.items():
        assert u.dtype == v.dtype == torch.float32
        a, c = frozen_parts(spec, module, u.shape[0], v.shape[1])
        d_out, d_in = split_dims(u.shape[0], v.shape[1], 0.5)
        assert torch.equal(u[:d_out], a) and torch.equal(v[:, :d_in], c)
    assert (
        sum(u[split_dims(u.shape[0], v.shape[1], 0.5)[0] :].abs().sum() for u, v in lora.factors.values()) > 0
    )


@pytest.mark.parametrize("parts", ["D", "B"])
def test_stage2_parts_left_out_keep_their_fused_values(tiny_sd, trained_pair, tmp_path, parts):
    """--stage2-parts D (B frozen) / B (D frozen): the part left out is bit-identical to the fusion, the other
    moves in every layer."""
    c, s = trained_pair
    cfg = Stage2Config(content=c, style=s, base="tiny", out=tmp_path / parts, stage2_steps=3, stage2_lr=1e-2,
                       resolution=32, stage2_parts=parts)  # fmt: skip
    tuned = load_lora(train_stage2(cfg, pipe=tiny_sd(), progress=False)).factors
    fused, spec = fuse(c, s)
    trained, kept = (1, 0) if parts == "D" else (0, 1)  # U = [A; B] (index 0), V = [C, D] (index 1)
    for m in fused.factors:
        assert torch.equal(tuned[m][kept], fused.factors[m][kept])
        assert not torch.equal(tuned[m][trained], fused.factors[m][trained])


def test_stage2_own_routing_sends_each_loss_to_its_own_part(tiny_sd, trained_pair, tmp_path, monkeypatch):
    """--stage2-routing own: every stage-2 forward runs under mcp_routing(1, "B") (content sample first: its loss
    reaches only B, the style sample's only D, as the routing test above proves); joint: no routing."""
    import b4m.train.stage2 as stage2_mod
    from b4m.adapters.plp import _ROUTE

    seen = []
    real = stage2_mod.per_sample_loss

    def spy(*a, **kw):
        seen.append(_ROUTE.get())
        return real(*a, **kw)

    monkeypatch.setattr(stage2_mod, "per_sample_loss", spy)
    c, s = trained_pair
    for routing in ("own", "joint"):
        cfg = Stage2Config(content=c, style=s, base="tiny", out=tmp_path / routing, stage2_steps=2, stage2_lr=1e-2,
                           resolution=32, stage2_routing=routing)  # fmt: skip
        train_stage2(cfg, pipe=tiny_sd(), progress=False)
    assert seen == [(1, "B"), (1, "B"), None, None]


def test_stage2_logs_each_parts_update_and_size(tiny_sd, trained_pair, tmp_path):
    """The train log's update_B / update_D (the step's change of each part) and norm_B / norm_D: at the last step
    the sizes equal those of the saved adapter's learnable rows B = U[d_out:] and columns D = V[:, d_in:]; with
    B frozen its update is exactly 0."""
    import json

    from b4m.adapters.plp import split_dims

    c, s = trained_pair
    for parts in ("BD", "D"):
        out = tmp_path / f"log-{parts}"
        cfg = Stage2Config(content=c, style=s, base="tiny", out=out, stage2_steps=10, stage2_lr=1e-2, resolution=32,
                           stage2_parts=parts)  # fmt: skip
        tuned = load_lora(train_stage2(cfg, pipe=tiny_sd(), progress=False))
        last = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()][-1]
        assert last["step"] == 10
        size = {"B": 0.0, "D": 0.0}
        for u, v in tuned.factors.values():
            d_out, d_in = split_dims(u.shape[0], v.shape[1], 0.5)
            size["B"] += float((u[d_out:].double() ** 2).sum())
            size["D"] += float((v[:, d_in:].double() ** 2).sum())
        assert last["norm_B"] == pytest.approx(size["B"] ** 0.5, rel=1e-4)
        assert last["norm_D"] == pytest.approx(size["D"] ** 0.5, rel=1e-4)
        assert last["update_D"] > 0
        assert (last["update_B"] == 0.0) == (parts == "D")
