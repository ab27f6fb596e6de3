"""PLP adapters in diffusers UNets: save -> stock ``load_lora_weights`` -> same outputs; reload for training."""

import json

import pytest
import torch
from safetensors import safe_open

from b4m.adapters import (
    PLPSpec,
    check_fusable,
    inject_plp,
    load_lora,
    load_plp,
    read_plp_file,
    save_kohya,
    save_plp,
)
from b4m.errors import B4MError

ATOL = 1e-5  # float32 UNet outputs; the file stores float32 factors, so only summation order differs


def _randomize(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _sdxl_unet_inputs(unet):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    ehs = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    return {
        "sample": sample,
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": ehs,
        "added_cond_kwargs": added,
    }


def _sd_unet_inputs(unet):
    g = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 7, unet.config.cross_attention_dim, generator=g),
    }


@torch.no_grad()
def _out(unet, inputs):
    return unet(**inputs).sample


@pytest.mark.parametrize("orth", ["exact", "approx"])
def test_sdxl_round_trip_through_load_lora_weights(tiny_sdxl, tmp_path, orth):
    pipe = tiny_sdxl()
    inputs = _sdxl_unet_inputs(pipe.unet)
    base_out = _out(pipe.unet, inputs)
    adapter = inject_plp(pipe.unet, PLPSpec(rank=8, orth=orth, basis_seed=5))
    _randomize(adapter)
    adapted = _out(pipe.unet, inputs)
    assert (adapted - base_out).abs().max() > 1e-3  # the adapter really changes the model
    path = save_plp(adapter, tmp_path / "a.safetensors", role="content", trigger_words=["snq"])

    fresh = tiny_sdxl()
    assert torch.allclose(_out(fresh.unet, inputs), base_out)
    fresh.load_lora_weights(str(path), adapter_name="plp")
    assert torch.allclose(_out(fresh.unet, inputs), adapted, atol=ATOL, rtol=0)
    # Alpha survives through the stored LoraConfig (scale 1).
    layer = fresh.unet.get_submodule(adapter.module_names[0])
    assert layer.scaling["plp"] == 1.0


def test_sd_round_trip_through_load_lora_weights(tiny_sd, tmp_path):
    pipe = tiny_sd()
    inputs = _sd_unet_inputs(pipe.unet)
    adapter = inject_plp(pipe.unet, PLPSpec(rank=4))
    _randomize(adapter, seed=3)
    adapted = _out(pipe.unet, inputs)
    path = save_plp(adapter, tmp_path / "sd.safetensors")
    fresh = tiny_sd()
    fresh.load_lora_weights(str(path))
    assert torch.allclose(_out(fresh.unet, inputs), adapted, atol=ATOL, rtol=0)


def test_file_header_describes_the_adapter(tiny_sdxl, tmp_path):
    pipe = tiny_sdxl()
    adapter = inject_plp(pipe.unet, PLPSpec(rank=8, rho=0.25, basis_seed=9))
    path = save_plp(
        adapter, tmp_path / "a.safetensors", role="style", trigger_words=["w@z"], base_model="tiny"
    )
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        keys = list(f.keys())
    meta = json.loads(header["b4m"])
    assert meta["rank"] == 8 and meta["rho"] == 0.25 and meta["basis_seed"] == 9 and meta["orth"] == "exact"
    assert meta["basis_id"] == adapter.basis_id() and meta["trigger_words"] == ["w@z"]
    assert sorted(meta["target_modules"]) == sorted(adapter.module_names)
    # kohya spelling (diffusers, ComfyUI and A1111 all load it), alpha = rank (scale 1)
    assert header["ss_network_dim"] == "8" and header["ss_network_alpha"] == "8"
    assert len(keys) == 3 * len(adapter.module_names) and all(k.startswith("lora_unet_") for k in keys)


def test_reload_into_training_structure(tiny_sdxl, tmp_path):
    pipe = tiny_sdxl()
    inputs = _sdxl_unet_inputs(pipe.unet)
    adapter = inject_plp(pipe.unet, PLPSpec(rank=8))
    _randomize(adapter)
    adapted = _out(pipe.unet, inputs)
    path = save_plp(adapter, tmp_path / "a.safetensors")

    fresh = tiny_sdxl()
    loaded = load_plp(fresh.unet, path)
    assert torch.allclose(_out(fresh.unet, inputs), adapted, atol=ATOL, rtol=0)
    assert loaded.basis_id() == adapter.basis_id()
    params = loaded.parameters("BD")
    assert params and all(p.requires_grad for p in params)
    # B and D train again, A and C stay frozen buffers even after peft's set_adapter flips requires_grad.
    fresh.unet.set_adapter("b4m")
    frozen_names = [n for n, _ in fresh.unet.named_buffers() if n.endswith("frozen")]
    assert len(frozen_names) == 2 * len(loaded.module_names)
    for a, b in zip(loaded.parameters("BD"), adapter.parameters("BD"), strict=True):
        assert torch.equal(a, b)


def test_basis_mismatch_is_refused_naming_both_files(tiny_sdxl, tmp_path):
    a1 = inject_plp(tiny_sdxl().unet, PLPSpec(rank=8, basis_seed=1))
    a2 = inject_plp(tiny_sdxl().unet, PLPSpec(rank=8, basis_seed=2))
    p1 = save_plp(a1, tmp_path / "content.safetensors", base_model="tiny")
    p2 = save_plp(a2, tmp_path / "style.safetensors", base_model="tiny")
    check_fusable(load_lora(p1), load_lora(p1))  # the same basis fuses
    with pytest.raises(B4MError, match=r"content\.safetensors.*style\.safetensors.*basis id"):
        check_fusable(load_lora(p1), load_lora(p2))


def test_edited_frozen_part_is_detected(tiny_sdxl, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = inject_plp(tiny_sdxl().unet, PLPSpec(rank=8))
    path = save_plp(adapter, tmp_path / "a.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith(".lora_up.weight"))  # U = [A; B]
    tensors[key][0, 0] += 1.0  # a frozen entry of A
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=header)
    with pytest.raises(B4MError, match="edited or damaged"):
        read_plp_file(tmp_path / "edited.safetensors")


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(B4MError, match="no such file"):
        load_lora(tmp_path / "missing.safetensors")
    (tmp_path / "w.bin").write_bytes(b"not a tensor file")
    with pytest.raises(B4MError, match="safetensors files only"):
        load_lora(tmp_path / "w.bin")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(B4MError, match="not a readable safetensors file"):
        load_lora(tmp_path / "bad.safetensors")


def test_kohya_export_loads_in_diffusers(tiny_sdxl, tmp_path):
    pipe = tiny_sdxl()
    inputs = _sdxl_unet_inputs(pipe.unet)
    adapter = inject_plp(pipe.unet, PLPSpec(rank=8))
    _randomize(adapter)
    adapted = _out(pipe.unet, inputs)
    path = save_kohya(tmp_path / "k.safetensors", adapter.factors(), dtype=torch.float32)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["ss_base_model_version"].startswith("sdxl_")
        assert all(k.startswith("lora_unet_") for k in f.keys())
    fresh = tiny_sdxl()
    fresh.load_lora_weights(str(path))
    assert torch.allclose(_out(fresh.unet, inputs), adapted, atol=ATOL, rtol=0)


def test_info_says_unknown_when_the_layout_is_all_it_has(tmp_path, capsys):
    """A LoRA of the built-in model without b4m's header (its layers look like a UNet's) used to be reported as
    ``base family: sdxl``; b4m says what it knows."""
    from b4m.adapters import PLPSpec, inject_plp, load_lora, save_lora
    from b4m.cli import main
    from b4m.diffusion.pipeline import load_pipeline

    adapter = inject_plp(load_pipeline(None).unet, PLPSpec(rank=4), name="x")
    plain = tmp_path / "plain.safetensors"
    save_lora(plain, adapter.factors())  # no b4m header: no base model, no family
    assert load_lora(plain).meta.get("base_model") is None
    capsys.readouterr()
    assert main(["info", str(plain)]) == 0
    assert "base family: unknown" in capsys.readouterr().out
