"""K-LoRA's schedule follows the real sampler timestep, and b4m generate uses its sampling hook."""

import torch

from b4m.methods import fit_method
from b4m.methods.klora import install_klora

from .conftest import random_lora


def test_selection_follows_the_sampler_timesteps(tiny_sd, tmp_path):
    pipe = tiny_sd()
    random_lora(pipe.unet, tmp_path / "c.safetensors", 4, 1)
    random_lora(pipe.unet, tmp_path / "s.safetensors", 4, 2, std=0.04)
    fitted = fit_method(
        "klora",
        content_lora=tmp_path / "c.safetensors",
        style_lora=tmp_path / "s.safetensors",
        out=tmp_path / "k",
    )
    deltas = install_klora(pipe, fitted.path)
    clock = next(iter(deltas.values())).clock
    seen = []
    pipe.unet.register_forward_hook(lambda *a: seen.append(clock.t))
    pipe.set_progress_bar_config(disable=True)
    pipe(
        "a photo of teddy",
        num_inference_steps=4,
        guidance_scale=2.0,
        height=32,
        width=32,
        output_type="latent",
    )
    assert seen == [float(t) for t in pipe.scheduler.timesteps]
    # Twice the same generation: same image (a call counter would have moved on).
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    a, b = (
        pipe(
            "a photo", num_inference_steps=3, height=32, width=32, generator=gen, output_type="latent"
        ).images
        for gen in g
    )
    assert torch.equal(a, b)


def test_generate_installs_the_hook_on_the_builtin_base(tmp_path):
    import b4m
    from b4m.diffusion.builtin_base import load_base_pipeline

    unet = load_base_pipeline(None).unet
    random_lora(unet, tmp_path / "c.safetensors", 4, 1)
    random_lora(unet, tmp_path / "s.safetensors", 4, 2)
    path = b4m.run_method(
        "klora",
        content_lora=tmp_path / "c.safetensors",
        style_lora=tmp_path / "s.safetensors",
        out=tmp_path / "k",
    )
    base = b4m.generate(prompt=["a cup"], n=1, steps=3, out=tmp_path / "g0", progress=False)
    with_k = b4m.generate(adapter=path, prompt=["a cup"], n=1, steps=3, out=tmp_path / "g1", progress=False)
    assert base[0].read_bytes() != with_k[0].read_bytes()
