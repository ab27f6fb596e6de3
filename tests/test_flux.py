"""FLUX as a base model: the FLUX.1-dev layer counts, the flow-matching loss, MCP routing, stage 1 + fusion on a
tiny ``FluxPipeline``, and files that stock diffusers reloads (diffusers and kohya/BFL spellings)."""

import pytest
import torch
from diffusers import FluxPipeline
from helpers import image_folder as _folder

from b4m.adapters import PLPSpec, inject_plp, load_lora, mcp_routing
from b4m.adapters.codec import save_kohya
from b4m.diffusion import flux
from b4m.diffusion.pipeline import (
    encode_images,
    encode_prompts,
    per_sample_loss,
    training_scheduler,
)
from b4m.errors import B4MError
from b4m.options import Stage1Config, Stage2Config
from b4m.train.stage1 import train_stage1
from b4m.train.stage2 import fuse, train_stage2


def _suffix_matches(name, targets):  # peft's rule for a list of target names
    return any(name == t or name.endswith("." + t) for t in targets)


def test_flux_dev_transformer_layer_counts():
    """FLUX.1-dev's public transformer config on the meta device: 19 double + 38 single blocks; the 12 names of
    diffusers' FLUX LoRA script adapt 19 x 12 + 38 x 3 = 342 linears, the 4 attention names 19 x 4 + 38 x 3 =
    190 (single blocks have to_q/k/v but no to_out), b4m's default 8 names 19 x 8 + 38 x 3 = 266."""
    model = flux.flux_transformer("meta")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(model.transformer_blocks) == 19 and len(model.single_transformer_blocks) == 38
    assert sum(_suffix_matches(n, flux.DIFFUSERS_SCRIPT_TARGETS) for n in linears) == 342
    four = [n for n in linears if _suffix_matches(n, ("to_q", "to_k", "to_v", "to_out.0"))]
    assert len(four) == 190
    assert sum(n.startswith("single_transformer_blocks.") for n in four) == 114
    assert sum(_suffix_matches(n, flux.FLUX_TARGETS) for n in linears) == 266
    assert sum(p.numel() for p in model.parameters()) == 11_901_408_320


def test_flow_matching_loss_is_the_scheduler_target(tiny_flux):
    """per_sample_loss on FLUX = MSE(transformer((1 - s) x0 + s eps, packed), eps - x0), computed by hand."""
    pipe = tiny_flux()
    g = torch.Generator().manual_seed(0)
    latents = encode_images(pipe, torch.rand(2, 3, 32, 32, generator=g))
    assert latents.shape == (2, 4, 16, 16)
    cond = encode_prompts(pipe, ["a photo of snq teddy", "a paper in w@z style"], 32)
    assert cond.hidden.shape == (2, 16, 32) and cond.added["pooled_projections"].shape == (2, 32)
    noise = torch.randn(latents.shape, generator=g)
    sched = training_scheduler(pipe)
    assert isinstance(sched, flux.FlowMatchTraining)
    idx = torch.tensor([100, 900])
    with torch.no_grad():
        losses = per_sample_loss(pipe.transformer, sched, latents, cond, noise, idx)
    # By hand: FLUX.1-dev's config has dynamic shifting, so training sigmas are (1000 - i) / 1000.
    sigma = torch.tensor([0.9, 0.1]).view(2, 1, 1, 1)
    noisy = (1 - sigma) * latents + sigma * noise
    packed = noisy.view(2, 4, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 64, 16)
    ids = torch.zeros(8, 8, 3)
    ids[..., 1] = torch.arange(8)[:, None]
    ids[..., 2] = torch.arange(8)[None, :]
    with torch.no_grad():
        pred = pipe.transformer(
            hidden_states=packed,
            timestep=sigma.flatten(),
            guidance=torch.full((2,), 3.5),
            pooled_projections=cond.added["pooled_projections"],
            encoder_hidden_states=cond.hidden,
            txt_ids=torch.zeros(16, 3),
            img_ids=ids.reshape(64, 3),
            return_dict=False,
        )[0]
    target = (noise - latents).view(2, 4, 8, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 64, 16)
    expected = (pred - target).pow(2).mean(dim=(1, 2))
    assert torch.allclose(losses, expected, rtol=1e-5, atol=1e-7)


def test_batched_mcp_step_routes_gradients_strictly_on_flux(tiny_flux):
    """On FLUX's transformer (double and single blocks): L_target reaches only B, L_aux only D."""
    pipe = tiny_flux()
    pipe.transformer.requires_grad_(False)
    adapter = inject_plp(pipe.transformer, PLPSpec(rank=4), flux.FLUX_TARGETS)
    assert len(adapter.module_names) == 2 * 8 + 2 * 3
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.05)
    g = torch.Generator().manual_seed(0)
    latents = encode_images(pipe, torch.rand(3, 3, 32, 32, generator=g))
    cond = encode_prompts(pipe, ["a photo of snq teddy", "a in style", "b in style"], 32)
    noise = torch.randn(1, *latents.shape[1:], generator=g).expand_as(latents)
    sched = training_scheduler(pipe)
    t = torch.full((3,), 500)

    def grads(rows):
        for p in adapter.parameters("BD"):
            p.grad = None
        with mcp_routing(1, "B"):
            losses = per_sample_loss(pipe.transformer, sched, latents, cond, noise, t)
        losses[rows].sum().backward()
        return {
            k: [0.0 if p.grad is None else p.grad.abs().sum().item() for p in adapter.parameters(k)]
            for k in "BD"
        }

    target = grads(slice(0, 1))
    assert sum(target["D"]) == 0.0 and min(target["B"]) > 0  # every layer, single blocks included
    aux = grads(slice(1, 3))
    assert sum(aux["B"]) == 0.0 and min(aux["D"]) > 0


@pytest.fixture
def data(tmp_path):
    return {
        "content": _folder(tmp_path / "content", 0, n=2),
        "style": _folder(tmp_path / "style", 1, n=2),
        "aux_styles": [
            _folder(tmp_path / f"as{i}", 10 + i, n=1, caption=f"a photo in style {i}") for i in range(2)
        ],
        "aux_contents": [
            _folder(tmp_path / f"ac{i}", 20 + i, n=1, caption=f"a teddy number {i}") for i in range(2)
        ],
    }


def _s1(data, tmp_path, role, **kw):
    images, aux = (
        (data["content"], data["aux_styles"]) if role == "content" else (data["style"], data["aux_contents"])
    )
    cfg = dict(
        images=images,
        prompt="a photo of snq teddy" if role == "content" else "a paper in w@z style",
        aux=[str(a) for a in aux],
        base="tiny-flux",
        out=tmp_path / role,
        steps=3,
        lr=1e-2,
        rank=4,
        resolution=32,
        checkpoint_every=0,
    )
    return Stage1Config(**(cfg | kw))


def _inputs(pipe, seed=0):
    """Seeded transformer inputs (packed 8x8 latents, 16 text tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    return {
        "hidden_states": torch.randn(1, 64, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, 16, 32, generator=g),
        "pooled_projections": torch.randn(1, 32, generator=g),
        "timestep": torch.tensor([0.6]),
        "guidance": torch.tensor([3.5]),
        "img_ids": ids,
        "txt_ids": torch.zeros(16, 3),
        "return_dict": False,
    }


@pytest.fixture
def flux_pair(tiny_flux, data, tmp_path):
    c = train_stage1(_s1(data, tmp_path, "content"), "content", pipe=tiny_flux(), progress=False)
    s = train_stage1(_s1(data, tmp_path, "style"), "style", pipe=tiny_flux(), progress=False)
    return c, s


def test_stage1_and_fusion_on_flux_reload_in_stock_flux_pipeline(tiny_flux, flux_pair, tmp_path):
    c, s = flux_pair
    content, style = load_lora(c), load_lora(s)
    assert content.meta["base_family"] == "flux" and content.spelling == "peft"
    # The default targets widen to FLUX's 8 attention projections: 2 double blocks x 8 + 2 single blocks x 3.
    assert len(content.factors) == 22
    assert any(m.endswith("attn.add_q_proj") for m in content.factors)
    fused, _ = fuse(c, s)
    for m in fused.factors:  # fusion keeps content's U and style's V exactly
        assert torch.equal(fused.factors[m][0], content.factors[m][0])
        assert torch.equal(fused.factors[m][1], style.factors[m][1])
    pipe = tiny_flux()
    path = train_stage2(
        Stage2Config(
            content=c,
            style=s,
            base="tiny-flux",
            out=tmp_path / "fused",
            stage2_steps=2,
            stage2_lr=1e-2,
            resolution=32,
        ),
        pipe=pipe,
        progress=False,
    )
    inputs = _inputs(pipe)
    with torch.no_grad():
        in_memory = pipe.transformer(**inputs)[0]
        fresh = tiny_flux()
        base_out = fresh.transformer(**inputs)[0]
        fresh.load_lora_weights(str(path))
        reloaded = fresh.transformer(**inputs)[0]
    assert (in_memory - base_out).abs().max() > 1e-4
    assert torch.allclose(reloaded, in_memory, atol=1e-5, rtol=0)
    # Fusion exactness with 0 steps: dW of every layer is U_content V_style.
    fused0 = train_stage2(
        Stage2Config(
            content=c, style=s, base="tiny-flux", out=tmp_path / "f0", stage2_steps=0, resolution=32
        ),
        pipe=tiny_flux(),
        progress=False,
    )
    f0 = load_lora(fused0)
    for m, (u, v) in f0.factors.items():
        assert torch.allclose(u @ v, content.factors[m][0] @ style.factors[m][1], atol=1e-6, rtol=0)


def test_block_ranges_restrict_the_adapted_layers(tiny_flux, data, tmp_path):
    path = train_stage1(
        _s1(
            data,
            tmp_path,
            "content",
            steps=1,
            blocks=["transformer_blocks.1", "single_transformer_blocks.0-0"],
        ),
        "content",
        pipe=tiny_flux(),
        progress=False,
    )
    layers = sorted(load_lora(path).factors)
    assert len(layers) == 8 + 3
    assert all(m.startswith(("transformer_blocks.1.", "single_transformer_blocks.0.")) for m in layers)
    with pytest.raises(B4MError, match=r"^--blocks single_transformer_blocks\.5: no targeted layer"):
        train_stage1(
            _s1(data, tmp_path, "content", out=tmp_path / "b2", blocks=["single_transformer_blocks.5"]),
            "content",
            pipe=tiny_flux(),
            progress=False,
        )
    with pytest.raises(B4MError, match=r"^--blocks transformer_blocks\.3-1: the range runs backwards"):
        train_stage1(
            _s1(data, tmp_path, "content", out=tmp_path / "b3", blocks=["transformer_blocks.3-1"]),
            "content",
            pipe=tiny_flux(),
        )


def _random_factors(model, targets, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and _suffix_matches(name, targets):
            out[name] = (
                torch.randn(m.out_features, rank, generator=g) * 0.1,
                torch.randn(rank, m.in_features, generator=g) * 0.1,
            )
    return out


def test_kohya_export_uses_bfl_names_and_reloads_exactly(tiny_flux, tmp_path):
    """Double-block layers exported as lora_unet_double_blocks_<i>_img_attn_qkv (fused, block-diagonal) etc.:
    stock FluxPipeline.load_lora_weights gives the same transformer as the diffusers-spelled factors."""
    pipe = tiny_flux()
    factors = _random_factors(pipe.transformer.transformer_blocks, flux.FLUX_TARGETS + ("ff.net.2",), rank=3)
    factors = {f"transformer_blocks.{k}": v for k, v in factors.items()}
    path = save_kohya(tmp_path / "k.safetensors", factors)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        version = f.metadata()["ss_base_model_version"]
    assert version == "flux1"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_double_blocks_1_txt_attn_proj.lora_up.weight" in keys
    assert not any("to_q" in k for k in keys)
    back = load_lora(path)  # b4m reads it back exactly
    assert back.spelling == "kohya" and set(back.factors) == set(factors)
    for m, (u, v) in factors.items():
        assert torch.allclose(back.factors[m][0] @ back.factors[m][1], u @ v, atol=1e-6)
    inputs = _inputs(pipe, seed=1)
    expected_pipe = tiny_flux()
    expected_pipe.load_lora_weights(
        {f"transformer.{m}.lora_A.weight": v for m, (_, v) in factors.items()}
        | {f"transformer.{m}.lora_B.weight": u for m, (u, _) in factors.items()}
    )
    pipe.load_lora_weights(str(path))
    with torch.no_grad():
        assert torch.allclose(
            pipe.transformer(**inputs)[0], expected_pipe.transformer(**inputs)[0], atol=1e-5, rtol=0
        )


def test_kohya_single_block_linear1_at_flux_dev_size_splits_back_in_diffusers():
    """FLUX.1-dev-sized factors of one single block (to_q/k/v 3072 -> 3072; proj_mlp absent) fuse into
    linear1 (21504 rows, rank 4r, proj_mlp a zero block); diffusers' own kohya FLUX converter splits it back."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from b4m.adapters.flux_keys import to_bfl

    g = torch.Generator().manual_seed(0)
    r = 2
    factors = {
        f"single_transformer_blocks.7.attn.{p}": (
            torch.randn(3072, r, generator=g),
            torch.randn(r, 3072, generator=g),
        )
        for p in ("to_q", "to_k", "to_v")
    }
    factors["transformer_blocks.3.attn.to_k"] = (
        torch.randn(3072, r, generator=g),
        torch.randn(r, 3072, generator=g),
    )
    bfl = to_bfl(factors)
    u1, v1 = bfl["single_blocks_7_linear1"]
    assert u1.shape == (3 * 3072 + 12288, 4 * r) and v1.shape == (4 * r, 3072)
    state = {}
    for k, (u, v) in bfl.items():
        state[f"lora_unet_{k}.lora_down.weight"] = v
        state[f"lora_unet_{k}.lora_up.weight"] = u
        state[f"lora_unet_{k}.alpha"] = torch.tensor(float(v.shape[0]))
    converted = _convert_kohya_flux_lora_to_diffusers(state)
    for m, (u, v) in factors.items():
        a, b = converted[f"transformer.{m}.lora_A.weight"], converted[f"transformer.{m}.lora_B.weight"]
        assert torch.allclose(b @ a, u @ v, atol=1e-5)
    for p in ("to_q", "to_v"):  # members the file lacked are zero
        a = converted[f"transformer.transformer_blocks.3.attn.{p}.lora_A.weight"]
        b = converted[f"transformer.transformer_blocks.3.attn.{p}.lora_B.weight"]
        assert (b @ a).abs().max() == 0
    assert (converted["transformer.single_transformer_blocks.7.proj_mlp.lora_B.weight"]).abs().max() == 0


@pytest.fixture
def flux_sources(tiny_flux, data, tmp_path):
    """Two plain FLUX LoRAs from `lora` (content and style), two steps each."""
    from b4m.methods.common import fit_method

    common = dict(base="tiny-flux", steps=2, lr=1e-2, rank=2, resolution=32, seed=0)
    c = fit_method(
        "lora",
        pipe=tiny_flux(),
        progress=False,
        content_images=data["content"],
        content_prompt="a photo of snq teddy",
        out=tmp_path / "lc",
        **common,
    ).path
    s = fit_method(
        "lora",
        pipe=tiny_flux(),
        progress=False,
        concept="style",
        style_images=data["style"],
        style_prompt="a paper in w@z style",
        out=tmp_path / "ls",
        **common,
    ).path
    return c, s


def _loads_in_stock_pipeline(tiny_flux, path, fitted=None):
    """The file loads with FluxPipeline.load_lora_weights and changes the transformer's output."""
    pipe = tiny_flux()
    inputs = _inputs(pipe, seed=2)
    with torch.no_grad():
        before = pipe.transformer(**inputs)[0]
        pipe.load_lora_weights(str(path))
        after = pipe.transformer(**inputs)[0]
    assert (after - before).abs().max() > 1e-5


@pytest.mark.parametrize("method", ["direct-merge", "nplora", "ziplora", "klora"])
def test_merging_methods_run_on_flux(method, tiny_flux, flux_sources, data, tmp_path):
    from b4m.methods.common import fit_method

    c, s = flux_sources
    assert load_lora(c).meta["base_family"] == "flux"
    opts = dict(base="tiny-flux", content_lora=c, style_lora=s, out=tmp_path / method)
    if method == "ziplora":
        opts |= dict(
            steps=2,
            content_images=data["content"],
            style_images=data["style"],
            resolution=32,
            content_prompt="a photo of snq teddy",
            style_prompt="a paper in w@z style",
        )
    fitted = fit_method(method, pipe=tiny_flux(), progress=False, **opts)
    if method == "klora":  # a generation-time method: its hook picks one source per step on the transformer
        from b4m.diffusion.sampling import sample

        pipe = tiny_flux()
        deltas = fitted.hook(pipe, fitted.path)
        sample(pipe, ["a snq teddy"], n=1, steps=2, guidance=3.5, resolution=32, progress=False)
        clock = next(iter(deltas.values())).clock
        assert clock.T == 1 and 0.0 < clock.t < 1.0  # FluxPipeline passes timestep / 1000
        return
    lora = load_lora(fitted.path)
    assert lora.meta["base_family"] == "flux" and lora.spelling == "peft"
    if fitted.merged_delta is not None:
        for m, dw in fitted.merged_delta().items():
            u, v = lora.factors[m]
            assert torch.allclose(u @ v, dw.float(), atol=1e-5)
    _loads_in_stock_pipeline(tiny_flux, fitted.path)


@pytest.mark.parametrize("method", ["joint", "qrlora"])
def test_trained_methods_run_on_flux(method, tiny_flux, data, tmp_path):
    from b4m.methods.common import fit_method

    fitted = fit_method(
        method,
        pipe=tiny_flux(),
        progress=False,
        base="tiny-flux",
        steps=2,
        lr=1e-2,
        rank=2,
        resolution=32,
        content_images=data["content"],
        style_images=data["style"],
        content_prompt="a photo of snq teddy",
        style_prompt="a paper in w@z style",
        out=tmp_path / method,
    )
    lora = load_lora(fitted.path)
    assert any(m.startswith("single_transformer_blocks.") for m in lora.factors)
    _loads_in_stock_pipeline(tiny_flux, fitted.path)


def test_duolora_refuses_flux_in_one_line(tiny_flux, flux_sources, data, tmp_path):
    from b4m.methods.common import fit_method

    c, s = flux_sources
    with pytest.raises(B4MError, match=r"^duolora: --base tiny-flux is a FLUX model; DuoLoRA's layer priors"):
        fit_method(
            "duolora",
            pipe=tiny_flux(),
            progress=False,
            base="tiny-flux",
            content_lora=c,
            style_lora=s,
            content_images=data["content"],
            style_images=data["style"],
            out=tmp_path / "duo",
        )


def test_cli_trains_fuses_and_generates_on_a_flux_folder(tiny_flux, data, tmp_path, capsys):
    """`b4m train content/style`, `fuse`, `generate`, `info`, `export` with --base <FLUX folder>; the fused file
    (and its kohya export) load in a plain FluxPipeline read from the same folder."""
    from b4m.cli import main

    base = tmp_path / "flux-base"
    tiny_flux().save_pretrained(base)
    common = [
        "--base",
        str(base),
        "--steps",
        "2",
        "--lr",
        "1e-2",
        "--rank",
        "4",
        "--resolution",
        "32",
        "--checkpoint-every",
        "0",
    ]
    assert (
        main(
            [
                "train",
                "content",
                "--images",
                str(data["content"]),
                "--prompt",
                "a photo of snq teddy",
                "--aux-styles",
                *map(str, data["aux_styles"]),
                "--out",
                str(tmp_path / "c"),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "style",
                "--images",
                str(data["style"]),
                "--prompt",
                "a paper in w@z style",
                "--aux-contents",
                *map(str, data["aux_contents"]),
                "--out",
                str(tmp_path / "s"),
                *common,
            ]
        )
        == 0
    )
    fused = tmp_path / "f" / "adapter.safetensors"
    assert (
        main(
            [
                "fuse",
                "--content",
                str(tmp_path / "c" / "adapter.safetensors"),
                "--style",
                str(tmp_path / "s" / "adapter.safetensors"),
                "--base",
                str(base),
                "--out",
                str(tmp_path / "f"),
                "--stage2-steps",
                "1",
                "--stage2-lr",
                "1e-2",
                "--resolution",
                "32",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "--adapter",
                str(fused),
                "--prompt",
                "a snq teddy in w@z style",
                "-n",
                "2",
                "--base",
                str(base),
                "--out",
                str(tmp_path / "img"),
                "--steps",
                "2",
                "--resolution",
                "32",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "img").glob("*.png"))) == 3  # two images and grid.png
    capsys.readouterr()
    assert main(["info", str(fused)]) == 0
    assert "base family: flux" in capsys.readouterr().out
    kohya = tmp_path / "fused_kohya.safetensors"
    assert main(["export", str(fused), "--out", str(kohya)]) == 0
    # Plain diffusers: the folder, then the fused file; the same transformer output from the kohya export.
    plain = FluxPipeline.from_pretrained(str(base))
    inputs = _inputs(plain, seed=3)
    with torch.no_grad():
        before = plain.transformer(**inputs)[0]
        plain.load_lora_weights(str(fused))
        after = plain.transformer(**inputs)[0]
    assert (after - before).abs().max() > 1e-5
    back = load_lora(kohya)  # the kohya file holds the same dW (single blocks' linear1 fused)
    for m, (u, v) in load_lora(fused).factors.items():
        assert torch.allclose(back.factors[m][0] @ back.factors[m][1], u @ v, atol=1e-6)
    # And back to diffusers spelling (transformer.* keys): the same transformer as the original fused file.
    again = tmp_path / "fused_again.safetensors"
    assert main(["convert", str(kohya), str(again), "--to", "diffusers"]) == 0
    plain2 = FluxPipeline.from_pretrained(str(base))
    plain2.load_lora_weights(str(again))
    with torch.no_grad():
        assert torch.allclose(plain2.transformer(**inputs)[0], after, atol=1e-5, rtol=0)
    # A malformed block range: one line, exit code 2.
    assert (
        main(
            [
                "train",
                "content",
                "--images",
                str(data["content"]),
                "--blocks",
                "transformer_blocks.x-",
                "--no-mcp",
                "--out",
                str(tmp_path / "bad"),
                *common,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("b4m: error: --blocks transformer_blocks.x-: give a block path") and "\n" not in err
