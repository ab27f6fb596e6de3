"""Fitting the card: encoders off the GPU while training (what a CPU test can show: the moves and their order),
gradient checkpointing gives the same gradients, and a quantized frozen base trains adapters that stock
diffusers loads."""

import pytest
import torch
from helpers import image_folder, unet_out, with_dense_delta

from b4m.adapters import PLPSpec, inject_plp, load_lora
from b4m.adapters.deltas import DeltaLinear
from b4m.diffusion import memory
from b4m.diffusion.pipeline import encode_images, encode_prompts, per_sample_loss, training_scheduler
from b4m.methods import fit_method
from b4m.options import Stage1Config, Stage2Config
from b4m.train.stage1 import train_stage1
from b4m.train.stage2 import train_stage2

QUICK = {"steps": 2, "lr": 1e-2, "rank": 4, "resolution": 32, "checkpoint_every": 0}


@pytest.fixture
def folders(tmp_path):
    d = tmp_path / "data"
    return {
        "content_images": image_folder(d / "content", 0),
        "content_prompt": "a photo of snq teddy",
        "style_images": image_folder(d / "style", 1),
        "style_prompt": "a paper in w@z style",
        "aux": [
            str(image_folder(d / f"as{i}", 10 + i, n=1, caption=f"a photo in style {i}")) for i in range(2)
        ],
    }


def _events(pipe, monkeypatch):
    """What happens to the encoders, in order: their forwards ("encode"), the denoiser's ("denoise") and every
    move b4m makes for memory (``("move", part, device)``)."""
    events = []
    names = {id(getattr(pipe, n)): n for n in memory.ENCODERS if getattr(pipe, n, None) is not None}
    for n in names.values():
        getattr(pipe, n).register_forward_pre_hook(lambda *_: events.append("encode"))
    if "vae" in names.values():
        real = pipe.vae.encode
        pipe.vae.encode = lambda *a, **k: (events.append("encode"), real(*a, **k))[1]
    pipe.unet.register_forward_pre_hook(lambda *_: events.append("denoise"))
    real_move = memory.move

    def move(module, device):
        events.append(("move", names.get(id(module), "?"), str(device)))
        real_move(module, device)

    monkeypatch.setattr(memory, "move", move)
    return events


def _check_released_while_training(events, parts):
    """Moves come in groups of ``len(parts)``: a release (to the CPU), then a restore. No encoder runs while
    released; the denoiser runs there (the training steps). Returns the number of release/restore spans."""
    n, moves, released, denoised = len(parts), 0, False, 0
    for e in events:
        if isinstance(e, tuple):
            if not released:
                assert e[2] == "cpu"
            moves += 1
            if moves % n == 0:
                released = not released
        elif e == "encode":
            assert not released, "an encoder ran while it was released"
        elif e == "denoise" and released:
            denoised += 1
    assert moves % (2 * n) == 0 and not released and denoised > 0
    moved = {e[1] for e in events if isinstance(e, tuple)}
    assert moved == set(parts)
    return moves // (2 * n)


def test_every_trainer_moves_the_encoders_off_while_it_trains(
    tiny_sd, tiny_sdxl, folders, tmp_path, monkeypatch
):
    """On a CPU the moves are to where the parts already are; what is shown is that every trainer releases the
    text encoders and the VAE after caching and before its first step, and restores them after the last."""
    pipe = tiny_sd()
    events = _events(pipe, monkeypatch)
    cfg = Stage1Config(images=folders["content_images"], prompt=folders["content_prompt"], aux=folders["aux"],
                       base="tiny", out=tmp_path / "s1", **QUICK)  # fmt: skip
    train_stage1(cfg, "content", pipe=pipe, progress=False)
    assert _check_released_while_training(events, ["text_encoder", "vae"]) == 1
    assert events.index(("move", "text_encoder", "cpu")) > max(
        i for i, e in enumerate(events) if e == "encode"
    )

    pipe = tiny_sdxl()  # QR-LoRA: two loops, caching the style images between them
    events = _events(pipe, monkeypatch)
    fit_method("qrlora", pipe=pipe, progress=False, base="tiny", out=tmp_path / "qr",
               **{k: v for k, v in folders.items() if k != "aux"}, **QUICK)  # fmt: skip
    assert _check_released_while_training(events, ["text_encoder", "text_encoder_2", "vae"]) == 2


def _grads(pipe, adapter, checkpointing):
    unet = pipe.unet
    if checkpointing:
        memory.enable_checkpointing(unet)
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    g = torch.Generator().manual_seed(0)
    latents = encode_images(pipe, torch.rand(2, 3, 32, 32, generator=g))
    cond = encode_prompts(pipe, ["a photo of snq teddy", "a paper in w@z style"], 32)
    noise = torch.randn(latents.shape, generator=g)
    for p in adapter.parameters("BD"):
        p.grad = None
    per_sample_loss(
        unet, training_scheduler(pipe), latents, cond, noise, torch.tensor([100, 700])
    ).sum().backward()
    return [p.grad.clone() for p in adapter.parameters("BD")]


def test_gradient_checkpointing_gives_the_same_gradients(tiny_sdxl, monkeypatch):
    """Also under stage 1's strict MCP routing, a context that the backward pass's recomputation must see (plain
    ``enable_gradient_checkpointing()`` fails there: torch finds another graph recomputed)."""
    pipe = tiny_sdxl()
    pipe.unet.requires_grad_(False)
    adapter = inject_plp(pipe.unet, PLPSpec(rank=4))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.05, generator=torch.Generator().manual_seed(1))
    for p in adapter.parameters("BD"):
        p.requires_grad_(True)
    plain = _grads(pipe, adapter, False)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    checkpointed = _grads(pipe, adapter, True)
    assert calls  # the UNet did recompute
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, checkpointed, strict=True))
    assert any(a.abs().sum() > 0 for a in plain)


def _file_tensors(path):
    return {k: (u, v) for k, (u, v) in load_lora(path).factors.items()}


@pytest.mark.parametrize(
    "method_id",
    [
        "joint",
        *(
            pytest.param(m, marks=pytest.mark.slow)
            for m in ("stage2", "lora", "ziplora", "duolora", "qrlora")
        ),
    ],
)
def test_stage2_and_baselines_train_the_same_with_gradient_checkpointing(
    method_id, tiny_sdxl, folders, tmp_path, monkeypatch
):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )

    def run(out, gc):
        if method_id == "stage2":
            return _stage2(tiny_sdxl, folders, tmp_path, out, gradient_checkpointing=gc)
        if method_id == "stage1":  # strict MCP routing through the recomputation
            cfg = Stage1Config(images=folders["content_images"], prompt=folders["content_prompt"],
                               aux=folders["aux"], base="tiny", out=tmp_path / out, gradient_checkpointing=gc,
                               **QUICK)  # fmt: skip
            return train_stage1(cfg, "content", pipe=tiny_sdxl(), progress=False)
        options = {k: v for k, v in folders.items() if k != "aux"} | QUICK | _SOURCES.get(method_id, {})
        if method_id in _SOURCES:
            options |= _sources(tiny_sdxl, tmp_path)
        return fit_method(method_id, pipe=tiny_sdxl(), progress=False, base="tiny", out=tmp_path / out,
                          gradient_checkpointing=gc, **options).path  # fmt: skip

    a = _file_tensors(run("plain", False))
    assert not calls
    b = _file_tensors(run("gc", True))
    assert calls  # the run did recompute
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-7), (k, (x - y).abs().max())


_SOURCES = {"ziplora": {"steps": 2}, "duolora": {"steps": 2}}


def _sources(tiny_sdxl, tmp_path):
    """Two random plain LoRAs (the merging baselines' sources) on the tiny SDXL's attention projections."""
    from b4m.adapters.codec import save_lora
    from b4m.adapters.deltas import target_linears
    from b4m.adapters.inject import DEFAULT_TARGETS

    paths = {}
    for key, seed in (("content_lora", 1), ("style_lora", 2)):
        g = torch.Generator().manual_seed(seed)
        path = tmp_path / f"{key}.safetensors"
        if not path.exists():
            layers = sorted(target_linears(tiny_sdxl().unet, DEFAULT_TARGETS).items())
            save_lora(path, {n: (torch.randn(m.out_features, 3, generator=g) * 0.05,
                                 torch.randn(3, m.in_features, generator=g) * 0.05) for n, m in layers}, {})  # fmt: skip
        paths[key] = path
    return paths


def _stage2(tiny_sdxl, folders, tmp_path, out, **kw):
    adapters = {}
    for role, images, prompt in (("content", "content_images", "content_prompt"),
                                 ("style", "style_images", "style_prompt")):  # fmt: skip
        path = tmp_path / f"s1-{role}" / "adapter.safetensors"
        if not path.exists():
            cfg = Stage1Config(images=folders[images], prompt=folders[prompt], aux=folders["aux"], base="tiny",
                               out=path.parent, **QUICK)  # fmt: skip
            train_stage1(cfg, role, pipe=tiny_sdxl(), progress=False)
        adapters[role] = path
    cfg = Stage2Config(content=adapters["content"], style=adapters["style"], base="tiny", out=tmp_path / out,
                       stage2_steps=2, stage2_lr=1e-2, resolution=32, checkpoint_every=0, **kw)  # fmt: skip
    return train_stage2(cfg, pipe=tiny_sdxl(), progress=False)


@pytest.mark.parametrize("kind", ["int8", "fp8", "nf4"])
def test_adapters_run_in_full_precision_on_a_quantized_linear(kind, tiny_sdxl, sdxl_inputs):
    """A PLP adapter (peft) on a quantized UNet adds exactly its delta: quantized base output + dW x."""
    pipe = tiny_sdxl()
    unet = pipe.unet.requires_grad_(False)
    assert memory.quantize_denoiser(unet, kind) > 0
    inputs = sdxl_inputs(unet, batch=2)
    base = unet_out(unet, inputs)
    adapter = inject_plp(unet, PLPSpec(rank=4))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.05, generator=torch.Generator().manual_seed(2))
    assert all(p.dtype == torch.float32 for p in adapter.parameters("BD"))
    adapted = unet_out(unet, inputs)
    assert (adapted - base).abs().max() > 1e-4
    # the same layer, by hand: quantized base layer + U (V x)
    name = adapter.module_names[0]
    layer = adapter.layers[name]
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(3))
    u, v = adapter.factors()[name]
    want = layer.get_base_layer()(x) + x @ v.T @ u.T
    assert torch.allclose(layer(x), want, atol=1e-5)
    dense = memory.dense_weight(layer.get_base_layer())
    assert dense.shape == (layer.out_features, layer.in_features) and dense.dtype == torch.float32


def test_int8_base_trains_and_its_adapter_loads_in_plain_diffusers(tiny_sdxl, folders, tmp_path, sdxl_inputs):
    pipe = tiny_sdxl()
    fitted = fit_method("lora", pipe=pipe, progress=False, base="tiny", out=tmp_path / "q", quantize_base="int8",
                        content_images=folders["content_images"], content_prompt=folders["content_prompt"],
                        **QUICK)  # fmt: skip
    wrapped = [m for m in pipe.unet.modules() if isinstance(m, DeltaLinear)]
    assert wrapped and all(type(m.base_layer).__name__ == "QLinear" for m in wrapped)  # the base stayed int8
    assert all(p.dtype == torch.float32 for m in wrapped for p in m.delta.parameters())
    lora = load_lora(fitted.path)
    assert lora.meta["config"]["quantize_base"] == "int8"
    inputs = sdxl_inputs(tiny_sdxl().unet, batch=2)
    want = unet_out(with_dense_delta(tiny_sdxl(), fitted.merged_delta()).unet, inputs)
    stock = tiny_sdxl()  # unquantized
    stock.load_lora_weights(str(fitted.path))
    got = unet_out(stock.unet, inputs)
    assert (want - unet_out(tiny_sdxl().unet, inputs)).abs().max() > 1e-4  # it trained
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_b4m_stage1_on_a_quantized_base_loads_in_plain_diffusers(
    kind, tiny_sdxl, folders, tmp_path, sdxl_inputs
):
    inputs = sdxl_inputs(tiny_sdxl().unet, batch=2)
    cfg = Stage1Config(images=folders["content_images"], prompt=folders["content_prompt"], aux=folders["aux"],
                       base="tiny", out=tmp_path / "s1q", quantize_base=kind, **QUICK)  # fmt: skip
    path = train_stage1(cfg, "content", pipe=tiny_sdxl(), progress=False)
    stock = tiny_sdxl()
    stock.load_lora_weights(str(path))
    assert (unet_out(stock.unet, inputs) - unet_out(tiny_sdxl().unet, inputs)).abs().max() > 1e-6
