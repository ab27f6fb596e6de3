"""World judges: small CNNs that stand in for DINOv2 (content) and CLIP (style, prompt) on the synthetic world.

One convolutional trunk (three stages, 32 -> 16 -> 8 px) feeds

- a content embedding and a style embedding: global-average-pooled trunk features (for style, their mean
  and standard deviation) through separate linear projections, L2-normalised. Each is trained through a cosine classifier (NormFace; Wang et al. 2017):
  ``logits = s * <normalize(f), normalize(w_k)>`` with ``s = 16``, so cosine similarity between embeddings is what
  the classifiers rank by: images of the same content in different styles map close together in content space,
  and images of the same style over different contents close together in style space.
- one spatial head per attribute (position, size, background): a 1x1 conv to 8 channels on the 8 x 8 map,
  flattened, so that position and size are not lost to global pooling.

Training uses fresh renders of *all* contents and styles (held-out ones included; the judges must score them)
with uniform attributes, and augmentation that mimics a generator's flaws: shifts of up to 2 px, Gaussian blur,
Gaussian noise. Mild brightness/contrast jitter is applied to half of each batch, whose samples then train only
the content head, so colour stays a clean cue for style and background.

Shipped weights live in ``b4m/assets/judges`` (``judges.safetensors`` + ``judges.json``, which records the
concept names, the architecture and the metrics measured after training). Retrain with
``b4m judges train`` (or ``python benchmarks/judges.py``); the recipe is :class:`JudgesTrainConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from b4m import threads as b4m_threads
from b4m.eval.judges_config import DEFAULT_DIR, WEIGHTS_NAME, JudgesTrainConfig
from b4m.world.concepts import ATTRIBUTES, CONTENTS, HELD_OUT_CONTENTS, HELD_OUT_STYLES, STYLES
from b4m.world.instances import (
    CONTENT_TRAITS,
    INSTANCE_CONTENTS,
    INSTANCE_STYLES,
    N_CONTENT_CODES,
    N_STYLE_CODES,
    STYLE_TRAITS,
    content_traits,
    encode_code,
    has_instances,
    personal_codes,
    style_traits,
)
from b4m.world.render import Scene, render

__all__ = [
    "WorldJudges",
    "balanced_class_weights",
    "evaluate_judges",
    "perturb",
    "render_batch",
    "train_judges",
    "warm_start",
]

FORMAT_VERSION = 2
CONFIG_NAME = "judges.json"
_COS_SCALE = 16.0
_TRAIT_DIM = 128
_EVAL_SEED_OFFSET = 1_000_000_000  # evaluation seeds never overlap training seeds (< 1e9)


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
        directory ``path``, each through a temporary file and an atomic rename."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = self.config()
        if metrics is not None:
            config["metrics"] = metrics
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        os.close(fd)
        save_file(state, tmp, metadata={"format": "b4m-world-judges", "format_version": str(FORMAT_VERSION)})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, out / WEIGHTS_NAME)
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / CONFIG_NAME)

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


# ----------------------------------------------------------------------------------------------- data


def render_batch(scenes: list[Scene], seeds: list[int], resolution: int = 32) -> torch.Tensor:
    """Render scenes into a ``(B, 3, H, W)`` float tensor in [0, 1]."""
    arr = np.stack([render(s, int(k), resolution) for s, k in zip(scenes, seeds, strict=True)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def _uniform_scene(
    rng: np.random.Generator,
    contents=CONTENTS,
    styles=STYLES,
    personal: bool | None = None,
    instance_share: float = 0.0,
    style_share: float | None = None,
) -> Scene:
    """Uniform content, style, instance codes and attributes; ``personal=True`` draws personal instances
    of the classes that have them (otherwise codes are uniform over all codes). With probability
    ``instance_share`` the content is drawn from the classes with instances, and with ``style_share`` (default:
    ``instance_share``) the style."""
    inst_c = [c for c in contents if c in INSTANCE_CONTENTS]
    inst_s = [s for s in styles if s in INSTANCE_STYLES]
    pool_c = inst_c if inst_c and rng.random() < instance_share else contents
    share_s = instance_share if style_share is None else style_share
    pool_s = inst_s if inst_s and rng.random() < share_s else styles
    content = pool_c[int(rng.integers(len(pool_c)))]
    style = pool_s[int(rng.integers(len(pool_s)))]

    def code(kind: str, name: str, n: int) -> int:
        if not has_instances(kind, name):
            return 0
        if personal:
            mine = personal_codes(kind, name)
            return mine[int(rng.integers(len(mine)))]
        return int(rng.integers(n))

    values = {
        "content": content,
        "style": style,
        "content_code": code("content", content, N_CONTENT_CODES),
        "style_code": code("style", style, N_STYLE_CODES),
    }
    for name, options in ATTRIBUTES.items():
        values[name] = options[int(rng.integers(len(options)))]
    return Scene(**values)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0.05:
        return images
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    c = images.shape[1]
    x = F.pad(images, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def _shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    if dx == 0 and dy == 0:
        return images
    h, w = images.shape[-2:]
    p = max(abs(dx), abs(dy))
    x = F.pad(images, (p, p, p, p), mode="replicate")
    return x[..., p - dy : p - dy + h, p - dx : p - dx + w]


def perturb(
    images: torch.Tensor,
    generator: torch.Generator,
    blur: float = 0.7,
    noise: float = 0.05,
    max_shift: int = 2,
) -> torch.Tensor:
    """The evaluation perturbation that mimics generator jitter: Gaussian blur (``sigma=blur``), a random shift
    of 1..``max_shift`` px in x and/or y (replicate padding) per image, then Gaussian noise (``std=noise``)."""
    out = _blur(images, blur)
    shifted = []
    for i in range(len(out)):
        while True:
            dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
            if dx or dy:
                break
        shifted.append(_shift(out[i : i + 1], dx, dy))
    out = torch.cat(shifted)
    out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(0.0, 1.0)


def _shift_batch(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Shift each image by its own (dx, dy) pixels, |d| <= pad, with replicate padding."""
    b, _, h, w = images.shape
    x = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    rows = (torch.arange(h)[None, :] + pad - dy[:, None]).clamp(0, h + 2 * pad - 1)
    cols = (torch.arange(w)[None, :] + pad - dx[:, None]).clamp(0, w + 2 * pad - 1)
    out = x[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def _augment(images: torch.Tensor, gen: torch.Generator, color: torch.Tensor) -> torch.Tensor:
    """Training augmentation, per image: shift (|d| <= 2 px, p=0.75), Gaussian blur (sigma 0.4, 0.7 or 1.0,
    p=0.75), noise (std up to 0.08, p=0.7); where ``color`` (bool, (B,)) is set, brightness and contrast jitter
    of +-12 %."""
    b = len(images)
    move = torch.rand(b, generator=gen) < 0.75
    dx = torch.randint(-2, 3, (b,), generator=gen) * move
    dy = torch.randint(-2, 3, (b,), generator=gen) * move
    x = _shift_batch(images, dx, dy)
    which = torch.randint(0, 4, (b,), generator=gen)  # 0: sharp; 1, 2, 3: sigma 0.4, 0.7, 1.0
    for k, sigma in ((1, 0.4), (2, 0.7), (3, 1.0)):
        sel = which == k
        if sel.any():
            x[sel] = _blur(x[sel], sigma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 0.24 - 0.12) * color.view(-1, 1, 1, 1)
    bright = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 0.24 - 0.12) * color.view(-1, 1, 1, 1)
    x = (x - mean) * contrast + mean * bright
    std = torch.rand(b, 1, 1, 1, generator=gen) * 0.08 * (torch.rand(b, 1, 1, 1, generator=gen) < 0.7)
    x = x + std * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def _labels(scenes: list[Scene], seeds: list[int] | None = None) -> dict[str, torch.Tensor]:
    seeds = seeds if seeds is not None else [0] * len(scenes)
    codes = [s.codes(k) for s, k in zip(scenes, seeds, strict=True)]
    out = {
        "content": torch.tensor([CONTENTS.index(s.content) for s in scenes]),
        "style": torch.tensor([STYLES.index(s.style) for s in scenes]),
    }
    for name in CONTENT_TRAITS:
        out[f"content_{name}"] = torch.tensor([content_traits(c)[name] for c, _ in codes])
    for name in STYLE_TRAITS:
        out[f"style_{name}"] = torch.tensor([style_traits(c)[name] for _, c in codes])
    for name, values in ATTRIBUTES.items():
        out[name] = torch.tensor([values.index(getattr(s, name)) for s in scenes])
    return out


# ----------------------------------------------------------------------------------------------- training


def balanced_class_weights(has: torch.Tensor, share: float) -> torch.Tensor:
    """``(1/K) / p(class)`` for the class sampling of :func:`_uniform_scene`: with probability ``share`` a class
    is drawn among those with instances (``has`` is 1 for them), otherwise among all ``K``. Weighting each
    sample's cross-entropy by it gives every class the same expected weight, ``1/K``."""
    k = len(has)
    p = (1 - share) / k + share * has / has.sum().clamp(min=1)
    return (1.0 / k) / p


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


def train_judges(
    out_dir: str | Path | None,
    config: JudgesTrainConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict:
    """Train judges on renders of all contents and styles and all their instances (personal ones included:
    judges must score them), evaluate them on never-seen seeds, save them to ``out_dir`` (unless None) and
    return the metrics (also stored in ``judges.json``).

    Rendering is the bottleneck on CPU, so batches are drawn from a pool of ``pool_size`` uniform scenes in
    which ``refresh`` images are replaced by fresh renders every step (training seeds are
    ``seed * 1e8 + k`` with ``k < 1e8``; evaluation seeds start at ``1e9``). Loss: sum of cross-entropies
    (label smoothing 0.05), AdamW with a one-cycle schedule. Half of each batch gets colour jitter and
    trains only the content head. ``instance_share`` / ``style_share``: see :func:`_uniform_scene`.
    ``init_from``: a judges folder to start from (a second phase, e.g. to rebalance the heads), instead of
    random weights. ``balance_classes``: weight the class heads' cross-entropy by ``(1/K) / p(class)``, the
    inverse of each class's sampling probability under the shares, so that the trait heads get the instance
    classes' many samples while the class heads still learn a uniform prior over all K classes.

    The settings are ``config`` (default: :class:`JudgesTrainConfig`'s, the shipped recipe) with ``overrides``
    (its field names, e.g. ``steps=3``) applied.
    """
    cfg = dataclasses.replace(config or JudgesTrainConfig(), **overrides)
    steps, seed, batch_size, lr, threads = cfg.steps, cfg.seed, cfg.batch_size, cfg.lr, cfg.threads
    pool_size, refresh, n_eval = cfg.pool_size, cfg.refresh, cfg.n_eval
    instance_share, style_share, init_from = cfg.instance_share, cfg.style_share, cfg.init_from
    balance_classes = cfg.balance_classes
    b4m_threads.apply(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 17])
    t0 = time.perf_counter()
    next_seed = seed * 100_000_000

    def fresh(n: int) -> tuple[torch.Tensor, list[Scene]]:
        nonlocal next_seed
        scenes = [
            _uniform_scene(rng, instance_share=instance_share, style_share=style_share) for _ in range(n)
        ]
        images = render_batch(scenes, list(range(next_seed, next_seed + n)))
        next_seed += n
        return (images * 255).round().to(torch.uint8), scenes

    pool, pool_scenes = fresh(pool_size)
    pool_labels = _labels(pool_scenes)
    render_s = time.perf_counter() - t0
    if progress:
        print(f"[judges] rendered a pool of {pool_size} images in {render_s:.0f}s", flush=True)

    judges = warm_start(init_from).train() if init_from else WorldJudges()
    judges = judges.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(judges.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    half = batch_size // 2
    color = torch.arange(batch_size) >= half
    content_has = torch.tensor([float(has_instances("content", c)) for c in CONTENTS])
    style_has = torch.tensor([float(has_instances("style", s)) for s in STYLES])

    shares = {"content": instance_share, "style": instance_share if style_share is None else style_share}
    has_of = {"content": content_has, "style": style_has}
    class_w = {
        k: balanced_class_weights(has_of[k], shares[k]) if balance_classes else torch.ones(len(has_of[k]))
        for k in shares
    }
    log = []
    judges.train()
    for step in range(steps):
        tr = time.perf_counter()
        if refresh:
            slots = torch.from_numpy(rng.choice(pool_size, refresh, replace=False))
            new_images, new_scenes = fresh(refresh)
            pool[slots] = new_images
            for name, value in _labels(new_scenes).items():
                pool_labels[name][slots] = value
        idx = torch.from_numpy(rng.choice(pool_size, batch_size, replace=False))
        x = _augment(pool[idx].float() / 255.0, gen, color)
        labels = {k: v[idx] for k, v in pool_labels.items()}
        render_s += time.perf_counter() - tr
        logits = judges.classify(x)
        # trait heads learn only from classes that have instances (the others have one look)
        has = {"content": content_has[labels["content"]], "style": style_has[labels["style"]]}
        # colour jitter keeps shapes: the content judges (class and traits) train on the whole batch
        losses = {}
        for name, lg in logits.items():
            rows = slice(None) if name.startswith("content") else slice(0, half)
            if name in class_w:
                w = class_w[name][labels[name][rows]]
                ce = F.cross_entropy(lg[rows], labels[name][rows], label_smoothing=0.05, reduction="none")
                losses[name] = (ce * w).sum() / w.sum()
            elif name.startswith(("content_", "style_")):
                mask = has[name.partition("_")[0]][rows]
                ce = F.cross_entropy(lg[rows], labels[name][rows], label_smoothing=0.05, reduction="none")
                losses[name] = (ce * mask).sum() / mask.sum().clamp(min=1)
            else:
                losses[name] = F.cross_entropy(lg[rows], labels[name][rows], label_smoothing=0.05)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            entry = {"step": step, **{k: round(v.item(), 4) for k, v in losses.items()}}
            log.append(entry)
            if progress:
                print(f"[judges] step {step}/{steps} {time.perf_counter() - t0:.0f}s {entry}", flush=True)
    train_s = time.perf_counter() - t0
    judges.eval()
    t1 = time.perf_counter()
    metrics = evaluate_judges(judges, n_per_concept=n_eval, seed=seed + 1)
    metrics["training"] = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "pool_size": pool_size,
        "refresh_per_step": refresh,
        "instance_share": instance_share,
        "style_share": shares["style"],
        "init_from": str(init_from) if init_from else None,
        "balance_classes": balance_classes,
        "earlier_training": judges.metrics.get("training") if init_from else None,
        "unique_training_images": next_seed - seed * 100_000_000,
        "train_seconds": round(train_s, 1),
        "render_augment_seconds": round(render_s, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "final_losses": log[-1],
    }
    if out_dir is not None:
        judges.save(out_dir, metrics=metrics)
    return metrics


# ----------------------------------------------------------------------------------------------- evaluation


def _eval_scenes(n_per_concept: int, rng: np.random.Generator) -> list[Scene]:
    """``n_per_concept`` scenes per content (random style) and per style (random content); attributes
    uniform, so attribute values are covered evenly too."""
    scenes = []
    for content in CONTENTS:
        extra = 4 if content in INSTANCE_CONTENTS else 1  # instance accuracy needs more than class accuracy
        scenes += [_uniform_scene(rng, contents=(content,)) for _ in range(n_per_concept * extra)]
        scenes += [_uniform_scene(rng, contents=(content,), personal=True) for _ in range(n_per_concept // 2)]
    for style in STYLES:
        extra = 4 if style in INSTANCE_STYLES else 1
        scenes += [_uniform_scene(rng, styles=(style,)) for _ in range(n_per_concept * extra)]
        scenes += [_uniform_scene(rng, styles=(style,), personal=True) for _ in range(n_per_concept // 2)]
    return scenes


@torch.no_grad()
def _predict_all(judges: WorldJudges, images: torch.Tensor, chunk: int = 256) -> dict[str, torch.Tensor]:
    preds: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(images), chunk):
        for k, v in judges.classify(images[s : s + chunk]).items():
            preds.setdefault(k, []).append(v.argmax(-1).cpu())
    return {k: torch.cat(v) for k, v in preds.items()}


def _accuracies(preds: dict[str, torch.Tensor], scenes: list[Scene]) -> dict[str, float]:
    labels = _labels(scenes)
    ok = {k: (preds[k] == labels[k]).numpy() for k in labels}
    for kind, traits in (("content", CONTENT_TRAITS), ("style", STYLE_TRAITS)):
        ok[f"{kind}_id"] = ok[kind] & np.all([ok[f"{kind}_{t}"] for t in traits], axis=0)
    held_out_c = np.array([s.content in HELD_OUT_CONTENTS for s in scenes])
    held_out_s = np.array([s.style in HELD_OUT_STYLES for s in scenes])
    # instance accuracy is measured on the classes that have instances
    inst_c = np.array([has_instances("content", s.content) for s in scenes])
    inst_s = np.array([has_instances("style", s.style) for s in scenes])
    personal_c = np.array([s.content_code in personal_codes("content", s.content) for s in scenes])
    personal_s = np.array([s.style_code in personal_codes("style", s.style) for s in scenes])
    out = {
        "content_instance": ok["content_id"][inst_c].mean(),
        "content_instance_personal": ok["content_id"][personal_c].mean(),
        "style_instance": ok["style_id"][inst_s].mean(),
        "style_instance_personal": ok["style_id"][personal_s].mean(),
        "content": ok["content"].mean(),
        "content_held_in": ok["content"][~held_out_c].mean(),
        "content_held_out": ok["content"][held_out_c].mean(),
        "style": ok["style"].mean(),
        "style_held_in": ok["style"][~held_out_s].mean(),
        "style_held_out": ok["style"][held_out_s].mean(),
    }
    for name in ATTRIBUTES:
        out[name] = ok[name].mean()
    return {k: round(float(v), 4) for k, v in out.items()}


@torch.no_grad()
def _feature_margins(judges: WorldJudges, seed: int, n: int = 3) -> dict[str, float]:
    """Mean cosine similarity of content features for (same content, different style) vs (different content)
    pairs, and of style features for (same style, different content) vs (different style) pairs."""
    scenes = [Scene(c, s) for c in CONTENTS for s in STYLES for _ in range(n)]
    seeds = [_EVAL_SEED_OFFSET + 500_000 + seed * 10_000 + i for i in range(len(scenes))]
    images = render_batch(scenes, seeds)
    cf = torch.cat([judges.content_features(images[i : i + 256]) for i in range(0, len(images), 256)])
    sf = torch.cat([judges.style_features(images[i : i + 256]) for i in range(0, len(images), 256)])
    c_idx = torch.tensor([CONTENTS.index(s.content) for s in scenes])
    s_idx = torch.tensor([STYLES.index(s.style) for s in scenes])
    same_c = c_idx[:, None] == c_idx[None, :]
    same_s = s_idx[:, None] == s_idx[None, :]
    csim, ssim = cf @ cf.T, sf @ sf.T
    return {
        "content_sim_same_content_diff_style": round(float(csim[same_c & ~same_s].mean()), 4),
        "content_sim_diff_content": round(float(csim[~same_c].mean()), 4),
        "style_sim_same_style_diff_content": round(float(ssim[same_s & ~same_c].mean()), 4),
        "style_sim_diff_style": round(float(ssim[~same_s].mean()), 4),
    }


@torch.no_grad()
def evaluate_judges(
    judges: WorldJudges, n_per_concept: int = 30, seed: int = 1, n_feature_pairs: int = 3
) -> dict:
    """Accuracies on fresh renders (seeds from ``1e9`` up, which training never uses), clean and under
    :func:`perturb` (blur 0.7, noise 0.05, 1-2 px shift), split into held-in / held-out concepts, plus
    feature similarity margins over ``n_feature_pairs`` renders of every (content, style) pair.
    ``n_per_concept`` images per content and per style."""
    was_training = judges.training
    judges.eval()
    rng = np.random.default_rng([seed, 31])
    scenes = _eval_scenes(n_per_concept, rng)
    seeds = [_EVAL_SEED_OFFSET + seed * 1_000_000 + i for i in range(len(scenes))]
    images = render_batch(scenes, seeds)
    gen = torch.Generator().manual_seed(seed)
    out = {
        "n_images": len(scenes),
        "seed": seed,
        "clean": _accuracies(_predict_all(judges, images), scenes),
        "perturbed": _accuracies(_predict_all(judges, perturb(images, gen)), scenes),
        "features": _feature_margins(judges, seed, n_feature_pairs),
    }
    judges.train(was_training)
    return out
