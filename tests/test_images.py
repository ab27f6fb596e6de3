"""Reference images load as people see them, and prompts reach the text encoder as written (or b4m says so)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from b4m.data.folders import BACKGROUND, load_images, read_image_folder
from b4m.errors import B4MError


def test_16_bit_grayscale_keeps_its_tones(tmp_path):
    ramp = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # mode I;16
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    x = load_images([tmp_path / "g16.png"], 32)[0]
    assert x.min() < 0.01 and x.max() > 0.99 and 0.4 < x.mean() < 0.6  # not all white
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # gray


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[8:24, 8:24] = (200, 0, 0, 255)  # an opaque red square on transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cut.png")
    x = load_images([tmp_path / "cut.png"], 32)[0]
    assert torch.allclose(x[:, 0, 0], torch.tensor(BACKGROUND) / 255.0)  # white, not the hidden black
    assert torch.allclose(x[:, 16, 16], torch.tensor([200, 0, 0]) / 255.0)
    Image.fromarray(rgba, mode="RGBA").convert("P").save(tmp_path / "p.gif", transparency=0)
    assert load_images([tmp_path / "p.gif"], 32).shape == (1, 3, 32, 32)


def test_folders_list_every_pillow_format_and_skip_hidden_files(tmp_path):
    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for name in ("a.gif", "b.tif", "c.webp", "d.png"):
        Image.fromarray(rgb).save(tmp_path / name)
    (tmp_path / "._d.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    Image.fromarray(rgb).save(tmp_path / ".hidden.png")
    images = read_image_folder(tmp_path)
    assert [p.name for p in images.paths] == ["a.gif", "b.tif", "c.webp", "d.png"]
    assert load_images(list(images.paths), 32).shape == (4, 3, 32, 32)


def test_a_crop_that_drops_most_of_an_image_is_one_warning(tmp_path, capsys):
    Image.new("RGB", (320, 32), (10, 20, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (40, 32), (10, 20, 30)).save(tmp_path / "almost.png")
    load_images([tmp_path / "wide.png", tmp_path / "almost.png"], 32)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wide.png: 320x32; the centre crop keeps 10% of it" in err[0]


def test_bad_images_name_the_file(tmp_path, monkeypatch):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(B4MError, match=r"x.png: cannot read this image"):
        load_images([tmp_path / "x.png"], 32)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: only Pillow's warning range
    with pytest.raises(B4MError, match=r"big.png: image too large to decode safely"):
        load_images([tmp_path / "big.png"], 32)


@pytest.fixture(scope="module")
def tokenizer():
    from b4m.diffusion.pipeline import load_pipeline

    return load_pipeline(None).tokenizer  # the built-in model's: 32 tokens


def test_a_cut_prompt_is_one_warning_and_an_unreadable_one_an_error(tokenizer, capsys):
    from b4m.prompts import check_prompts

    check_prompts(tokenizer, ["a photo of a teddy"], "--prompt")
    assert capsys.readouterr().err == ""
    long = "a photo of a teddy " + "on the left " * 12
    check_prompts(tokenizer, [long], "--prompt")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokens; the text encoder keeps 32, so it reads 'a photo of a teddy" in err[0]
    with pytest.raises(B4MError, match=r"--prompt: the tokenizer cannot represent the prompt '日本の写真'"):
        check_prompts(tokenizer, ["日本の写真"], "--prompt")


def test_trigger_words_are_rare_words_once(tokenizer):
    from b4m.train.loop import trigger_words_of

    assert trigger_words_of("a photo of snq teddy, snq teddy in w@z style", tokenizer) == ["snq", "w@z"]
