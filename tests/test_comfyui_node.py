"""The ComfyUI node ``integrations/comfyui/b4m_lora_loader``: its torch-only maths against b4m's ``scale_parts``
on every layer (SD/SDXL kohya keys, FLUX diffusers keys and FLUX's fused kohya keys), and its glue to ComfyUI
with small fake ``comfy`` and ``folder_paths`` modules that record what ``load_lora_for_models`` receives."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import b4m
from b4m.adapters import PLPSpec, inject_plp, load_lora, save_plp
from b4m.adapters.plp import scale_parts, split_dims

NODE_DIR = Path(__file__).resolve().parents[1] / "integrations" / "comfyui" / "b4m_lora_loader"
C, S = 0.6, 1.7


def _import_node():
    """The node folder imported as ComfyUI imports a custom node: a package named after the folder."""
    spec = importlib.util.spec_from_file_location(
        "b4m_lora_loader", NODE_DIR / "__init__.py", submodule_search_locations=[str(NODE_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["b4m_lora_loader"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def node(monkeypatch):
    monkeypatch.delitem(sys.modules, "b4m_lora_loader", raising=False)
    monkeypatch.delitem(sys.modules, "b4m_lora_loader.b4m_scale", raising=False)
    return _import_node()


def _randomized(model, path, targets=None, **meta):
    kw = {} if targets is None else {"target_modules": list(targets)}
    adapter = inject_plp(model, PLPSpec(rank=4, rho=0.4, basis_seed=2), **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return save_plp(adapter, path, **meta)


def _header(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _check_against_scale_parts(src, state_dict, tmp_path):
    """Write the node's state dict with the source's header, read it with b4m, compare every layer's dW."""
    save_file(state_dict, str(tmp_path / "node_out.safetensors"), metadata=_header(src))
    got, ref = load_lora(tmp_path / "node_out.safetensors"), load_lora(src)
    assert got.factors.keys() == ref.factors.keys()
    rho = float(ref.meta["rho"])
    for module, (u, v) in ref.factors.items():
        d_out, d_in = split_dims(u.shape[0], v.shape[1], rho)
        su, sv = scale_parts(u.double(), v.double(), d_out, d_in, C, S)
        gu, gv = got.factors[module]
        assert torch.allclose(gu.double() @ gv.double(), su @ sv, atol=1e-6, rtol=0), module


def test_pure_function_matches_scale_parts_on_sdxl_kohya_keys(node, tiny_sdxl, tmp_path):
    src = _randomized(tiny_sdxl().unet, tmp_path / "teddy.safetensors")
    sd = node.b4m_scale.scaled_lora(str(src), C, S)
    with safe_open(str(src), framework="pt") as f:
        assert set(sd) == set(f.keys())  # the file's own kohya keys, .alpha included
        alpha = {k: f.get_tensor(k) for k in f.keys() if k.endswith(".alpha")}
    assert all(k.startswith("lora_unet_") for k in sd)
    assert all(torch.equal(sd[k], a) for k, a in alpha.items())
    _check_against_scale_parts(src, sd, tmp_path)
    # Strengths 1 and 1: the file as it is.
    same = node.b4m_scale.scaled_lora(str(src), 1.0, 1.0)
    with safe_open(str(src), framework="pt") as f:
        assert all(torch.equal(same[k], f.get_tensor(k)) for k in f.keys())


def test_pure_function_on_flux_files_both_spellings(node, tiny_flux, tmp_path):
    """FLUX: the diffusers-spelled file b4m trains, and its kohya export whose q/k/v (and single blocks' linear1
    with the MLP input) are fused, block-diagonal LoRAs of rank k r."""
    from b4m.diffusion.flux import FLUX_TARGETS

    pipe = tiny_flux()
    src = _randomized(pipe.transformer, tmp_path / "flux.safetensors", FLUX_TARGETS, base_family="flux")
    kohya = b4m.export(src, tmp_path / "flux_kohya.safetensors")
    with safe_open(str(kohya), framework="pt") as f:
        assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in f.keys()
    for path in (src, kohya):
        sub = tmp_path / path.stem
        sub.mkdir()
        _check_against_scale_parts(path, node.b4m_scale.scaled_lora(str(path), C, S), sub)


def test_pure_function_refuses_a_plain_lora(node, tiny_sdxl, tmp_path):
    from b4m.adapters import save_kohya

    src = _randomized(tiny_sdxl().unet, tmp_path / "b4m.safetensors")
    plain = save_kohya(tmp_path / "plain.safetensors", load_lora(src).factors)
    with pytest.raises(
        node.b4m_scale.NotAB4MFile, match=r"plain.safetensors: not a b4m adapter .*LoraLoader"
    ):
        node.b4m_scale.scaled_lora(str(plain), C, S)


def _fake_comfyui(monkeypatch, loras: dict[str, Path]):
    """``folder_paths`` listing ``loras`` and a ``comfy.sd.load_lora_for_models`` that records its arguments."""
    calls = []
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: sorted(loras) if kind == "loras" else []

    def get_full_path_or_raise(kind, name):
        assert kind == "loras"
        return str(loras[name])

    folder_paths.get_full_path_or_raise = get_full_path_or_raise
    comfy = types.ModuleType("comfy")
    comfy_sd = types.ModuleType("comfy.sd")

    def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
        calls.append({"model": model, "clip": clip, "lora": lora, "strength_model": strength_model,
                      "strength_clip": strength_clip})  # fmt: skip
        return (f"patched {model}", None if clip is None else f"patched {clip}")

    comfy_sd.load_lora_for_models = load_lora_for_models
    comfy.sd = comfy_sd
    for name, module in (("folder_paths", folder_paths), ("comfy", comfy), ("comfy.sd", comfy_sd)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_node_glue_hands_the_scaled_kohya_state_dict_to_comfyui(node, monkeypatch, tiny_sdxl, tmp_path):
    src = _randomized(tiny_sdxl().unet, tmp_path / "teddy.safetensors")
    calls = _fake_comfyui(monkeypatch, {"b4m/teddy.safetensors": src})
    assert list(node.NODE_CLASS_MAPPINGS.items()) == [("B4MLoraLoader", node.B4MLoraLoader)]
    assert node.NODE_DISPLAY_NAME_MAPPINGS == {"B4MLoraLoader": "B4M LoRA loader"}
    cls = node.NODE_CLASS_MAPPINGS["B4MLoraLoader"]
    inputs = cls.INPUT_TYPES()
    assert list(inputs["required"]) == ["model", "lora_name", "content_strength", "style_strength"]
    assert inputs["required"]["model"][0] == "MODEL"
    assert inputs["required"]["lora_name"][0] == ["b4m/teddy.safetensors"]
    for name in ("content_strength", "style_strength"):
        kind, opts = inputs["required"][name]
        assert kind == "FLOAT" and opts["default"] == 1.0 and opts["min"] < 0 < opts["max"]
    assert inputs["optional"]["clip"][0] == "CLIP"
    assert cls.RETURN_TYPES == ("MODEL", "CLIP") and getattr(cls, cls.FUNCTION)

    loader = cls()
    out = getattr(loader, cls.FUNCTION)(
        model="unet", lora_name="b4m/teddy.safetensors", content_strength=C, style_strength=S, clip="clip"
    )
    assert out == (
        "patched unet",
        "clip",
    )  # CLIP passes through unchanged: b4m adapts the diffusion model only
    (call,) = calls
    assert call["model"] == "unet" and call["clip"] is None
    assert call["strength_model"] == 1.0 and call["strength_clip"] == 0.0
    with safe_open(str(src), framework="pt") as f:
        assert set(call["lora"]) == set(f.keys())  # the kohya keys b4m writes, which ComfyUI maps
    _check_against_scale_parts(src, call["lora"], tmp_path)
    # Same file and strengths: no second read; other strengths: scaled again.
    loader.load("unet", "b4m/teddy.safetensors", C, S)
    assert calls[1]["lora"] is call["lora"]
    loader.load("unet", "b4m/teddy.safetensors", 1.0, 0.0)
    assert calls[2]["lora"] is not call["lora"]
    # The node module itself imports no b4m and no ComfyUI at import time.
    source = (NODE_DIR / "b4m_scale.py").read_text() + (NODE_DIR / "__init__.py").read_text()
    assert "import b4m" not in source and "from b4m" not in source
