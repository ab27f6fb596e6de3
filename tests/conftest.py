import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One fixed thread count for the whole suite (b4m.threads): results never depend on the machine's load.
os.environ.setdefault("B4M_THREADS", str(min(2, os.cpu_count() or 1)))
torch.set_num_threads(int(os.environ["B4M_THREADS"]))


@pytest.fixture
def tiny_sdxl(tmp_path):
    from b4m.diffusion.tiny import tiny_sdxl_pipeline

    def make(seed=0):
        return tiny_sdxl_pipeline(tmp_path / f"tok{seed}", seed=seed)

    return make


@pytest.fixture
def tiny_flux(tmp_path):
    from b4m.diffusion.tiny import tiny_flux_pipeline

    def make(seed=0, **kw):
        return tiny_flux_pipeline(tmp_path / f"tok_flux{seed}", seed=seed, **kw)

    return make


@pytest.fixture
def tiny_sd(tmp_path):
    from b4m.diffusion.tiny import tiny_sd_pipeline

    def make(seed=0):
        return tiny_sd_pipeline(tmp_path / f"tok_sd{seed}", seed=seed)

    return make


@pytest.fixture
def sdxl_inputs():
    return sdxl_unet_inputs


def sdxl_unet_inputs(unet, batch=1, size=8, tokens=5, seed=0):
    """Seeded inputs for a tiny SDXL UNet: latents, timesteps, text states and SDXL's added conditioning."""
    g = torch.Generator().manual_seed(seed)
    text_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {
        "sample": torch.randn(batch, unet.config.in_channels, size, size, generator=g),
        "timestep": torch.linspace(10, 900, batch).long(),
        "encoder_hidden_states": torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, text_dim, generator=g),
            "time_ids": torch.randn(batch, 6, generator=g),
        },
    }


@pytest.fixture
def random_plp():
    return random_plp_file


def random_plp_file(unet, path, rank=8, std=0.2):
    """Inject a PLP adapter into ``unet``, fill B and D with noise (seed torch first for repeatable values), save it; (adapter, path)."""
    from b4m.adapters import PLPSpec, inject_plp, save_plp

    adapter = inject_plp(unet, PLPSpec(rank=rank))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=std)
    return adapter, save_plp(adapter, path)
