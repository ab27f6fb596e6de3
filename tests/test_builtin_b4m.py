"""B4M on the built-in base model: ordinary-LoRA round trip, and the demo beating the base model (slow)."""

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from b4m.diffusion.builtin_base import default_base_path


def test_fused_adapter_is_an_ordinary_lora_for_the_builtin_pipeline(tmp_path, random_plp):
    pipe = DiffusionPipeline.from_pretrained(str(default_base_path()))
    _, path = random_plp(pipe.unet, tmp_path / "f.safetensors", rank=16, std=0.05)
    g = torch.Generator().manual_seed(0)
    size = pipe.unet.config.sample_size
    x = torch.randn(2, pipe.unet.config.in_channels, size, size, generator=g)
    ehs = torch.randn(2, 8, pipe.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([100, 700])
    with torch.no_grad():
        want = pipe.unet(x, t, encoder_hidden_states=ehs).sample
        fresh = DiffusionPipeline.from_pretrained(str(default_base_path()))
        base = fresh.unet(x, t, encoder_hidden_states=ehs).sample
        fresh.load_lora_weights(str(path))
        got = fresh.unet(x, t, encoder_hidden_states=ehs).sample
    assert (want - base).abs().max() > 1e-3
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_demo_b4m_draws_the_personal_teddy_in_the_personal_papercut_style(tmp_path):
    """The default demo (teddy#3 in papercut#5, the world issue's bar): with the combined prompt the fused
    adapter is judged to show that teddy and that papercut style each in >= 50 % of the images, each at
    least 0.4 above the base model prompted alike."""
    from b4m.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(out=tmp_path / "demo"), progress=False)
    base, b4m = results["scores"]["base model (prompt only)"], results["scores"]["B4M (fused, stage 2)"]
    for key in ("content_inst", "style_inst"):
        assert b4m[key] >= 0.5 and b4m[key] >= base[key] + 0.4, (key, b4m, base)
    assert (tmp_path / "demo" / "report.html").is_file()


def test_demo_runs_end_to_end_and_a_moved_folder_reuses_its_stages(tmp_path):
    """A few-step demo: every stage runs, the report is written, and a renamed demo folder retrains nothing."""
    import json
    import shutil

    from b4m.demo import DemoConfig, run_demo

    quick = {"steps": 2, "stage2_steps": 1, "n": 1, "n_content": 2, "n_style": 2}
    results = run_demo(DemoConfig(out=tmp_path / "a", **quick), progress=False)
    assert set(results["scores"]) == {
        "base model (prompt only)",
        "content adapter alone",
        "B4M (fused, stage 2)",
    }
    for scores in results["scores"].values():
        assert 0.0 <= scores["content_acc"] <= 1.0 and -1.0 <= scores["style"] <= 1.0
    assert json.loads((tmp_path / "a" / "results.json").read_text())["prompts"] == results["prompts"]
    fused = results["scores"]["B4M (fused, stage 2)"]
    assert (
        f"name teddy#3 in {fused['content_inst']:.0%} and papercut#5 in {fused['style_inst']:.0%}"
        in results["summary"]
    )
    assert results["prompts"][0] == "a snq teddy in wzk papercut style"
    assert (tmp_path / "a" / "report.html").is_file()

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    stages = ("content", "style", "fused")

    def adapters(results: dict) -> dict[str, tuple[str, int]]:
        """Each stage's adapter file, relative to the demo folder, with its modification time."""
        paths = {s: Path(results["adapters"][s]) for s in stages}
        assert all(p.is_file() for p in paths.values())
        return {s: (str(p.relative_to(p.parents[2])), p.stat().st_mtime_ns) for s, p in paths.items()}

    moved = run_demo(DemoConfig(out=tmp_path / "b", **quick), progress=False)
    assert Path(moved["adapter"]).is_relative_to(tmp_path / "b" / "fits")
    before = adapters(moved)
    assert {s: v[0] for s, v in before.items()} == {s: v[0] for s, v in adapters(results).items()}
    first = {s: (tmp_path / "a" / "fits" / before[s][0]).stat().st_mtime_ns for s in stages}
    assert {s: v[1] for s, v in before.items()} == first  # copied, not retrained

    # A changed stage-2 setting retrains stage 2 only.
    changed = adapters(run_demo(DemoConfig(out=tmp_path / "b", optimizer="adamw", **quick), progress=False))
    assert changed["content"] == before["content"] and changed["style"] == before["style"]
    assert changed["fused"] != before["fused"]

    # A changed stage-1 setting retrains stage 1 and everything made from it: the fused adapter reported is
    # this run's, never the old one (its own settings did not change).
    again = adapters(
        run_demo(DemoConfig(out=tmp_path / "b", optimizer="adamw", lr=5e-3, **quick), progress=False)
    )
    assert all(again[s][0] != changed[s][0] for s in stages)

    # --overwrite replaces what the demo made, and nothing else.
    (tmp_path / "b" / "notes.txt").write_text("mine")
    (tmp_path / "b" / "data" / "content" / "my_photo.png").write_bytes(b"mine")
    from b4m.errors import B4MError

    with pytest.raises(B4MError, match=r"data/content.*did not make"):
        run_demo(DemoConfig(out=tmp_path / "b", overwrite=True, **quick), progress=False)
    (tmp_path / "b" / "data" / "content" / "my_photo.png").unlink()
    run_demo(DemoConfig(out=tmp_path / "b", overwrite=True, **quick), progress=False)
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
