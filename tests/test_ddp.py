"""Stage 1 and a trained baseline under `accelerate launch` with 2 CPU processes (DDP, gloo): no code change,
ranks stay in sync."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _folder(path, seed, n, caption=None):
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(path / f"{i}.png")
        if caption:
            (path / f"{i}.txt").write_text(caption)


def _launch(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    # `--cpu` makes accelerate start a single process; `--multi_gpu` starts torchrun, whose processes find no GPU
    # and (b4m builds its Accelerator with cpu=True there) form a gloo DDP group: the multi-GPU code path.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(Path(__file__).with_name(script)),
        *map(str, args),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # the same DDP machinery as the lora baseline's test, which stays in the default run
def test_stage1_under_accelerate_launch_two_cpu_processes(tmp_path):
    _folder(tmp_path / "content", 0, 3)
    _folder(tmp_path / "aux0", 1, 1, "a cup in stripes style")
    _folder(tmp_path / "aux1", 2, 1, "a car in dots style")
    _launch("ddp_stage1.py", tmp_path)
    shas = [(tmp_path / f"rank{r}.sha").read_text().split() for r in range(2)]
    assert shas[0][0] == shas[1][0] == "2"  # two processes really ran
    assert shas[0][1] == shas[1][1]  # gradients were all-reduced: identical adapters on both ranks
    assert (tmp_path / "out" / "adapter.safetensors").is_file()


def test_lora_baseline_under_accelerate_launch_two_cpu_processes(tmp_path):
    """The trained baselines' loop (``train_steps``): each rank draws other samples, the gradients are averaged,
    so both ranks end with the same deltas; only the main process writes the log and the adapter."""
    _folder(tmp_path / "content", 0, 3)
    _launch("ddp_method.py", tmp_path, "lora")
    shas = [(tmp_path / f"rank{r}.sha").read_text().split() for r in range(2)]
    assert shas[0][0] == shas[1][0] == "2" and int(shas[0][1]) > 0
    assert shas[0][2] == shas[1][2]  # gradients were averaged: identical LoRAs on both ranks
    assert (tmp_path / "out" / "adapter.safetensors").is_file()
    assert len((tmp_path / "out" / "train_log.jsonl").read_text().splitlines()) == 1  # main process only
