"""LoRA files in every spelling b4m meets: kohya (with/without alpha, any rank), diffusers 0.22's attention
processors, ``b4m convert`` both ways without loss, kohya metadata from what the file knows."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from b4m.adapters import PLPSpec, inject_plp, load_lora, save_plp
from b4m.adapters.codec import kohya_base_version
from b4m.cli import main
from b4m.diffusion.sampling import check_layers, describe


def _randomized(unet, seed=0, rank=8, **meta_kw):
    adapter = inject_plp(unet, PLPSpec(rank=rank))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return adapter


def _delta(lora):
    return {m: u @ v for m, (u, v) in lora.factors.items()}


def test_convert_round_trip_keeps_every_layers_delta_w_exactly(tiny_sdxl, tmp_path, sdxl_inputs, capsys):
    pipe = tiny_sdxl()
    adapter = _randomized(pipe.unet)
    src = save_plp(
        adapter, tmp_path / "a.safetensors", role="content", base_model="tiny", trigger_words=["snq"]
    )
    assert main(["convert", str(src), str(tmp_path / "k.safetensors"), "--to", "kohya"]) == 0
    assert (
        main(
            ["convert", str(tmp_path / "k.safetensors"), str(tmp_path / "d.safetensors"), "--to", "diffusers"]
        )
        == 0
    )
    a, k, d = (load_lora(tmp_path / n) for n in ("a.safetensors", "k.safetensors", "d.safetensors"))
    assert k.spelling == "kohya" and d.spelling == "peft"
    for other in (k, d):
        assert other.factors.keys() == a.factors.keys()
        for m, dw in _delta(a).items():
            assert torch.equal(_delta(other)[m], dw)
    assert d.meta["basis_id"] == a.meta["basis_id"] and d.meta["trigger_words"] == ["snq"]
    with safe_open(str(tmp_path / "k.safetensors"), framework="pt") as f:
        assert all(key.startswith("lora_unet_") for key in f.keys())
    # b4m reads its own kohya file everywhere: info, fuse's PLP check, and diffusers loads it too.
    assert "spelling: kohya" in describe(tmp_path / "k.safetensors")
    from b4m.adapters import read_plp_file

    read_plp_file(tmp_path / "k.safetensors")
    inputs = sdxl_inputs(pipe.unet)
    with torch.no_grad():
        want = pipe.unet(**inputs).sample
        fresh = tiny_sdxl()
        fresh.load_lora_weights(str(tmp_path / "k.safetensors"))
        assert torch.allclose(fresh.unet(**inputs).sample, want, atol=1e-5, rtol=0)


def _kohya_file(path, factors, alpha=None):
    tensors = {}
    for module, (u, v) in factors.items():
        key = "lora_unet_" + module.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = v.contiguous()
        tensors[f"{key}.lora_up.weight"] = u.contiguous()
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


@pytest.mark.parametrize(("rank", "alpha"), [(3, None), (3, 1.5), (6, 6.0)])
def test_foreign_kohya_files_read_with_their_scale(tiny_sdxl, tmp_path, rank, alpha):
    unet = tiny_sdxl().unet
    g = torch.Generator().manual_seed(rank)
    linears = {
        n: m for n, m in unet.named_modules() if isinstance(m, nn.Linear) and n.endswith(("to_q", "to_out.0"))
    }
    factors = {
        n: (torch.randn(m.out_features, rank, generator=g), torch.randn(rank, m.in_features, generator=g))
        for n, m in linears.items()
    }
    lora = load_lora(_kohya_file(tmp_path / "k.safetensors", factors, alpha))  # no b4m header to help
    assert lora.spelling == "kohya" and lora.rank == rank and lora.factors.keys() == factors.keys()
    scale = 1.0 if alpha is None else alpha / rank
    for m, (u, v) in factors.items():
        assert torch.allclose(lora.factors[m][0] @ lora.factors[m][1], scale * u @ v)
    assert f"rank {rank}, lora_alpha {alpha}" in describe(tmp_path / "k.safetensors")


def test_diffusers_0_22_processor_spelling_of_the_official_checkpoints(tiny_sdxl, tmp_path):
    pipe = tiny_sdxl()
    block = "down_blocks.1.attentions.0.transformer_blocks.0"
    tensors, want = {}, {}
    for proj, module in (("to_q", "attn1.to_q"), ("to_out", "attn1.to_out.0"), ("to_k", "attn2.to_k")):
        layer = pipe.unet.get_submodule(f"{block}.{module}")
        up, down = torch.randn(layer.out_features, 4), torch.randn(4, layer.in_features)
        prefix = f"unet.unet.{block}.{module.split('.')[0]}.processor.{proj}_lora"
        tensors[f"{prefix}.up.weight"], tensors[f"{prefix}.down.weight"] = up, down
        want[f"{block}.{module}"] = (up, down)
    save_file(tensors, str(tmp_path / "official.safetensors"))
    lora = load_lora(tmp_path / "official.safetensors")
    assert lora.spelling == "diffusers-0.22" and lora.factors.keys() == want.keys()
    for m, (u, v) in want.items():
        assert torch.equal(lora.factors[m][0], u) and torch.equal(lora.factors[m][1], v)
    check_layers(pipe, lora)  # every layer exists in the UNet with the file's shape


def test_kohya_base_model_version_comes_from_what_the_file_knows(tiny_sd, tiny_sdxl, tmp_path):
    from b4m.adapters.codec import LoraFile

    def fake(width):
        return LoraFile(
            {
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (
                    torch.ones(320, 4),
                    torch.ones(4, width),
                )
            }
        )

    assert kohya_base_version(fake(768)) == "sd_v1"
    assert kohya_base_version(fake(1024)) == "sd_v2"
    assert kohya_base_version(fake(2048)) == "sdxl_base_v1-0"
    sd15 = LoraFile(fake(64).factors, {"base_model": "runwayml/stable-diffusion-v1-5"})
    assert kohya_base_version(sd15) == "sd_v1"
    src = save_plp(_randomized(tiny_sd().unet), tmp_path / "b.safetensors", base_model="builtin")
    assert main(["export", str(src), "--out", str(tmp_path / "b_kohya.safetensors")]) == 0
    with safe_open(str(tmp_path / "b_kohya.safetensors"), framework="pt") as f:
        assert "ss_base_model_version" not in f.metadata()  # the built-in model is neither SD nor SDXL
    assert (
        main(["export", str(src), "--out", str(tmp_path / "x.safetensors"), "--base-model-version", "sd_v1"])
        == 0
    )
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sd_v1"


def test_kohya_files_with_sgm_block_names_are_one_line(tmp_path):
    from b4m.errors import B4MError

    factors = {"input_blocks.4.1.transformer_blocks.0.attn1.to_q": (torch.ones(8, 2), torch.ones(2, 8))}
    path = _kohya_file(tmp_path / "sgm.safetensors", factors, alpha=2.0)
    with pytest.raises(B4MError, match=r"sgm.safetensors: a kohya file with the original SGM block names"):
        load_lora(path)
