"""Run by tests/test_ddp.py under `accelerate launch --multi_gpu --num_processes 2`: a trained registry method
(argv[2], e.g. lora) on a tiny SD pipeline."""

import hashlib
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from b4m.diffusion.tiny import tiny_sd_pipeline
from b4m.methods.common import fit_method

root, method = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ.get("RANK", 0))
pipe = tiny_sd_pipeline(root / f"tok{rank}", seed=0)
fit_method(method, pipe=pipe, progress=False, base="tiny", content_images=root / "content",
           content_prompt="a photo of snq teddy", out=root / "out", steps=3, lr=1e-2, rank=4, resolution=32,
           checkpoint_every=0)  # fmt: skip
state = PartialState()  # the state the method's Accelerator set up
# Every rank records a hash of its trained parameters: the averaged gradients must keep them identical.
h = hashlib.sha256()
trained = [(n, p) for n, p in sorted(pipe.unet.named_parameters()) if p.requires_grad]
for _, p in trained:
    h.update(p.detach().float().numpy().tobytes())
(root / f"rank{state.process_index}.sha").write_text(f"{state.num_processes} {len(trained)} {h.hexdigest()}")
torch.distributed.barrier() if torch.distributed.is_initialized() else None
