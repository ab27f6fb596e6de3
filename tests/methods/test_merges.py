"""Training-free merges (direct-merge, nplora) against independent dense computations from the source files."""

import pytest
import torch
from safetensors.torch import load_file

from b4m.adapters.codec import load_lora, save_lora
from b4m.errors import B4MError
from b4m.methods import fit_method

from .conftest import random_lora


def _dense_from_file(path, alpha=None):
    """dW per layer read with safetensors directly (not b4m's loader): (alpha/r) B A."""
    raw = load_file(str(path))
    out = {}
    for key, down in raw.items():
        if key.endswith(".lora_A.weight"):
            name = key[len("unet.") : -len(".lora_A.weight")]
            up = raw[f"unet.{name}.lora_B.weight"]
            scale = 1.0 if alpha is None else alpha / up.shape[1]
            out[name] = scale * up.double() @ down.double()
    return out


def test_direct_merge_is_eq3_on_every_layer_with_alpha_folded(tiny_sdxl, tmp_path):
    unet = tiny_sdxl().unet
    random_lora(unet, tmp_path / "c.safetensors", 4, 1)
    # A style file with lora_alpha != r (as other trainers write): its effective dW is (alpha/r) U V.
    style = random_lora(unet, tmp_path / "s0.safetensors", 2, 2)
    save_lora(tmp_path / "s.safetensors", style)
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["lora_adapter_metadata"])
    config["unet.lora_alpha"] = 1.0
    meta["lora_adapter_metadata"] = json.dumps(config)
    save_file(tensors, str(tmp_path / "s.safetensors"), metadata=meta)

    fitted = fit_method(
        "direct-merge",
        content_lora=tmp_path / "c.safetensors",
        style_lora=tmp_path / "s.safetensors",
        lambda_c=0.6,
        lambda_s=1.4,
        out=tmp_path / "m",
        progress=False,
    )
    dc, ds = (
        _dense_from_file(tmp_path / "c.safetensors"),
        _dense_from_file(tmp_path / "s.safetensors", alpha=1.0),
    )
    got = load_lora(fitted.path)
    assert got.rank == 4 + 2
    for name, (u, v) in got.factors.items():
        want = 0.6 * dc[name] + 1.4 * ds[name]
        torch.testing.assert_close((u.double() @ v.double()), want, atol=1e-6, rtol=1e-5)


def test_merge_refuses_sources_of_different_bases(tiny_sdxl, tmp_path):
    unet = tiny_sdxl().unet
    random_lora(unet, tmp_path / "c.safetensors", 2, 1, meta={"base_model": "a"})
    random_lora(unet, tmp_path / "s.safetensors", 2, 2, meta={"base_model": "b"})
    with pytest.raises(B4MError, match=r"--style-lora .*s.safetensors: made for the base model 'b', not 'a'"):
        fit_method(
            "nplora",
            content_lora=tmp_path / "c.safetensors",
            style_lora=tmp_path / "s.safetensors",
            base="a",
            out=tmp_path / "o",
        )
    with pytest.raises(
        B4MError, match=r"--content-lora .*c.safetensors: made for the base model 'a', not 'builtin'"
    ):
        fit_method("nplora", content_lora=tmp_path / "c.safetensors", style_lora=tmp_path / "s.safetensors",
                   out=tmp_path / "o")  # fmt: skip


def test_missing_inputs_are_one_line_errors_naming_the_options(tmp_path):
    with pytest.raises(B4MError, match="direct-merge: give --content-lora, --style-lora"):
        fit_method("direct-merge", out=tmp_path / "o")
    with pytest.raises(B4MError, match="unknown method 'zip'"):
        fit_method("zip")


@pytest.mark.parametrize("mu", [0.5, 3.0, float("inf")])
def test_nplora_projection_against_the_protected_subspace(tiny_sdxl, tmp_path, mu):
    """dW_m - dW_s keeps dW_c on the orthogonal complement of the style's row space and 1/(1+mu) of it inside;
    with mu = inf it is orthogonal to the protected subspace. The projector is built independently (pinv)."""
    unet = tiny_sdxl().unet
    random_lora(unet, tmp_path / "c.safetensors", 4, 1)
    random_lora(unet, tmp_path / "s.safetensors", 3, 2)
    fitted = fit_method(
        "nplora",
        content_lora=tmp_path / "c.safetensors",
        style_lora=tmp_path / "s.safetensors",
        mu=mu,
        out=tmp_path / "o",
        progress=False,
    )
    dc, ds = _dense_from_file(tmp_path / "c.safetensors"), _dense_from_file(tmp_path / "s.safetensors")
    raw = load_file(str(tmp_path / "s.safetensors"))
    got = load_lora(fitted.path).factors
    keep = 1.0 / (1.0 + mu)
    for name, (u, v) in got.items():
        v_s = raw[f"unet.{name}.lora_A.weight"].double()
        p = torch.linalg.pinv(v_s) @ v_s  # projector onto the row space of V_s
        comp = torch.eye(p.shape[0], dtype=torch.float64) - p
        extra = u.double() @ v.double() - ds[name]
        torch.testing.assert_close(extra @ comp, dc[name] @ comp, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(extra @ p, keep * dc[name] @ p, atol=1e-6, rtol=1e-5)
        if mu == float("inf"):
            assert (extra @ v_s.T).abs().max() < 1e-6
    for name, dw in fitted.merged_delta().items():  # the method's own dense formula agrees with the file
        torch.testing.assert_close(dw, got[name][0] @ got[name][1], atol=1e-6, rtol=1e-5)
