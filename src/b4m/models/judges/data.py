"""The judges' data: world scenes drawn uniformly (or leaning to the classes with instances), rendered to
tensors, and their labels for every head."""

from __future__ import annotations

import numpy as np
import torch

from b4m.world.concepts import ATTRIBUTES, CONTENTS, STYLES
from b4m.world.instances import (
    CONTENT_TRAITS,
    INSTANCE_CONTENTS,
    INSTANCE_STYLES,
    N_CONTENT_CODES,
    N_STYLE_CODES,
    STYLE_TRAITS,
    content_traits,
    has_instances,
    personal_codes,
    style_traits,
)
from b4m.world.render import Scene, render

__all__ = ["render_batch", "scene_labels", "uniform_scene"]


def render_batch(scenes: list[Scene], seeds: list[int], resolution: int = 32) -> torch.Tensor:
    """Render scenes into a ``(B, 3, H, W)`` float tensor in [0, 1]."""
    arr = np.stack([render(s, int(k), resolution) for s, k in zip(scenes, seeds, strict=True)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def uniform_scene(
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


def scene_labels(scenes: list[Scene], seeds: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Class indices per head: content, style, each instance trait (of the codes the scenes render with
    ``seeds``) and each attribute."""
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
