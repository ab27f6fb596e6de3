"""Real metric encoders (CLIP, DINOv2) loaded through transformers, with preprocessing done in torch.

The paper's metrics (B4M, Xu et al. 2025, Sec. 5): content alignment is the cosine similarity of DINOv2 image
features, style alignment and prompt alignment use CLIP image and text features. :mod:`b4m.models.judges` provides
stand-ins for the synthetic world; this module loads the real models for real images.

Images come in as ``(B, 3, H, W)`` float tensors in ``[0, 1]``. Preprocessing mirrors the models' image
processors without needing one downloaded: resize the shorter side to the model's input size (bicubic,
antialiased), centre-crop to a square, normalise with the mean/std from ``preprocessor_config.json`` when the
model folder or hub repo has one, else with the model family's published defaults. Small differences from the
PIL-based processors (resampling filter details) remain; features are meant for similarity metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["ClipEncoder", "Dinov2Encoder", "load_clip", "load_dinov2", "preprocess_images"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _preprocessor_config(name_or_path: str | Path) -> dict | None:
    """``preprocessor_config.json`` from a local folder or the hub cache; None when there is none."""
    local = Path(name_or_path)
    if local.is_dir():
        f = local / "preprocessor_config.json"
        return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    try:
        from transformers.utils import cached_file

        f = cached_file(
            str(name_or_path), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except Exception:  # offline, or no such file on the hub: fall back to the family defaults
        return None
    return json.loads(Path(f).read_text(encoding="utf-8")) if f else None


def _size_from(pre: dict | None, key: str) -> int | None:
    if not pre or key not in pre:
        return None
    value = pre[key]
    if isinstance(value, dict):
        value = value.get("shortest_edge") or value.get("height")
    return int(value) if value else None


def preprocess_images(
    images: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> normalised ``(B, 3, size, size)``: resize the shorter side to ``size``
    (bicubic, antialiased), centre-crop, ``(x - mean) / std``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) floats in [0, 1]; got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    images = images.float()
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    images = images[..., top : top + size, left : left + size].clamp(0.0, 1.0)
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s


class ClipEncoder:
    """CLIP image and text features, unit-norm, from a ``CLIPModel`` and its tokenizer."""

    def __init__(
        self, model, tokenizer, image_size: int, mean, std, device: str | torch.device = "cpu"
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.device = torch.device(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess_images(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, projection_dim) unit-norm image embeddings (vision pooler output through the projection)."""
        dtype = next(self.model.parameters()).dtype
        pixels = self.preprocess(images).to(self.device, dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(B, projection_dim) unit-norm text embeddings (EOS token state through the projection)."""
        if self.tokenizer is None:
            raise ValueError("this CLIP encoder was loaded without a tokenizer; pass tokenizer= to load_clip")
        max_len = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        out = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)


class Dinov2Encoder:
    """DINOv2 image features, unit-norm: the CLS token after the final layer norm (``pooling="cls"``) or the
    mean of the patch tokens (``pooling="mean"``)."""

    def __init__(self, model, image_size: int, mean, std, pooling: str = "cls", device="cpu") -> None:
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={pooling!r}; expected 'cls' or 'mean'")
        self.model = model.eval().to(device)
        self.image_size, self.mean, self.std, self.pooling = image_size, tuple(mean), tuple(std), pooling
        self.device = torch.device(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess_images(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=self.preprocess(images).to(self.device, dtype))
        feats = out.pooler_output if self.pooling == "cls" else out.last_hidden_state[:, 1:].mean(dim=1)
        return F.normalize(feats.float(), dim=-1)


def load_clip(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    tokenizer=None,
    image_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> ClipEncoder:
    """Load a ``CLIPModel`` (local folder or hub id) and its tokenizer.

    ``tokenizer`` overrides the one found next to the model (pass False to skip text). ``image_size`` overrides
    the input size (default: the processor's crop size, else ``vision_config.image_size``).
    """
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(name_or_path), dtype=dtype)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        except (OSError, ValueError) as err:
            raise OSError(
                f"no tokenizer found for {name_or_path}: {err}. Save one next to the model "
                "(tokenizer.save_pretrained) or pass tokenizer=... (False to load image features only)"
            ) from err
    pre = _preprocessor_config(name_or_path)
    size = (
        image_size
        or _size_from(pre, "crop_size")
        or _size_from(pre, "size")
        or model.config.vision_config.image_size
    )
    mean = tuple(pre.get("image_mean", CLIP_MEAN)) if pre else CLIP_MEAN
    std = tuple(pre.get("image_std", CLIP_STD)) if pre else CLIP_STD
    return ClipEncoder(model, tokenizer or None, size, mean, std, device)


def load_dinov2(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    pooling: str = "cls",
    dtype: torch.dtype = torch.float32,
) -> Dinov2Encoder:
    """Load a ``Dinov2Model`` (local folder or hub id). Input size: ``image_size``, else the processor's crop
    size, else 224 (the DINOv2 evaluation size; the hub configs say 518, the pre-training size), capped at
    ``config.image_size`` for small models."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(str(name_or_path), dtype=dtype)
    pre = _preprocessor_config(name_or_path)
    size = image_size or _size_from(pre, "crop_size") or min(224, model.config.image_size)
    mean = tuple(pre.get("image_mean", IMAGENET_MEAN)) if pre else IMAGENET_MEAN
    std = tuple(pre.get("image_std", IMAGENET_STD)) if pre else IMAGENET_STD
    return Dinov2Encoder(model, size, mean, std, pooling, device)
