"""Trigger words where tools look: kohya's ``ss_tag_frequency`` and the other ``ss_*`` fields A1111's
extra-networks panel shows, written from the b4m header into every kohya file b4m writes."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from b4m.adapters import PLPSpec, inject_plp, save_plp
from b4m.adapters.kohya_meta import kohya_fields, tag_frequency
from b4m.cli import main


def _header(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_a_stage1_adapter_records_its_prompt_and_trigger_words(tiny_sdxl, tmp_path):
    adapter = inject_plp(tiny_sdxl().unet, PLPSpec(rank=4))
    path = save_plp(
        adapter,
        tmp_path / "teddy.safetensors",
        method="b4m",
        role="content",
        prompt="a photo of a snq teddy, on a table",
        images="../refs/teddy",
        trigger_words=["snq"],
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
        config={
            "resolution": 1024,
            "images": "../refs/teddy",
            "prompt": "a photo of a snq teddy, on a table",
        },
    )
    h = _header(path)
    tags = json.loads(h["ss_tag_frequency"])
    # kohya's layout: {dataset folder: {tag: count}}, tags are the comma-separated parts of the captions.
    assert tags == {"teddy": {"snq": 1, "a photo of a snq teddy": 1, "on a table": 1}}
    assert list(tags["teddy"])[0] == "snq"  # the trigger word first
    assert h["ss_output_name"] == "teddy"
    assert h["ss_sd_model_name"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert h["ss_resolution"] == "(1024, 1024)"
    assert h["ss_training_comment"] == "made with b4m (method b4m, role content); trigger words: snq"
    assert h["ss_network_dim"] == "4" and h["ss_network_alpha"] == "4"
    assert h["ss_base_model_version"].startswith("sdxl_")


def test_a_fused_adapter_lists_content_and_style_folders():
    meta = {
        "method": "b4m",
        "role": "fused",
        "trigger_words": ["snq", "wzk", "xyz"],
        "content": {"prompt": "a photo of a snq teddy", "images": "refs/teddy", "file": "c.safetensors"},
        "style": {"prompt": "a cup in wzk papercut style", "images": "refs/paper", "file": "s.safetensors"},
        "config": {"content_prompt": None, "style_prompt": None, "resolution": None},
    }
    assert tag_frequency(meta) == {
        "teddy": {"snq": 1, "a photo of a snq teddy": 1},
        "paper": {"wzk": 1, "a cup in wzk papercut style": 1},
        "b4m": {"xyz": 1},  # a trigger word no recorded prompt holds
    }
    fields = kohya_fields(meta, "out/teddy_paper.safetensors")
    assert fields["ss_output_name"] == "teddy_paper"
    assert "ss_resolution" not in fields and "ss_sd_model_name" not in fields  # not known: not guessed
    assert fields["ss_training_comment"].endswith("trigger words: snq, wzk, xyz")


def test_methods_config_prompts_and_no_folder():
    meta = {
        "method": "lora",
        "trigger_words": ["snq"],
        "config": {"content_images": None, "content_prompt": "a photo of a snq teddy", "resolution": 32},
    }
    assert tag_frequency(meta) == {"b4m": {"snq": 1, "a photo of a snq teddy": 1}}
    # A word only inside another word is not that trigger word.
    assert tag_frequency({"prompt": "a snqx teddy", "trigger_words": ["snq"]}) == {
        "b4m": {"a snqx teddy": 1, "snq": 1}
    }
    assert tag_frequency({}) == {}
    assert "ss_tag_frequency" not in kohya_fields({}, "x.safetensors")


def test_export_and_convert_keep_the_fields(tiny_sdxl, tmp_path):
    adapter = inject_plp(tiny_sdxl().unet, PLPSpec(rank=4))
    with torch.no_grad():
        for p in adapter.parameters("BD"):
            p.normal_(std=0.1)
    src = save_plp(adapter, tmp_path / "a.safetensors", prompt="a snq teddy", trigger_words=["snq"])
    assert main(["export", str(src), "--out", str(tmp_path / "teddy_k.safetensors")]) == 0
    assert main(["export", str(src), "--split", "--out", str(tmp_path / "parts")]) == 0
    for path in (tmp_path / "teddy_k.safetensors", tmp_path / "parts" / "a_style.safetensors"):
        h = _header(path)
        assert json.loads(h["ss_tag_frequency"]) == {"b4m": {"snq": 1, "a snq teddy": 1}}
        assert h["ss_output_name"] == path.stem
        assert "trigger words: snq" in h["ss_training_comment"]
