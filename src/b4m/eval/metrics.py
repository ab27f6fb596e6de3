"""Content, style and prompt alignment (B4M paper Sec. 5, Table 1; method notes Sec. 6).

The paper scores content with DINOv2 (cosine of generated vs. content references), style with CLIP image
features (generated vs. style references), and prompt alignment with CLIP image-text similarity, and reports
the three and their mean. In the built-in world the judges (``b4m.models.judges``) stand in for those networks:
content and style alignment are the same cosines of the judges' content and style embeddings; prompt
alignment is the fraction of the prompt's attributes (position, size, background) that the attribute judges
find in the image, the world's checkable equivalent of CLIP-T. We also report the harmonic mean, which
punishes methods that win one axis by giving up another, and the judges' concept accuracies, which are
easier to read than cosines: did the image show *this* content, in *this* style?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Scores", "score_world"]


@dataclass(frozen=True)
class Scores:
    content: float  # mean cosine to the content references' mean embedding
    style: float  # mean cosine to the style references' mean embedding
    prompt: float  # fraction of requested attributes present (1.0 when none requested)
    content_acc: float  # fraction the content judge labels as the target content class
    style_acc: float  # fraction the style judge labels as the target style family
    n: int
    content_inst: float | None = None  # fraction judged to be the target personal content instance
    style_inst: float | None = None  # fraction judged to be the target personal style instance

    @property
    def mean(self) -> float:
        return (self.content + self.style + self.prompt) / 3

    @property
    def hmean(self) -> float:
        parts = [max(v, 1e-6) for v in (self.content, self.style, self.prompt)]
        return 3 / sum(1 / v for v in parts)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "hmean": self.hmean}


def _centroid(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.mean(0, keepdim=True), dim=-1)


@torch.no_grad()
def score_world(
    judges: Any,
    images: torch.Tensor,
    content_refs: torch.Tensor,
    style_refs: torch.Tensor,
    content: str | None,
    style: str | None,
    attributes: Sequence[dict[str, str]] | None = None,
) -> Scores:
    """Score generated ``images`` (``(B, 3, H, W)`` in ``[0, 1]``) against reference images.

    ``attributes[i]`` holds the attribute values the prompt of image ``i`` asked for (empty: none asked).
    ``content``/``style`` name the target concepts for the accuracies (``None``: reported as 0); a personal
    instance (``"teddy#3"``) also gets an instance accuracy: the judges' identity heads name exactly it.
    """
    from b4m.world.instances import parse_concept

    c_align = (
        (judges.content_features(images) @ _centroid(judges.content_features(content_refs)).T).mean().item()
    )
    s_align = (judges.style_features(images) @ _centroid(judges.style_features(style_refs)).T).mean().item()
    pred = judges.predict(images)
    n = images.shape[0]
    c_ref = parse_concept(content, "content") if content else None
    s_ref = parse_concept(style, "style") if style else None
    content_acc = sum(p == c_ref.name for p in pred["content"]) / n if c_ref else 0.0
    style_acc = sum(p == s_ref.name for p in pred["style"]) / n if s_ref else 0.0
    c_inst = s_inst = None
    if c_ref is not None and c_ref.code is not None:
        c_inst = sum(p == (c_ref.name, c_ref.code) for p in pred["content_id"]) / n
    if s_ref is not None and s_ref.code is not None:
        s_inst = sum(p == (s_ref.name, s_ref.code) for p in pred["style_id"]) / n
    asked = hit = 0
    for i, wanted in enumerate(attributes or []):
        for name, value in wanted.items():
            asked += 1
            hit += pred[name][i] == value
    prompt = hit / asked if asked else 1.0
    return Scores(c_align, s_align, prompt, content_acc, style_acc, n, c_inst, s_inst)
