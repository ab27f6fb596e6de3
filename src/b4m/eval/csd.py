"""CSD, the Contrastive Style Descriptor (Somepalli et al. 2024, "Measuring Style Similarity in Diffusion Models"),
the style metric DuoLoRA and USO report, read from **safetensors only** (b4m never unpickles a file).

CSD is a CLIP ViT vision tower (OpenAI's ViT-L/14 layout) with a style projection head: the image's feature is the
tower's final-layer-normed class token (``ln_post(x[:, 0])``, which is transformers' ``pooler_output``) times the
style matrix ``last_layer_style`` (``hidden x 768``), unit-normalised. Its preprocessing is CLIP's: resize the
short side to 224 (bicubic), centre crop, CLIP mean/std (:func:`b4m.eval.encoders.preprocess_images`).

Files accepted (``--csd``: a ``.safetensors`` file, or a folder holding one, optionally with a ``config.json``):

- **the published checkpoint's own key names**, saved as safetensors: ``backbone.conv1.weight`` ...
  ``backbone.transformer.resblocks.N.attn.in_proj_weight`` ... ``last_layer_style`` (a ``module.`` prefix is
  dropped). The tower's sizes are read from the tensors' shapes; the head count is ``hidden / 64`` (OpenAI's
  ViTs) unless the file's metadata says ``num_attention_heads``. To make one from the published
  ``checkpoint.pth`` (a pickle), in your own Python, once::

      import torch, safetensors.torch
      state = torch.load("checkpoint.pth", map_location="cpu", weights_only=True)["model_state_dict"]
      safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, "csd_vit_l.safetensors")

  (``weights_only=True`` refuses anything but tensors and plain containers.)
- **transformers' names**: a ``CLIPVisionModel`` state dict (``vision_model.`` prefix optional) plus
  ``style_projection`` (``hidden x dim``), with the tower's ``config.json`` (a ``CLIPVisionConfig`` or a
  ``CLIPConfig``) in the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from b4m.errors import B4MError

__all__ = ["CsdEncoder", "csd_to_transformers", "load_csd"]

STYLE = "last_layer_style"
"""The style head of the published checkpoint (``hidden x 768``); :data:`STYLE_TF` in transformers' layout."""
STYLE_TF = "style_projection"
_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}


def csd_to_transformers(
    state: dict[str, torch.Tensor], heads: int | None = None
) -> tuple[dict[str, Any], dict]:
    """The published CSD key names (``backbone.*``, ``last_layer_style``) -> ``(CLIPVisionConfig kwargs,
    {transformers CLIPVisionModel key without prefix: tensor, "style_projection": hidden x dim})``."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if STYLE not in state or "backbone.conv1.weight" not in state:
        raise ValueError(f"no {STYLE} or backbone.conv1.weight: not a CSD checkpoint")
    out: dict[str, torch.Tensor] = {STYLE_TF: state[STYLE]}
    layers = set()
    for key, value in state.items():
        if not key.startswith("backbone."):
            continue
        name = key.removeprefix("backbone.")
        if name in _TOP:
            out[_TOP[name]] = value
        elif name.startswith("transformer.resblocks."):
            i, rest = name.removeprefix("transformer.resblocks.").split(".", 1)
            layers.add(int(i))
            prefix = f"encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.removeprefix("attn.in_proj_")  # weight | bias
                for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            else:
                module, kind = rest.rsplit(".", 1)
                if module not in _LAYER:
                    raise ValueError(f"unexpected key {key}")
                out[f"{prefix}{_LAYER[module]}.{kind}"] = value
        elif name != "proj":
            raise ValueError(f"unexpected key {key}")
    conv = state["backbone.conv1.weight"]
    hidden, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["backbone.positional_embedding"].shape[0] - 1) ** 0.5)
    config = {
        "hidden_size": hidden,
        "intermediate_size": state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads or max(1, hidden // 64),
        "patch_size": patch,
        "image_size": grid * patch,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": state[STYLE].shape[1],
    }
    return config, out


class CsdEncoder:
    """CSD style features, unit-norm: ``normalize(pooler_output @ style_projection)``."""

    def __init__(
        self, model: Any, style: torch.Tensor, image_size: int, device: str | torch.device = "cpu"
    ) -> None:
        from b4m.eval.encoders import CLIP_MEAN, CLIP_STD

        self.model = model.eval().to(device)
        self.style = style.float().to(device)
        self.image_size, self.mean, self.std = image_size, CLIP_MEAN, CLIP_STD
        self.device = torch.device(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        from b4m.eval.encoders import preprocess_images

        return preprocess_images(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        pooled = self.model(pixel_values=self.preprocess(images).to(self.device, dtype)).pooler_output
        return F.normalize(pooled.float() @ self.style, dim=-1)


def _weights_file(path: Path, option: str) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise B4MError(
                f"{option} {path}: expected one .safetensors file in the folder, found {len(found)}"
                + ("" if found else " (b4m reads CSD weights only from safetensors; see b4m.eval.csd)")
            )
        return found[0]
    if not path.is_file():
        raise B4MError(f"{option} {path}: no such file or folder; give a CSD .safetensors file")
    if path.suffix != ".safetensors":
        raise B4MError(
            f"{option} {path}: b4m reads CSD weights only from a .safetensors file and never unpickles "
            f"{path.suffix or 'a file'}; convert the checkpoint once (README 'Reproduce Table 1', b4m.eval.csd)"
        )
    return path


def load_csd(path: str | Path, device: str | torch.device = "cpu", option: str = "--csd") -> CsdEncoder:
    """Load a CSD model from a safetensors file or a folder holding one (module docstring)."""
    from safetensors import safe_open
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModel

    file = _weights_file(Path(path), option)
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    except Exception as err:  # a damaged or foreign file
        raise B4MError(
            f"{option} {file}: cannot read it as safetensors ({str(err).splitlines()[0]})"
        ) from None
    try:
        if any(k.removeprefix("module.") == STYLE for k in state):
            heads = int(meta["num_attention_heads"]) if "num_attention_heads" in meta else None
            kwargs, tensors = csd_to_transformers(state, heads)
            config = CLIPVisionConfig(**kwargs)
        else:
            if STYLE_TF not in state:
                raise ValueError(f"neither {STYLE} nor {STYLE_TF} in it: not a CSD model")
            cfg_file = file.parent / "config.json"
            if not cfg_file.is_file():
                raise ValueError(f"transformers' key names need the tower's config.json next to {file.name}")
            raw = json.loads(cfg_file.read_text(encoding="utf-8"))
            config = CLIPConfig(**raw).vision_config if "vision_config" in raw else CLIPVisionConfig(**raw)
            tensors = {k.removeprefix("vision_model."): v for k, v in state.items()}
        style = tensors.pop(STYLE_TF)
        model = CLIPVisionModel(config)
        own = model.state_dict()
        prefix = "vision_model." if all(k.startswith("vision_model.") for k in own) else ""
        missing = model.load_state_dict({prefix + k: v for k, v in tensors.items()}, strict=True)
        del missing
        if style.shape[0] != config.hidden_size:
            raise ValueError(f"{STYLE_TF} is {tuple(style.shape)}, the tower's width is {config.hidden_size}")
    except (ValueError, RuntimeError, KeyError) as err:
        raise B4MError(
            f"{option} {file}: not a CSD model b4m can read ({str(err).splitlines()[0]})"
        ) from None
    return CsdEncoder(model, style, config.image_size, device)
