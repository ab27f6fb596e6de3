"""The judges' network (:class:`WorldJudges`): one convolutional trunk with content and style identity
embeddings, class and instance-trait heads on them, and spatial attribute heads; saving it, loading it, and
starting it from judges of a world with smaller trait spaces (:func:`warm_start`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from b4m.io import make_dir, save_safetensors, write_text
from b4m.models.judges.config import CONFIG_NAME, DEFAULT_DIR, WEIGHTS_NAME
from b4m.world.concepts import ATTRIBUTES, CONTENTS, STYLES
from b4m.world.instances import (
    CONTENT_TRAITS,
    N_CONTENT_CODES,
    N_STYLE_CODES,
    STYLE_TRAITS,
    encode_code,
    has_instances,
)

__all__ = ["FORMAT_VERSION", "WorldJudges", "warm_start"]

FORMAT_VERSION = 2
_COS_SCALE = 16.0
_TRAIT_DIM = 128


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _CosineClassifier(nn.Module):
    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, dim) / math.sqrt(dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _COS_SCALE * features @ F.normalize(self.weight, dim=-1).T


def _identity(class_embedding: torch.Tensor, traits: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([class_embedding, F.normalize(traits, dim=-1)], dim=-1), dim=-1)


class WorldJudges(nn.Module):
    """Content, style and attribute judges for world images.

    Inputs are ``(B, 3, H, W)`` float tensors in ``[0, 1]`` (uint8 is accepted and divided by 255); other sizes
    than ``resolution`` are resized with antialiasing. The module is put in eval mode by :meth:`load`.
    """

    def __init__(
        self,
        contents: tuple[str, ...] = CONTENTS,
        styles: tuple[str, ...] = STYLES,
        attributes: dict[str, tuple[str, ...]] | None = None,
        width: int = 24,
        embed_dim: int = 96,
        resolution: int = 32,
        n_content_codes: int = N_CONTENT_CODES,
        n_style_codes: int = N_STYLE_CODES,
        trait_max_pool: bool = True,
    ) -> None:
        super().__init__()
        self.contents = tuple(contents)
        self.styles = tuple(styles)
        self.attributes = {k: tuple(v) for k, v in (attributes or ATTRIBUTES).items()}
        self.width, self.embed_dim, self.resolution = width, embed_dim, resolution
        self.n_content_codes, self.n_style_codes = n_content_codes, n_style_codes
        self.trait_max_pool = trait_max_pool
        self.metrics: dict = {}  # filled by load() from judges.json
        w = width
        self.trunk = nn.Sequential(
            *_block(3, w),
            nn.MaxPool2d(2),
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
        )
        self.content_proj = nn.Linear(4 * w, embed_dim)
        self.style_proj = nn.Linear(8 * w, embed_dim)  # mean and std of the features: texture statistics
        self.content_head = _CosineClassifier(embed_dim, len(self.contents))
        self.style_head = _CosineClassifier(embed_dim, len(self.styles))
        # Instance traits: a small MLP per kind over the pooled statistics (a palette index means different
        # colours in each style family, so it needs class x colour interactions that a linear head on a
        # class-clustered embedding cannot draw), then one linear head per trait.
        # With ``trait_max_pool`` they also see the max over the feature map: a small part (a knob, a crest) or
        # a thin shadow is a local peak that a mean over the map dilutes.
        extra = 4 * w if trait_max_pool else 0
        self.content_trait_mlp = nn.Sequential(nn.Linear(4 * w + extra, _TRAIT_DIM), nn.ReLU(inplace=True))
        self.style_trait_mlp = nn.Sequential(nn.Linear(8 * w + extra, _TRAIT_DIM), nn.ReLU(inplace=True))
        self.feature_dim = embed_dim + _TRAIT_DIM
        """Size of :meth:`content_features` / :meth:`style_features` (class embedding + trait features)."""
        self.trait_heads = nn.ModuleDict(
            {f"content_{k}": nn.Linear(_TRAIT_DIM, len(v)) for k, v in CONTENT_TRAITS.items()}
            | {f"style_{k}": nn.Linear(_TRAIT_DIM, len(v)) for k, v in STYLE_TRAITS.items()}
        )
        side = resolution // 4
        self.attr_reduce = nn.Sequential(nn.Conv2d(4 * w, 8, 1), nn.ReLU(inplace=True), nn.Flatten())
        self.attr_hidden = nn.Sequential(nn.Linear(8 * side * side, 96), nn.ReLU(inplace=True))
        self.attr_heads = nn.ModuleDict({k: nn.Linear(96, len(v)) for k, v in self.attributes.items()})

    # ------------------------------------------------------------------------------------------- forward

    def config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "contents": list(self.contents),
            "styles": list(self.styles),
            "attributes": {k: list(v) for k, v in self.attributes.items()},
            "width": self.width,
            "embed_dim": self.embed_dim,
            "resolution": self.resolution,
            "n_content_codes": self.n_content_codes,
            "n_style_codes": self.n_style_codes,
            "trait_max_pool": self.trait_max_pool,
        }

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W); got shape {tuple(images.shape)}")
        param = next(self.parameters())
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = images.to(device=param.device, dtype=param.dtype)
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(
                images,
                size=(self.resolution, self.resolution),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return ((images - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.trunk(self._prepare(images))
        pooled = fmap.mean(dim=(2, 3))
        # style from first- and second-order statistics of the feature map (Gatys et al.'s observation
        # that texture lives in feature correlations; the diagonal is enough here)
        stats = torch.cat([pooled, fmap.std(dim=(2, 3))], dim=-1)
        peak = [fmap.amax(dim=(2, 3))] if self.trait_max_pool else []
        return {
            "fmap": fmap,
            "content": F.normalize(self.content_proj(pooled), dim=-1),
            "style": F.normalize(self.style_proj(stats), dim=-1),
            "content_traits": self.content_trait_mlp(torch.cat([pooled, *peak], dim=-1)),
            "style_traits": self.style_trait_mlp(torch.cat([stats, *peak], dim=-1)),
        }

    def content_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) unit-norm content identity embeddings (the DINOv2 stand-in): the class
        embedding and the instance-trait features, each normalised, concatenated, normalised; close for the
        same instance of the same content across styles, poses and sizes."""
        f = self._forward(images)
        return _identity(f["content"], f["content_traits"])

    def style_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) unit-norm style identity embeddings (the CLIP/CSD stand-in for style
        similarity), built like :meth:`content_features`: close for the same style instance across contents."""
        f = self._forward(images)
        return _identity(f["style"], f["style_traits"])

    def classify(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: ``"content"`` over :attr:`contents`, ``"style"`` over :attr:`styles`, one entry per instance
        trait (``"content_squeeze"``, ..., ``"style_scale"``, over the trait's values) and one per attribute."""
        f = self._forward(images)
        out = {"content": self.content_head(f["content"]), "style": self.style_head(f["style"])}
        for name, head in self.trait_heads.items():
            out[name] = head(f["content_traits"] if name.startswith("content_") else f["style_traits"])
        fmap = f["fmap"]
        hidden = self.attr_hidden(self.attr_reduce(fmap))
        for name, head in self.attr_heads.items():
            out[name] = head(hidden)
        return out

    def predict(self, images: torch.Tensor) -> dict[str, list]:
        """Predicted names per judge, plus ``"content_id"`` / ``"style_id"``: the identity as ``(class name,
        instance code)``, the code assembled from the trait heads."""
        logits = self.classify(images)
        idx = {k: v.argmax(-1).tolist() for k, v in logits.items()}
        names = {"content": self.contents, "style": self.styles, **self.attributes}
        out: dict[str, list] = {k: [names[k][i] for i in idx[k]] for k in names}
        for kind, traits, classes in (("content", CONTENT_TRAITS, self.contents),
                                      ("style", STYLE_TRAITS, self.styles)):  # fmt: skip
            ids = []
            for b, cls in enumerate(idx[kind]):
                # a class without instances has one look: code 0
                code = encode_code(kind, [idx[f"{kind}_{t}"][b] for t in traits])
                ids.append((classes[cls], code if has_instances(kind, classes[cls]) else 0))
            out[f"{kind}_id"] = ids
        return out

    # ------------------------------------------------------------------------------------------- files

    def save(self, path: str | Path, metrics: dict | None = None) -> None:
        """Write ``judges.safetensors`` and ``judges.json`` (config, plus ``metrics`` if given) into the
        directory ``path``, each through a temporary file and an atomic rename, with the umask's mode
        (:mod:`b4m.io`)."""
        out = make_dir(path)
        config = self.config()
        if metrics is not None:
            config["metrics"] = metrics
        meta = {"format": "b4m-world-judges", "format_version": str(FORMAT_VERSION)}
        save_safetensors(self.state_dict(), out / WEIGHTS_NAME, meta)
        write_text(out / CONFIG_NAME, json.dumps(config, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path | None = None) -> WorldJudges:
        """Load judges from a directory written by :meth:`save`; ``None`` loads the shipped weights.

        Raises if the files are missing, if their concept names differ from the current world (the judges
        would silently mislabel), or if any weight is missing or unexpected.
        """
        folder = Path(path) if path is not None else DEFAULT_DIR
        weights, config_file = folder / WEIGHTS_NAME, folder / CONFIG_NAME
        for f in (weights, config_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} not found; train judges with `python benchmarks/judges.py` first"
                )
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{config_file}: format_version={config.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        judges = cls(
            contents=tuple(config["contents"]),
            styles=tuple(config["styles"]),
            attributes={k: tuple(v) for k, v in config["attributes"].items()},
            width=config["width"],
            embed_dim=config["embed_dim"],
            resolution=config["resolution"],
            n_content_codes=config["n_content_codes"],
            n_style_codes=config["n_style_codes"],
            trait_max_pool=config.get("trait_max_pool", False),
        )
        mismatch = []
        if judges.contents != CONTENTS:
            mismatch.append("contents")
        if judges.styles != STYLES:
            mismatch.append("styles")
        if judges.attributes != dict(ATTRIBUTES):
            mismatch.append("attributes")
        if (judges.n_content_codes, judges.n_style_codes) != (N_CONTENT_CODES, N_STYLE_CODES):
            mismatch.append("instance codes")
        if mismatch:
            raise ValueError(
                f"{config_file}: {', '.join(mismatch)} differ from b4m.world.concepts; retrain the judges "
                "with `python benchmarks/judges.py`"
            )
        judges.load_state_dict(load_file(str(weights)), strict=True)
        judges.metrics = config.get("metrics", {})
        return judges.eval()


def warm_start(path: str | Path) -> WorldJudges:
    """Judges for the current world initialised from the judges in ``path``, which may come from a world whose
    trait spaces were smaller (a trait gained values): every weight of the same shape is copied; a trait head
    that grew keeps its old rows (the values it already knew) and starts its new rows at zero.

    Raises ``ValueError`` when the two differ in anything else (concept names, trunk sizes)."""
    folder = Path(path)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    judges = WorldJudges(
        width=config["width"],
        embed_dim=config["embed_dim"],
        resolution=config["resolution"],
        trait_max_pool=config.get("trait_max_pool", False),
    )
    if (tuple(config["contents"]), tuple(config["styles"])) != (judges.contents, judges.styles):
        raise ValueError(f"{folder}: its contents or styles differ from b4m.world.concepts; train anew")
    old = load_file(str(folder / WEIGHTS_NAME))
    state = judges.state_dict()
    for name, new in state.items():
        if name not in old:
            raise ValueError(f"{folder}: no weight {name}; train anew")
        w = old[name]
        if w.shape == new.shape:
            state[name] = w
        elif name.startswith("trait_heads.") and w.shape[1:] == new.shape[1:] and w.shape[0] < new.shape[0]:
            grown = torch.zeros_like(new)
            grown[: w.shape[0]] = w
            state[name] = grown
        else:
            raise ValueError(f"{folder}: {name} has shape {tuple(w.shape)}, expected {tuple(new.shape)}")
    judges.load_state_dict(state, strict=True)
    return judges.eval()
