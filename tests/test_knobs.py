"""B4M's two knobs outside b4m: ``b4m export --content-scale/--style-scale`` (one file, strengths baked in),
``b4m export --split`` (one ordinary LoRA per block, chained at strengths S, C, C*S) and ``b4m.load_into``.

The reference everywhere is :func:`b4m.adapters.plp.scale_parts`, what ``b4m generate`` uses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import b4m
from b4m.adapters import PLPSpec, inject_plp, load_lora, read_plp_file, save_lora, save_plp
from b4m.adapters.knobs import PARTS, part_factors
from b4m.adapters.plp import delta_blocks, scale_parts, split_dims
from b4m.cli import main
from b4m.diffusion.sampling import load_adapter
from b4m.errors import B4MError

C, S = 0.7, 1.6  # content and style strengths the tests use (neither 0 nor 1, so every block moves)
STRENGTH = {"style": S, "content": C, "interaction": C * S, "frozen": 1.0}


def _plp_file(unet, path, orth="exact", rank=8, seed=0, **meta):
    adapter = inject_plp(unet, PLPSpec(rank=rank, orth=orth, basis_seed=3))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return adapter, save_plp(adapter, path, **meta)


def _scaled_delta(lora, c, s):
    rho = float(lora.meta["rho"])
    out = {}
    for m, (u, v) in lora.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], rho)
        su, sv = scale_parts(u.double(), v.double(), d_out, d_in, c, s)
        out[m] = su @ sv
    return out


def _sd_inputs(unet):
    g = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 7, unet.config.cross_attention_dim, generator=g),
    }


@pytest.mark.parametrize(("m", "n", "rho"), [(40, 24, 0.5), (33, 17, 0.25), (16, 48, 0.75)])
def test_each_part_is_an_exact_factorization_of_its_block(m, n, rho):
    g = torch.Generator().manual_seed(m)
    u, v = (
        torch.randn(m, 6, generator=g, dtype=torch.float64),
        torch.randn(6, n, generator=g, dtype=torch.float64),
    )
    d_out, d_in = split_dims(m, n, rho)
    parts = part_factors(u, v, d_out, d_in)
    blocks = delta_blocks(u, v, d_out, d_in)
    where = {
        "AC": (slice(None, d_out), slice(None, d_in)),
        "AD": (slice(None, d_out), slice(d_in, None)),
        "BC": (slice(d_out, None), slice(None, d_in)),
        "BD": (slice(d_out, None), slice(d_in, None)),
    }
    for name, (up, down) in parts.items():
        assert up.shape == (m, 6) and down.shape == (6, n)  # an ordinary rank-r LoRA of the layer's shape
        got = up @ down
        assert torch.allclose(got[where[name]], blocks[name], atol=1e-12, rtol=0)
        outside = torch.ones(m, n, dtype=torch.bool)
        outside[where[name]] = False
        assert not got[outside].any()  # exactly zero outside its block
    assert torch.allclose(sum(a @ b for a, b in parts.values()), u @ v)
    su, sv = scale_parts(u, v, d_out, d_in, C, S)
    combined = sum(STRENGTH[p.name] * (parts[p.block][0] @ parts[p.block][1]) for p in PARTS)
    assert torch.allclose(combined, su @ sv, atol=1e-12)


@pytest.mark.parametrize("orth", ["exact", "approx"])
def test_split_parts_sum_to_the_scaled_delta(tiny_sd, tmp_path, capsys, orth):
    _, src = _plp_file(tiny_sd().unet, tmp_path / "fused.safetensors", orth=orth, role="fused")
    folder = tmp_path / "parts"
    assert main(["export", str(src), "--split", "--out", str(folder)]) == 0
    printed = capsys.readouterr().out
    names = ["style", "content", "interaction"] + (["frozen"] if orth == "approx" else [])
    assert sorted(p.name for p in folder.glob("*.safetensors")) == sorted(
        f"fused_{n}.safetensors" for n in names
    )
    for n, strength in (("style", "S"), ("content", "C"), ("interaction", "C*S")):
        line = next(ln for ln in printed.splitlines() if f"fused_{n}.safetensors" in ln)
        assert f"strength {strength} " in line
    assert "<lora:fused_style:0.5>" in printed
    lora = load_lora(src)
    want = _scaled_delta(lora, C, S)
    parts = {n: load_lora(folder / f"fused_{n}.safetensors") for n in names}
    for module, dw in want.items():
        got = sum(
            STRENGTH[n] * (p.factors[module][0].double() @ p.factors[module][1].double())
            for n, p in parts.items()
        )
        assert torch.allclose(got, dw, atol=1e-6, rtol=0), module
    for n, part in parts.items():
        assert part.spelling == "kohya" and part.rank == lora.rank
        assert "rho" not in part.meta and "basis_id" not in part.meta  # not a PLP adapter any more
        assert (
            part.meta["split"]["part"] == n and part.meta["split"]["source_basis_id"] == lora.meta["basis_id"]
        )
        with pytest.raises(B4MError, match="not a b4m PLP adapter"):
            read_plp_file(part.path)


def test_split_parts_chained_in_diffusers_equal_the_scaled_adapter(tiny_sd, tmp_path):
    """diffusers' own load_lora_weights of the part files, at adapter weights S, C, C*S (and 1 for A C),
    gives the UNet that b4m's scaled adapter gives."""
    _, src = _plp_file(tiny_sd().unet, tmp_path / "fused.safetensors", orth="approx")
    files = b4m.export(src, tmp_path / "parts", split=True)
    assert [f.part.name for f in files] == ["style", "content", "interaction", "frozen"]
    pipe = tiny_sd()
    inputs = _sd_inputs(pipe.unet)
    with torch.no_grad():
        base = pipe.unet(**inputs).sample
        for f in files:
            pipe.load_lora_weights(str(f.path), adapter_name=f.part.name)
        pipe.set_adapters([f.part.name for f in files], [f.strength_at(C, S) for f in files])
        chained = pipe.unet(**inputs).sample
        ref = tiny_sd()
        load_adapter(ref, src, content_scale=C, style_scale=S)
        want = ref.unet(**inputs).sample
    assert (want - base).abs().max() > 1e-3  # the adapter really changes the UNet
    assert torch.allclose(chained, want, atol=1e-5, rtol=0)


def test_export_bakes_the_strengths_into_one_ordinary_lora(tiny_sd, tmp_path, capsys):
    _, src = _plp_file(tiny_sd().unet, tmp_path / "fused.safetensors", role="fused", trigger_words=["snq"])
    out = tmp_path / "baked.safetensors"
    assert (
        main(["export", str(src), "--out", str(out), "--content-scale", str(C), "--style-scale", str(S)]) == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    lora, baked = load_lora(src), load_lora(out)
    assert baked.spelling == "kohya" and baked.rank == lora.rank
    want = _scaled_delta(lora, C, S)
    for module, dw in want.items():
        u, v = baked.factors[module]
        assert torch.allclose(u.double() @ v.double(), dw, atol=1e-6, rtol=0)
    # Still a b4m adapter (A and C untouched), with the baked strengths recorded; the knobs multiply on it.
    read_plp_file(out)
    assert baked.meta["baked_scales"] == {"content": C, "style": S}
    assert baked.meta["trigger_words"] == ["snq"]
    # Only one knob given: the other stays 1.
    only_style = b4m.export(src, tmp_path / "s.safetensors", style_scale=S)
    for module, dw in _scaled_delta(lora, 1.0, S).items():
        u, v = load_lora(only_style).factors[module]
        assert torch.allclose(u.double() @ v.double(), dw, atol=1e-6, rtol=0)
    # diffusers loads the baked file and gets b4m's scaled adapter.
    pipe, ref = tiny_sd(), tiny_sd()
    inputs = _sd_inputs(pipe.unet)
    with torch.no_grad():
        pipe.load_lora_weights(str(out))
        load_adapter(ref, src, content_scale=C, style_scale=S)
        assert torch.allclose(pipe.unet(**inputs).sample, ref.unet(**inputs).sample, atol=1e-5, rtol=0)


def test_load_into_equals_manually_scaled_weights(tiny_sd, tmp_path):
    adapter, src = _plp_file(tiny_sd().unet, tmp_path / "fused.safetensors")
    pipe = tiny_sd()
    inputs = _sd_inputs(pipe.unet)
    assert b4m.load_into(pipe, src, content_scale=C, style_scale=S, adapter_name="teddy") == "teddy"
    assert "teddy" in pipe.get_active_adapters()
    manual = tiny_sd()
    with torch.no_grad():
        for module, (u, v) in adapter.factors().items():
            m, n, d_out, d_in = adapter.dims[module]
            u2, v2 = u.clone(), v.clone()
            u2[d_out:] *= C  # B: the content part
            v2[:, d_in:] *= S  # D: the style part
            manual.unet.get_submodule(module).weight += u2 @ v2
        assert torch.allclose(pipe.unet(**inputs).sample, manual.unet(**inputs).sample, atol=1e-5, rtol=0)
    with pytest.raises(B4MError, match=r"style_scale=nan: give a finite number"):
        b4m.load_into(tiny_sd(), src, style_scale=float("nan"))


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("b4m: error: ")
    return err


def test_knobs_refuse_a_file_without_plp_metadata(tiny_sd, tmp_path, capsys):
    adapter, src = _plp_file(tiny_sd().unet, tmp_path / "fused.safetensors")
    plain = save_lora(tmp_path / "plain.safetensors", adapter.factors())  # an ordinary LoRA: no rho, no basis
    out = tmp_path / "o.safetensors"
    err = _one_line_error(capsys, ["export", str(plain), "--out", str(out), "--content-scale", "0.5"])
    assert "--content-scale: " in err and "not a b4m PLP adapter" in err
    err = _one_line_error(capsys, ["export", str(plain), "--out", str(out), "--style-scale", "0.5"])
    assert "--style-scale: " in err
    err = _one_line_error(capsys, ["export", str(plain), "--split", "--out", str(tmp_path / "p")])
    assert "--split: " in err and "not a b4m PLP adapter" in err
    err = _one_line_error(
        capsys, ["export", str(src), "--split", "--style-scale", "2", "--out", str(tmp_path / "p")]
    )
    assert "--style-scale: --split writes the parts unscaled" in err
    err = _one_line_error(capsys, ["export", str(src), "--out", str(out), "--content-scale", "nan"])
    assert "--content-scale nan: give a finite number" in err
    err = _one_line_error(capsys, ["export", str(src), "--split", "--out", str(tmp_path / "x.safetensors")])
    assert "give a folder" in err
    assert not out.exists() and not (tmp_path / "p").exists()
    # A plain LoRA still exports as it is (no knobs asked for).
    assert main(["export", str(plain), "--out", str(out)]) == 0
    # Parts that exist are not overwritten unless asked.
    assert main(["export", str(src), "--split", "--out", str(tmp_path / "p")]) == 0
    err = _one_line_error(capsys, ["export", str(src), "--split", "--out", str(tmp_path / "p")])
    assert "fused_style.safetensors exists" in err and "--overwrite" in err
    assert main(["export", str(src), "--split", "--out", str(tmp_path / "p"), "--overwrite"]) == 0


def test_flux_parts_use_bfl_names_and_sum_to_the_scaled_delta(tiny_flux, tmp_path):
    from b4m.diffusion.flux import FLUX_TARGETS

    pipe = tiny_flux()
    adapter = inject_plp(pipe.transformer, PLPSpec(rank=4), target_modules=list(FLUX_TARGETS))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    src = save_plp(adapter, tmp_path / "flux.safetensors", base_family="flux", role="fused")
    lora = load_lora(src)
    assert lora.spelling == "peft"  # FLUX adapters are written in diffusers spelling
    files = b4m.export(src, tmp_path / "parts", split=True)
    baked = b4m.export(src, tmp_path / "baked.safetensors", content_scale=C, style_scale=S)
    for path in [*(f.path for f in files), baked]:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            assert f.metadata()["ss_base_model_version"] == "flux1"
        assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in keys)
        assert any(k.startswith("lora_unet_single_blocks_0_linear1") for k in keys)
    want = _scaled_delta(lora, C, S)
    parts = {f.part.name: load_lora(f.path) for f in files}
    baked_lora = load_lora(baked)
    for module, dw in want.items():
        got = sum(
            STRENGTH[n] * (p.factors[module][0].double() @ p.factors[module][1].double())
            for n, p in parts.items()
        )
        assert torch.allclose(got, dw, atol=1e-6, rtol=0), module
        u, v = baked_lora.factors[module]
        assert torch.allclose(u.double() @ v.double(), dw, atol=1e-6, rtol=0), module


def test_info_shows_baked_strengths_and_parts(tiny_sd, tmp_path, capsys):
    _, src = _plp_file(tiny_sd().unet, tmp_path / "fused.safetensors")
    b4m.export(src, tmp_path / "baked.safetensors", style_scale=0.5)
    b4m.export(src, tmp_path / "parts", split=True)
    assert (
        main(
            ["info", str(tmp_path / "baked.safetensors"), str(tmp_path / "parts" / "fused_style.safetensors")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"style": 0.5' in out and '"part": "style"' in out and '"strength": "S"' in out
    header = json.loads(safe_open(str(tmp_path / "baked.safetensors"), framework="pt").metadata()["b4m"])
    assert header["baked_scales"] == {"content": 1.0, "style": 0.5}


def test_export_help_teaches_the_knobs():
    from b4m.cli import build_parser

    export = build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    for text in (
        "--content-scale C",
        "--style-scale S",
        "--split",
        "[[AC, S*AD], [C*BC, C*S*BD]]",
        "<name>_style",
    ):
        assert text in export
    assert (
        "b4m export runs/fused/adapter.safetensors --split --out parts/" in export
    )  # the examples, line by line
