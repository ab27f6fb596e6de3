"""One table over the registry: every method fits on a tiny SDXL in seconds, writes one file, and stock diffusers'
``load_lora_weights`` reproduces the method's own merged model (``W0 + dW`` from the method's parameterisation).
"""

import pytest
import torch

from b4m.adapters.codec import load_lora
from b4m.methods import all_methods, fit_method

from .conftest import unet_out, with_dense_delta

QUICK = {"steps": 2, "lr": 1e-2, "rank": 4, "resolution": 32}
# id -> the inputs it gets here (keys of the ``world`` fixture) and extra options
CASES = {
    "lora": (("content_images", "content_prompt"), QUICK),
    "joint": (("content_images", "content_prompt", "style_images", "style_prompt"), QUICK),
    "direct-merge": (("content_lora", "style_lora"), {"lambda_c": 0.8, "lambda_s": 1.1}),
    "nplora": (("content_lora", "style_lora"), {}),
    "ziplora": (
        ("content_lora", "style_lora", "content_images", "content_prompt", "style_images", "style_prompt"),
        {"steps": 3, "resolution": 32},
    ),
    "qrlora": (("content_images", "content_prompt", "style_images", "style_prompt"), QUICK),
    "b4m": (
        ("content_images", "content_prompt", "style_images", "style_prompt", "aux_styles", "aux_contents"),
        {**QUICK, "stage2_steps": 1, "checkpoint_every": 0},
    ),
}
CASES["b4m-official"] = CASES["b4m"]
# Stock diffusers vs the method's own merged weights, float32: differences are rounding of U (V x) vs (W0+dW) x.
ATOL = 1e-5


def test_every_registered_method_has_a_contract_case():
    assert set(all_methods()) == set(CASES)


@pytest.mark.parametrize("method_id", sorted(CASES))
def test_method_writes_a_file_that_stock_diffusers_loads_exactly(
    method_id, tiny_sdxl, world, tmp_path, sdxl_inputs
):
    keys, extra = CASES[method_id]
    data = world(tiny_sdxl().unet)
    options = {k: data[k] for k in keys} | extra
    fitted = fit_method(
        method_id, pipe=tiny_sdxl(), progress=False, base="tiny", out=tmp_path / "out", **options
    )
    assert fitted.path == tmp_path / "out" / "adapter.safetensors" and fitted.path.is_file()
    lora = load_lora(fitted.path)
    assert lora.meta["method"] in (method_id, "b4m")
    assert lora.lora_alpha == lora.rank  # scale 1

    inputs = sdxl_inputs(tiny_sdxl().unet, batch=2)
    base = unet_out(tiny_sdxl().unet, inputs)
    want = unet_out(with_dense_delta(tiny_sdxl(), fitted.merged_delta()).unet, inputs)
    stock = tiny_sdxl()
    stock.load_lora_weights(str(fitted.path))
    got = unet_out(stock.unet, inputs)
    assert (want - base).abs().max() > 1e-4  # the method changed the model
    assert torch.allclose(got, want, atol=ATOL, rtol=0), (got - want).abs().max()


def _check_layers(fitted):
    """The exported dW equals the method's merged dW on every layer (and no other layer is in the file)."""
    merged = fitted.merged_delta()
    factors = load_lora(fitted.path).factors
    assert set(factors) == set(merged)
    for name, dw in merged.items():
        u, v = factors[name]
        assert torch.allclose(u @ v, dw.float(), atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("method_id", sorted(CASES))
def test_exported_delta_equals_the_merged_delta_on_every_layer(method_id, tiny_sdxl, world, tmp_path):
    keys, extra = CASES[method_id]
    data = world(tiny_sdxl().unet)
    options = {k: data[k] for k in keys} | extra
    _check_layers(
        fit_method(method_id, pipe=tiny_sdxl(), progress=False, base="tiny", out=tmp_path / "o", **options)
    )


@pytest.fixture(scope="module")
def builtin_pipe():
    from b4m.world.base_model import load_base_pipeline

    return load_base_pipeline(None)


@pytest.mark.parametrize("method_id", sorted(CASES))
def test_method_on_the_builtin_base_loads_in_stock_diffusers(method_id, builtin_pipe, world, tmp_path):
    import copy

    keys, extra = CASES[method_id]
    data = world(builtin_pipe.unet)
    options = {k: data[k] for k in keys} | extra
    fitted = fit_method(
        method_id,
        pipe=copy.deepcopy(builtin_pipe),
        progress=False,
        base="builtin",
        out=tmp_path / "o",
        **options,
    )
    _check_layers(fitted)
    unet = builtin_pipe.unet
    g = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    inputs = {
        "sample": torch.randn(2, unet.config.in_channels, size, size, generator=g),
        "timestep": torch.tensor([100, 700]),
        "encoder_hidden_states": torch.randn(2, 8, unet.config.cross_attention_dim, generator=g),
    }
    want = unet_out(with_dense_delta(copy.deepcopy(builtin_pipe), fitted.merged_delta()).unet, inputs)
    stock = copy.deepcopy(builtin_pipe)
    stock.load_lora_weights(str(fitted.path))
    got = unet_out(stock.unet, inputs)
    assert (want - unet_out(unet, inputs)).abs().max() > 1e-4
    assert torch.allclose(got, want, atol=ATOL, rtol=0), (got - want).abs().max()
