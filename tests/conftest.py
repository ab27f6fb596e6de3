import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_sdxl(tmp_path):
    from b4m.diffusion.tiny import tiny_sdxl_pipeline

    def make(seed=0):
        return tiny_sdxl_pipeline(tmp_path / f"tok{seed}", seed=seed)

    return make


@pytest.fixture
def tiny_sd(tmp_path):
    from b4m.diffusion.tiny import tiny_sd_pipeline

    def make(seed=0):
        return tiny_sd_pipeline(tmp_path / f"tok_sd{seed}", seed=seed)

    return make
