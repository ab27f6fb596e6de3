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
    "duolora": (
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
# K-LoRA picks content or style per layer *and per sampler step*: no single LoRA reproduces a time-varying update,
# so its file is the two sources plus settings, used through its sampling hook (checked below instead).
GENERATION_TIME = {"klora": (("content_lora", "style_lora"), {"k": 8})}
ONE_LORA = sorted(CASES)
# Stock diffusers vs the method's own merged weights, float32: differences are rounding of U (V x) vs (W0+dW) x.
ATOL = 1e-5


def test_every_registered_method_has_a_contract_case():
    assert set(all_methods()) == set(CASES) | set(GENERATION_TIME)
    for method_id, method in all_methods().items():
        assert (method.sampling_hook is not None) == (method_id in GENERATION_TIME)


@pytest.mark.parametrize("method_id", ONE_LORA)
def test_method_writes_a_file_that_stock_diffusers_loads_exactly(  # and dW on every layer
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
    _check_layers(fitted)


def _check_layers(fitted):
    """The exported dW equals the method's merged dW on every layer (and no other layer is in the file)."""
    merged = fitted.merged_delta()
    factors = load_lora(fitted.path).factors
    assert set(factors) == set(merged)
    for name, dw in merged.items():
        u, v = factors[name]
        assert torch.allclose(u @ v, dw.float(), atol=1e-6, rtol=1e-5), name


@pytest.fixture(scope="module")
def builtin_pipe():
    from b4m.diffusion.builtin_base import load_base_pipeline

    return load_base_pipeline(None)


@pytest.mark.parametrize("method_id", ONE_LORA)
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


def test_generation_time_method_writes_its_sources_and_its_hook_reproduces_the_selection(
    tiny_sdxl, world, tmp_path, sdxl_inputs
):
    """K-LoRA: stock diffusers loads nothing from the file; the hook's UNet at timestep t equals W0 + the source each layer
    selects at t, computed independently (sorted |dW|, the schedule written out)."""
    from b4m.adapters.deltas import target_linears
    from b4m.adapters.inject import DEFAULT_TARGETS

    keys, extra = GENERATION_TIME["klora"]
    data = world(tiny_sdxl().unet)
    fitted = fit_method("klora", progress=False, out=tmp_path / "k", **{k: data[k] for k in keys}, **extra)
    assert fitted.merged_delta is None and fitted.hook is not None
    probe = sdxl_inputs(tiny_sdxl().unet, batch=1)
    stock = tiny_sdxl()
    stock.load_lora_weights(str(fitted.path))  # no unet.* keys: a stock loader finds nothing to load
    assert torch.equal(unet_out(stock.unet, probe), unet_out(tiny_sdxl().unet, probe))

    c, s = load_lora(data["content_lora"]).factors, load_lora(data["style_lora"]).factors
    names = sorted(target_linears(tiny_sdxl().unet, DEFAULT_TARGETS))
    dense = {n: (c[n][0] @ c[n][1], s[n][0] @ s[n][1]) for n in names}
    top = {
        n: [d.abs().flatten().sort(descending=True).values[:8].sum().item() for d in dense[n]] for n in names
    }
    gamma = sum(dense[n][0].abs().sum().item() / dense[n][1].abs().sum().item() for n in names) / len(names)
    chosen_over_t = {}
    for t in (999, 500, 1):
        inputs = sdxl_inputs(tiny_sdxl().unet, batch=1)
        inputs["timestep"] = torch.tensor([t])
        scale = 1.5 * (1 - t / 1000) + 0.5
        chosen = {n: 0 if top[n][0] / gamma > scale * top[n][1] else 1 for n in names}
        chosen_over_t[t] = chosen
        want = unet_out(with_dense_delta(tiny_sdxl(), {n: dense[n][chosen[n]] for n in names}).unet, inputs)
        hooked = tiny_sdxl()
        fitted.hook(hooked, fitted.path)
        got = unet_out(hooked.unet, inputs)
        assert torch.allclose(got, want, atol=ATOL, rtol=0), (t, (got - want).abs().max())
        assert torch.equal(
            unet_out(hooked.unet, inputs), got
        )  # the same t gives the same model (no call counter)
    # The schedule moves layers from content (early, t near T) to style (late): never the other way.
    for n in names:
        assert chosen_over_t[999][n] <= chosen_over_t[500][n] <= chosen_over_t[1][n]
    assert sum(chosen_over_t[999].values()) < sum(chosen_over_t[1].values())


def test_a_world_base_folder_gets_the_builtin_presets(tmp_path):
    """A rebuilt or candidate world base (a folder with b4m_base.json) is a 32 px model: it must not get the
    512 px SD presets (which made a plain LoRA step on it 200x slower)."""
    from b4m.methods.base import resolve_options
    from b4m.methods.catalogue import LoRAOptions
    from b4m.options import BASE_INFO_FILE, PRESETS

    folder = tmp_path / "base"
    folder.mkdir()
    assert resolve_options(LoRAOptions(base=str(folder))).resolution == PRESETS["sd"]["resolution"]
    (folder / BASE_INFO_FILE).write_text("{}")
    for base in (str(folder), "builtin"):
        cfg = resolve_options(LoRAOptions(base=base))
        assert (cfg.resolution, cfg.steps, cfg.rank) == tuple(
            PRESETS["builtin"][k] for k in ("resolution", "steps", "rank")
        )
