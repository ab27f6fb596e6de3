"""The SDXL UNet built from its public config (meta device: no memory): size and B4M's 560 targets."""

from b4m.adapters.inject import DEFAULT_TARGETS
from b4m.diffusion.sdxl import sdxl_unet


def _matches(name: str) -> bool:  # peft's suffix rule for a list of target names
    return any(name == t or name.endswith("." + t) for t in DEFAULT_TARGETS)


def test_sdxl_unet_size_and_attention_targets():
    unet = sdxl_unet("meta")
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    targets = [n for n, _ in unet.named_modules() if _matches(n)]
    assert len(targets) == 560
    # Rank-64 LoRA on all of them: 92,897,280 parameters (ecosystem notes Sec. 4).
    lora = sum(64 * (m.in_features + m.out_features) for n, m in unet.named_modules() if _matches(n))
    assert lora == 92_897_280
    by_block = {
        b: sum(n.startswith(b) for n in targets)
        for b in ("down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1")
    }
    assert by_block == {
        "down_blocks.1": 32,
        "down_blocks.2": 160,
        "mid_block": 80,
        "up_blocks.0": 240,
        "up_blocks.1": 48,
    }
