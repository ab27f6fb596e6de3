"""Run by tests/test_ddp.py under `accelerate launch --multi_gpu --num_processes 2`: stage 1 on a tiny SD pipeline."""

import hashlib
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from b4m.diffusion.tiny import tiny_sd_pipeline
from b4m.options import Stage1Config
from b4m.train.stage1 import train_stage1

root = Path(sys.argv[1])
rank = int(os.environ.get("RANK", 0))
pipe = tiny_sd_pipeline(root / f"tok{rank}", seed=0)
cfg = Stage1Config(
    images=root / "content",
    prompt="a photo of snq teddy",
    aux=[str(root / "aux0"), str(root / "aux1")],
    base="tiny",
    out=root / "out",
    steps=3,
    lr=1e-2,
    rank=4,
    resolution=32,
    checkpoint_every=0,
)
train_stage1(cfg, "content", pipe=pipe, progress=False)
state = PartialState()  # the state train_stage1's Accelerator set up
# Every rank records a hash of its adapter parameters: DDP must keep them identical.
h = hashlib.sha256()
for name, p in sorted(pipe.unet.named_parameters()):
    if "lora" in name:
        h.update(p.detach().float().numpy().tobytes())
(root / f"rank{state.process_index}.sha").write_text(f"{state.num_processes} {h.hexdigest()}")
torch.distributed.barrier() if torch.distributed.is_initialized() else None
