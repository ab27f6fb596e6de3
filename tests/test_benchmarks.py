"""The GPU benchmark script runs end to end on the CPU at reduced size (a tiny SDXL-layout UNet)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["sdxl", "flux"])
def test_gpu_sdxl_benchmark_cpu_variant(tmp_path, model):
    bench = _load("gpu_sdxl")
    out = bench.main(
        [
            "--model",
            model,
            "--device",
            "cpu",
            "--tiny",
            "--resolutions",
            "32",
            "--warmup",
            "1",
            "--iters",
            "1",
            "--out",
            str(tmp_path / "bench.md"),
        ]
    )
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms/step" not in line]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        ms, samples_s, tflop = float(cells[2]), float(cells[3]), float(cells[5])
        assert ms > 0 and samples_s > 0 and tflop > 0
    # The batched stage-1 step does the same model work as the four separate passes (same FLOPs within 10 %).
    ref, s1 = (float(r.strip("|").split("|")[5]) for r in rows[:2])
    assert s1 == pytest.approx(ref, rel=0.1)
    assert "b4m stage 1 is" in text and "stage 2 (100 steps) takes" in text


def test_flux_benchmark_builds_flux_dev_on_the_meta_device():
    """The real-size arm's model: FLUX.1-dev's transformer, 266 b4m attention targets (19 x 8 + 38 x 3)."""
    import torch

    bench = _load("gpu_sdxl")
    from b4m.diffusion.flux import flux_transformer

    model = flux_transformer("meta")
    names = bench.targets(model)
    n = sum(
        isinstance(m, torch.nn.Linear) and any(k == t or k.endswith("." + t) for t in names)
        for k, m in model.named_modules()
    )
    assert len(names) == 8 and n == 266
