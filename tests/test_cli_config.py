"""Configs from files and flags (one source of defaults), CLI errors (one line, exit 2), generation knobs."""

import subprocess
import sys

import pytest
import torch

from b4m.cli import build_parser, main
from b4m.config import config_from_args, load_config
from b4m.diffusion.sampling import load_adapter
from b4m.errors import B4MError
from b4m.options import Stage1Config, resolve_preset


def test_file_then_flags_override_field_by_field(tmp_path):
    (tmp_path / "x.yaml").write_text("lr: 5.0e-4\nrank: 8\nmcp: false\naux: [a, b]\n")
    args = build_parser().parse_args(
        ["train", "content", "--config", str(tmp_path / "x.yaml"), "--lr", "5e-5"]
    )
    cfg = config_from_args(Stage1Config, args)
    assert cfg.lr == 5e-5 and cfg.rank == 8 and cfg.mcp is False and cfg.aux == ["a", "b"]
    assert cfg.rho == 0.5  # untouched fields keep the dataclass default
    (tmp_path / "x.toml").write_text('prompt = "a photo of snq teddy"\nsteps = 12\n')
    cfg = load_config(Stage1Config, tmp_path / "x.toml", {"steps": 7})
    assert cfg.prompt == "a photo of snq teddy" and cfg.steps == 7


def test_presets_fill_only_unset_fields():
    builtin = resolve_preset(Stage1Config())
    assert (builtin.rank, builtin.lr, builtin.steps, builtin.resolution) == (16, 2e-3, 800, 32)
    sdxl = resolve_preset(Stage1Config(base="stabilityai/stable-diffusion-xl-base-1.0", lr=3e-5))
    assert (sdxl.rank, sdxl.lr, sdxl.steps, sdxl.resolution) == (64, 3e-5, 1000, 512)


def test_all_config_problems_reported_together(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: fast\nrnak: 4\n")
    with pytest.raises(B4MError) as err:
        load_config(Stage1Config, tmp_path / "bad.yaml")
    msg = str(err.value)
    assert "unknown option 'rnak'" in msg and "lr: expected float, got 'fast'" in msg


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["train", "content", "--images", str(tmp_path / "nope"), "--aux-styles", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("b4m: error: --images") and "no such folder" in err[0]
    assert (
        main(
            ["fuse", "--content", str(tmp_path / "c.safetensors"), "--style", str(tmp_path / "s.safetensors")]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("steps: [1, 2]\n")
    assert main(["train", "style", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "steps: expected int" in capsys.readouterr().err


def test_cli_runs_as_a_program_without_traceback(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"pickled weights would be here")
    proc = subprocess.run(
        [sys.executable, "-m", "b4m.cli", "generate", "--prompt", "x", "--adapter", str(tmp_path / "a.bin")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "safetensors files only" in proc.stderr


def test_help_teaches_defaults():
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    content = sub._subparsers._group_actions[0].choices["content"].format_help()
    assert "--aux-styles" in content and "1e-4 on SD/SDXL" in content and "(default: 0.5)" in content


def test_content_and_style_scales_on_a_stock_pipeline(tiny_sdxl, tmp_path, sdxl_inputs, random_plp):
    """Scales 0/0 leave only A C = 0: the base model. Content scale alone changes only the B-blocks."""
    pipe = tiny_sdxl()
    adapter, path = random_plp(pipe.unet, tmp_path / "f.safetensors")
    inputs = sdxl_inputs(pipe.unet)
    fresh = tiny_sdxl()
    with torch.no_grad():
        base = fresh.unet(**inputs).sample
        load_adapter(fresh, path, content_scale=0.0, style_scale=0.0, adapter_name="zero")
        assert torch.allclose(fresh.unet(**inputs).sample, base, atol=1e-5)
        fresh.delete_adapters("zero")
        load_adapter(fresh, path, content_scale=1.0, style_scale=1.0, adapter_name="full")
        full = fresh.unet(**inputs).sample
        assert (full - base).abs().max() > 1e-3
        fresh.delete_adapters("full")
        load_adapter(fresh, path, content_scale=0.5, style_scale=2.0, adapter_name="mix")
        layer = fresh.unet.get_submodule(adapter.module_names[0])
        u, v = layer.lora_B["mix"].weight, layer.lora_A["mix"].weight
        m, n, d_out, d_in = adapter.dims[adapter.module_names[0]]
        ref_u, ref_v = adapter.factors()[adapter.module_names[0]]
        assert torch.allclose(u[d_out:], 0.5 * ref_u[d_out:]) and torch.allclose(
            v[:, d_in:], 2.0 * ref_v[:, d_in:]
        )
        assert torch.equal(u[:d_out], ref_u[:d_out]) and torch.equal(v[:, :d_in], ref_v[:, :d_in])


def test_export_kohya_cli_loads_in_diffusers(tiny_sdxl, tmp_path, sdxl_inputs, capsys, random_plp):
    pipe = tiny_sdxl()
    _, src = random_plp(pipe.unet, tmp_path / "f.safetensors")
    assert main(["export", str(src), "--out", str(tmp_path / "k.safetensors")]) == 0
    assert main(["export", str(src), "--out", str(tmp_path / "k.safetensors")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    inputs = sdxl_inputs(pipe.unet)
    with torch.no_grad():
        want = pipe.unet(**inputs).sample
        fresh = tiny_sdxl()
        fresh.load_lora_weights(str(tmp_path / "k.safetensors"))
        got = fresh.unet(**inputs).sample
    assert torch.allclose(got, want, atol=1e-2)  # kohya files are fp16


@pytest.mark.parametrize("name", ["content", "style", "fuse"])
def test_example_configs_load(name):
    from pathlib import Path

    from b4m.options import Stage2Config

    cls = Stage2Config if name == "fuse" else Stage1Config
    cfg = load_config(cls, Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert cfg.out is not None


def test_attribute_docstrings_become_help_text(capsys):
    """Configs documented with attribute docstrings (BaseModelConfig) get them as --help text, '%' included."""
    import dataclasses

    from b4m.config import attribute_docs
    from b4m.models.base.config import BaseModelConfig

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        share: float = 0.3
        """Share of scenes, e.g. 30 % of them.

        A second paragraph that help leaves out."""
        plain: int = 1

    assert attribute_docs(Cfg) == {"share": "Share of scenes, e.g. 30 % of them."}
    assert attribute_docs(BaseModelConfig)["vae_steps"] == "Autoencoder training steps (phase 1)."
    with pytest.raises(SystemExit):
        build_parser().parse_args(["base", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--vae-steps VAE_STEPS Autoencoder training steps (phase 1). (default: 4000)" in text
