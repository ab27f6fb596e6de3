"""The registry from the command line and the Python API: same options, config files, one-line errors."""

import torch

import b4m
from b4m.adapters.codec import load_lora
from b4m.cli import main
from b4m.methods import all_methods
from b4m.methods.base import METHOD_MODULES, MethodInfo
from b4m.methods.catalogue import CATALOGUE

from .conftest import random_lora


def test_methods_lists_every_id_with_needs_and_writes(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["id", "needs", "writes"]
    listed = {line.split()[0] for line in out[1:]}
    assert listed == set(all_methods())
    ziplora = next(line for line in out if line.startswith("ziplora"))
    assert "content_lora, style_lora, content_images, style_images" in ziplora


def test_catalogue_describes_the_registry():
    """The command line's help reads the catalogue (no torch); the registry's methods must be exactly those."""
    registry = all_methods()
    assert set(registry) == set(CATALOGUE)
    for method_id, method in registry.items():
        info = CATALOGUE[method_id]
        for field in MethodInfo.__dataclass_fields__:
            assert getattr(method, field) == getattr(info, field), (method_id, field)
    # the catalogue lists them in the order of their modules (as a fresh registry does)
    order = [METHOD_MODULES.index(registry[method_id].fit.__module__) for method_id in CATALOGUE]
    assert order == sorted(order)


def test_missing_inputs_fail_in_one_line(capsys, tmp_path):
    assert main(["run", "ziplora", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["b4m: error: ziplora: give --content-lora, --style-lora, --content-images, --style-images"]
    assert (
        main(["run", "lora", "--content-images", str(tmp_path / "nope"), "--out", str(tmp_path / "l")]) == 2
    )
    assert "--content-images" in capsys.readouterr().err and not (tmp_path / "l").exists()


def test_cli_config_file_and_api_reach_the_same_method(tiny_sdxl, tmp_path, capsys):
    unet = tiny_sdxl().unet
    random_lora(unet, tmp_path / "c.safetensors", 2, 1)
    random_lora(unet, tmp_path / "s.safetensors", 2, 2)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(
        f"content-lora: {tmp_path / 'c.safetensors'}\nstyle-lora: {tmp_path / 's.safetensors'}\nlambda_s: 0.5\n"
    )
    assert (
        main(["run", "direct-merge", "--config", str(cfg), "--lambda-c", "2", "--out", str(tmp_path / "cli")])
        == 0
    )
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "cli" / "adapter.safetensors")
    api = b4m.run_method("direct-merge", config=cfg, lambda_c=2.0, out=tmp_path / "api", progress=False)
    a, b = load_lora(printed), load_lora(api)
    assert a.meta["config"]["lambda_c"] == 2.0 and a.meta["config"]["lambda_s"] == 0.5
    for m in a.factors:
        assert torch.equal(a.factors[m][0], b.factors[m][0]) and torch.equal(a.factors[m][1], b.factors[m][1])
    # Finished work is never overwritten without --overwrite.
    assert main(["run", "direct-merge", "--config", str(cfg), "--out", str(tmp_path / "cli")]) == 2
    assert "--overwrite" in capsys.readouterr().err
