"""DuoLoRA: layer priors from the UNet's structure, the rank loss as stated, Constyle pieces, exact pruned export."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from b4m.adapters.codec import load_lora
from b4m.adapters.deltas import target_linears
from b4m.adapters.inject import DEFAULT_TARGETS
from b4m.methods import fit_method
from b4m.methods.duolora import DuoDelta, layer_priors, predicted_x0


def _blocks(priors, group):
    return sorted(
        {
            ".".join(n.split(".")[:2]) if not n.startswith("mid") else "mid_block"
            for n, g in priors.items()
            if g == group
        }
    )


def _small(down, up, **kw):
    """A UNet with a real model's block layout and tiny channels (the layout is all the priors read)."""
    n = len(down)
    return UNet2DConditionModel(
        block_out_channels=tuple([8, 16, 16, 16][:n]),
        layers_per_block=1,
        sample_size=8,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
        **kw,
    )


def test_priors_on_sdxl_are_the_papers_blocks():
    unet = _small(
        ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
    )
    priors = layer_priors(unet, sorted(target_linears(unet, DEFAULT_TARGETS)))
    assert _blocks(priors, "content") == ["down_blocks.2", "mid_block", "up_blocks.0"]
    assert _blocks(priors, "style") == ["down_blocks.1", "up_blocks.1"]


def test_priors_on_sd1_and_the_builtin_base_are_non_empty_and_follow_resolution():
    sd1 = _small(
        ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    priors = layer_priors(sd1, sorted(target_linears(sd1, DEFAULT_TARGETS)))
    assert _blocks(priors, "content") == ["down_blocks.2", "mid_block", "up_blocks.1"]
    assert _blocks(priors, "style") == ["down_blocks.0", "down_blocks.1", "up_blocks.2", "up_blocks.3"]

    from b4m.diffusion.builtin_base import load_base_pipeline

    unet = load_base_pipeline(None).unet
    priors = layer_priors(unet, sorted(target_linears(unet, DEFAULT_TARGETS)))
    assert _blocks(priors, "content") == ["down_blocks.2", "mid_block", "up_blocks.0"]
    assert _blocks(priors, "style") == ["down_blocks.1", "up_blocks.1"]


def test_tiny_sdxl_priors_split_the_mid_block_from_the_rest(tiny_sdxl):
    unet = tiny_sdxl().unet
    priors = layer_priors(unet, sorted(target_linears(unet, DEFAULT_TARGETS)))
    assert _blocks(priors, "content") == ["mid_block"]
    assert _blocks(priors, "style") == ["down_blocks.1", "up_blocks.0"]


def test_rank_loss_and_initialisation_follow_the_prior():
    g = torch.Generator().manual_seed(0)
    c, s = (
        (torch.randn(5, 4, generator=g), torch.randn(4, 3, generator=g)),
        (torch.randn(5, 2, generator=g), torch.randn(2, 3, generator=g)),
    )
    d = DuoDelta(c, s, "content", 0.5)
    assert torch.equal(d.m_c, torch.ones(4)) and torch.equal(d.m_s, torch.full((2,), 0.5))
    with torch.no_grad():
        d.m_c.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        d.m_s.copy_(torch.tensor([0.9, 0.4]))
    own, other = (0.1 + 0.2 + 0.0 + 0.3) / 4, (0.9 + 0.4) / 2
    assert d.rank_loss(2.0).item() == pytest.approx(own + 2.0 * max(0.0, other - own))
    e = DuoDelta(c, s, "style", 0.25)
    assert torch.equal(e.m_c, torch.full((4,), 0.25)) and e.rank_loss(1.0).item() == pytest.approx(
        1.0
    )  # no hinge


def test_predicted_x0_inverts_the_noising():
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([10, 800])
    torch.testing.assert_close(
        predicted_x0(sched, sched.add_noise(x0, eps, t), eps, t), x0, atol=1e-4, rtol=1e-4
    )


def test_masks_move_and_pruned_export_is_the_masked_sum_minus_what_was_dropped(world, tiny_sdxl, tmp_path):
    data = world(tiny_sdxl().unet)
    keys = ("content_lora", "style_lora", "content_images", "content_prompt", "style_images", "style_prompt")
    opts = {k: data[k] for k in keys} | {"resolution": 32, "base": "tiny"}
    fitted = fit_method("duolora", pipe=tiny_sdxl(), progress=False, steps=5, out=tmp_path / "a", **opts)
    masks = fitted.info["masks"]
    assert max(float((m_c - 1).abs().max()) for m_c, _ in masks.values()) > 0.02  # lr 1e-2 moves them
    # Prune everything below 0.6: the non-dominant concept (initialised at 0.5) of every layer goes.
    pruned = fit_method(
        "duolora", pipe=tiny_sdxl(), progress=False, steps=0, prune_tol=0.6, out=tmp_path / "b", **opts
    )
    raw_c, raw_s = load_file(str(data["content_lora"])), load_file(str(data["style_lora"]))
    lora = load_lora(pruned.path)
    assert lora.meta["pruned_components"] == sum(
        3 if g == "content" else 4 for g in pruned.info["priors"].values()
    )
    worst = 0.0
    for name, group in pruned.info["priors"].items():
        raw = raw_c if group == "content" else raw_s
        keep = raw[f"unet.{name}.lora_B.weight"] @ raw[f"unet.{name}.lora_A.weight"]
        u, v = lora.factors[name]
        torch.testing.assert_close(u @ v, keep, atol=1e-6, rtol=1e-5)
        other = raw_s if group == "content" else raw_c
        worst = max(
            worst,
            float(
                (0.5 * other[f"unet.{name}.lora_B.weight"] @ other[f"unet.{name}.lora_A.weight"]).abs().max()
            ),
        )
    assert lora.meta["pruning_max_abs_change"] == pytest.approx(worst, rel=1e-5)
    assert lora.rank == 4  # padded to the largest kept rank (the content LoRA's 4)
