"""Offline fixtures of the ``--pairs-file`` tests: tiny diffusers pipelines saved to folders, tiny CLIP / DINOv2 /
CSD encoders built from configs, reference folders and pairs files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import image_folder  # noqa: F401 - re-exported to the pairs-file tests

TINY_CLIP = {
    "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
    "vision": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                   patch_size=6),
}  # fmt: skip


def save_pipeline(kind: str, folder: Path) -> Path:
    """A tiny ``sd``/``sdxl``/``flux`` pipeline from configs (b4m.diffusion.tiny), saved as a diffusers folder."""
    from b4m.diffusion import tiny

    make = {"sd": tiny.tiny_sd_pipeline, "sdxl": tiny.tiny_sdxl_pipeline, "flux": tiny.tiny_flux_pipeline}[
        kind
    ]
    pipe = make(folder.parent / f"tok_{kind}", seed=0)
    pipe.save_pretrained(folder)
    return folder


def save_encoders(folder: Path) -> dict[str, Path]:
    """Tiny CLIP (with tokenizer), DINOv2 and CSD (the published checkpoint's key names, safetensors)."""
    import transformers
    from safetensors.torch import save_file

    from b4m.diffusion.tiny import write_clip_tokenizer

    torch.manual_seed(0)
    tok = write_clip_tokenizer(folder / "clip_tok", words=["a", "photo", "of", "teddy", "in", "style"])
    config = transformers.CLIPConfig(text_config={**TINY_CLIP["text"], "vocab_size": len(tok)},
                                     vision_config=TINY_CLIP["vision"], projection_dim=16)  # fmt: skip
    transformers.CLIPModel(config).eval().save_pretrained(folder / "clip")
    tok.save_pretrained(folder / "clip")
    dino = transformers.Dinov2Model(transformers.Dinov2Config(image_size=30, patch_size=2, hidden_size=32,
                                                              num_hidden_layers=2, num_attention_heads=2,
                                                              intermediate_size=37))  # fmt: skip
    dino.eval().save_pretrained(folder / "dino")
    tower = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(**TINY_CLIP["vision"], hidden_act="quick_gelu")
    )
    style = torch.randn(32, 12)
    state = openai_layout(tower, style)
    (folder / "csd").mkdir()
    save_file(state, str(folder / "csd" / "csd.safetensors"), metadata={"num_attention_heads": "4"})
    return {"clip": folder / "clip", "dino": folder / "dino", "csd": folder / "csd" / "csd.safetensors",
            "tower": tower, "style": style}  # fmt: skip


def openai_layout(tower, style: torch.Tensor) -> dict[str, torch.Tensor]:
    """The CSD checkpoint's key names (``module.backbone.*`` in OpenAI CLIP's layout, ``module.last_layer_style``),
    written out from a transformers ``CLIPVisionModel`` (independently of b4m.eval.csd's mapping)."""
    sd = {k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()}
    out = {
        "backbone.conv1.weight": sd["embeddings.patch_embedding.weight"],
        "backbone.class_embedding": sd["embeddings.class_embedding"],
        "backbone.positional_embedding": sd["embeddings.position_embedding.weight"],
        "backbone.ln_pre.weight": sd["pre_layrnorm.weight"],
        "backbone.ln_pre.bias": sd["pre_layrnorm.bias"],
        "backbone.ln_post.weight": sd["post_layernorm.weight"],
        "backbone.ln_post.bias": sd["post_layernorm.bias"],
        "last_layer_style": style,
        "last_layer_content": torch.randn_like(style),
    }
    for i in range(tower.config.num_hidden_layers):
        a, b = f"backbone.transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[a + f"attn.in_proj_{kind}"] = torch.cat([sd[b + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
            out[a + f"attn.out_proj.{kind}"] = sd[b + f"self_attn.out_proj.{kind}"]
            out[a + f"ln_1.{kind}"] = sd[b + f"layer_norm1.{kind}"]
            out[a + f"ln_2.{kind}"] = sd[b + f"layer_norm2.{kind}"]
            out[a + f"mlp.c_fc.{kind}"] = sd[b + f"mlp.fc1.{kind}"]
            out[a + f"mlp.c_proj.{kind}"] = sd[b + f"mlp.fc2.{kind}"]
    return {f"module.{k}": v.contiguous() for k, v in out.items()}


def write_pairs_file(folder: Path, n_contents: int = 2, n_styles: int = 2, aux: bool = True,
                     suffix: str = ".yaml", base: str | None = None) -> Path:  # fmt: skip
    """A pairs file with ``n_contents x n_styles`` crossed pairs over tiny random reference folders."""
    import yaml

    refs = folder / "refs"
    aux_s = [
        str(image_folder(refs / "aux" / f"s{i}", 100 + i, n=1, caption=f"a cup in style {i}"))
        for i in range(2)
    ]
    aux_c = [
        str(image_folder(refs / "aux" / f"c{i}", 200 + i, n=1, caption=f"a photo of thing {i}"))
        for i in range(2)
    ]
    data: dict = {"contents": {}, "styles": {}, "pairs": {"cross": True},
                  "prompts": ["a {content} in {style} style", "a photo of a {content}, {style} style"]}  # fmt: skip
    if base:
        data["base"] = base
    for i in range(n_contents):
        data["contents"][f"c{i}"] = {"images": f"refs/c{i}", "prompt": f"a photo of a teddy{i}",
                                     "token": f"teddy{i}", "class": "teddy", **({"aux": aux_s} if aux else {})}  # fmt: skip
        image_folder(refs / f"c{i}", 10 + i)
    for i in range(n_styles):
        data["styles"][f"s{i}"] = {"images": f"refs/s{i}", "prompt": f"a cup in paper{i} style",
                                   "token": f"paper{i}", "class": "paper", **({"aux": aux_c} if aux else {})}  # fmt: skip
        image_folder(refs / f"s{i}", 20 + i)
    path = folder / f"pairs{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data))
    return path
