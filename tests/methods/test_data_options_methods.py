"""The data options reach every trained method: B4M's two stages (``b4m run b4m``) and the trained baselines train
with --buckets (a 2:1 image as a 2:1 latent), a loss mask and --repeats, from the API and the CLI/config."""

import numpy as np
import pytest
from PIL import Image

import b4m.methods.duolora as duolora_mod
import b4m.methods.lora as lora_mod
import b4m.methods.ziplora as ziplora_mod
import b4m.train.stage1 as stage1_mod
import b4m.train.stage2 as stage2_mod
from b4m.config import load_config
from b4m.methods import fit_method
from b4m.methods.catalogue import CATALOGUE
from b4m.options import Stage1Config, Stage2Config

from .test_contract import CASES

TRAINED = ["lora", "joint", "ziplora", "duolora", "qrlora", "b4m"]
DATA = {"buckets": True, "repeats": ["02*=3"]}


@pytest.fixture
def spy(monkeypatch):
    """Every loss computed: (latent height, width, whether a mask came with it)."""
    seen = []

    def wrap(module, name):
        real = getattr(module, name)

        def spied(*args, **kw):
            if name == "masked_mse":  # masked_mse(pred, target, mask)
                pred, mask = args[0], args[2] if len(args) > 2 else kw.get("mask")
            else:  # per_sample_loss(model, scheduler, latents, ..., mask=...)
                pred, mask = args[2], kw.get("mask")
            seen.append((*pred.shape[-2:], mask is not None))
            return real(*args, **kw)

        monkeypatch.setattr(module, name, spied)

    for module in (lora_mod, stage1_mod, stage2_mod):
        wrap(module, "per_sample_loss")
    for module in (ziplora_mod, duolora_mod):
        wrap(module, "masked_mse")
    return seen


@pytest.mark.parametrize("method_id", TRAINED)
def test_trained_methods_use_buckets_masks_and_repeats(method_id, world, tiny_sd, tmp_path, spy):
    keys, extra = CASES[method_id]
    data = world(tiny_sd().unet)
    content = data["content_images"]
    if not (content / "02.png").exists():  # a 2:1 content image with a mask, counted three times
        rng = np.random.default_rng(9)
        Image.fromarray((rng.random((32, 64, 3)) * 255).astype(np.uint8)).save(content / "02.png")
        mask = np.full((32, 64), 255, np.uint8)
        mask[:, :20] = 0
        Image.fromarray(mask).save(content / "02.mask.png")
    options = {k: data[k] for k in keys} | extra | DATA | {"steps": 2}
    fitted = fit_method(method_id, pipe=tiny_sd(), progress=False, base="tiny", out=tmp_path / "o", **options)
    assert fitted.path.is_file()
    # some step drew the 2:1 image (a 12x24 latent of the tiny SD at 32 px) and its mask reached the loss
    assert (12, 24, True) in spy, spy


def test_data_options_are_flags_config_keys_and_api_keywords(tmp_path):
    from b4m.cli import build_parser

    (tmp_path / "c.yaml").write_text("repeats: ['face*=3', 2]\nbuckets: true\nmasks: false\n")
    (tmp_path / "one.toml").write_text("repeats = 3\n")
    assert load_config(Stage1Config, tmp_path / "one.toml", {}).repeats == ["3"]
    for cls in (Stage1Config, Stage2Config, CATALOGUE["b4m"].config, CATALOGUE["joint"].config):
        cfg = load_config(cls, tmp_path / "c.yaml", {})
        assert (cfg.repeats, cfg.buckets, cfg.masks) == (["face*=3", "2"], True, False)
        assert load_config(cls, None, {"buckets": True}).buckets
    parser = build_parser()
    args = parser.parse_args(["train", "content", "--repeats", "face*=3", "2", "--buckets", "--no-masks"])
    assert (args.repeats, args.buckets, args.masks) == (["face*=3", "2"], True, False)
    helps = {
        " ".join(cmd): parser_help(parser, cmd)
        for cmd in (["train", "content"], ["fuse"], ["run", "b4m"], ["run", "lora"])
    }
    for text in helps.values():
        assert "--repeats" in text and "--buckets" in text and "--no-masks" in text


def parser_help(parser, cmd):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args([*cmd, "--help"])
    return out.getvalue()
