"""Shared inputs of the method tests: image folders, random source LoRAs, and a stock-diffusers check."""

import pytest
import torch
from helpers import image_folder, unet_out, with_dense_delta  # noqa: F401 - the method tests import them from here

from b4m.adapters.codec import save_lora
from b4m.adapters.deltas import target_linears
from b4m.adapters.inject import DEFAULT_TARGETS


def random_lora(unet, path, rank, seed, std=0.05, meta=None):
    """A plain LoRA with random factors on every attention projection of ``unet``; returns its factors."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, layer in sorted(target_linears(unet, DEFAULT_TARGETS).items()):
        u = torch.randn(layer.out_features, rank, generator=g) * std
        v = torch.randn(rank, layer.in_features, generator=g) * std
        factors[name] = (u, v)
    save_lora(path, factors, meta or {})
    return factors


@pytest.fixture
def world(tmp_path):
    """Folders and source LoRAs for every method on the tiny SDXL (``unet`` decides the layer shapes)."""

    made = {}

    def make(unet):
        if made:
            return made
        d = tmp_path / "data"
        made.update(
            {
                "content_images": image_folder(d / "content", 0, n=2),
                "content_prompt": "a photo of snq teddy",
                "style_images": image_folder(d / "style", 1, n=2),
                "style_prompt": "a paper in w@z style",
                "aux_styles": [
                    str(image_folder(d / f"as{i}", 10 + i, n=1, caption=f"a photo in style {i}"))
                    for i in range(2)
                ],
                "aux_contents": [
                    str(image_folder(d / f"ac{i}", 20 + i, n=1, caption=f"a teddy number {i}"))
                    for i in range(2)
                ],
                "content_lora": random_lora(unet, d / "c.safetensors", 4, 1) and d / "c.safetensors",
                "style_lora": random_lora(unet, d / "s.safetensors", 3, 2) and d / "s.safetensors",
            }
        )
        return made

    return make
