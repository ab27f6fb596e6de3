"""Per-image scores of generated images against content and style references: the built-in world's judges
(:class:`WorldScorer`) or real encoders, CLIP + DINOv2 (:class:`EncoderScorer`); :func:`load_scorer` picks one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from b4m.errors import B4MError


def _centroid(features: Any) -> Any:
    from b4m.eval.metrics import _centroid as centroid  # the one definition score_world uses

    return centroid(features)


def _cos(features: Any, refs: Any) -> np.ndarray:
    return (features @ _centroid(refs).T).squeeze(-1).double().cpu().numpy()


class WorldScorer:
    """Per-image scores with the built-in world's judges (:class:`b4m.models.judges.network.WorldJudges`)."""

    name = "world judges"

    def __init__(self, judges: Any = None) -> None:
        from b4m.models.judges.network import WorldJudges

        self.judges = judges if judges is not None else WorldJudges.load()

    def per_image(
        self,
        images: Any,
        content_refs: Any,
        style_refs: Any,
        content: str | None,
        style: str | None,
        attributes: Sequence[dict[str, str]],
        prompts: Sequence[str],
    ) -> dict[str, np.ndarray]:
        import torch

        from b4m.world.instances import parse_concept

        j = self.judges
        with torch.no_grad():
            cf, sf = j.content_features(images), j.style_features(images)
            out = {
                "content": _cos(cf, j.content_features(content_refs)),
                "style": _cos(sf, j.style_features(style_refs)),
                "leak_content": _cos(cf, j.content_features(style_refs)),
                "leak_style": _cos(sf, j.style_features(content_refs)),
            }
            pred, pred_s, pred_c = j.predict(images), j.predict(style_refs), j.predict(content_refs)
        c_ref = parse_concept(content, "content") if content else None
        s_ref = parse_concept(style, "style") if style else None
        as_float = lambda xs: np.asarray(xs, dtype=float)  # noqa: E731
        out["content_acc"] = as_float([c_ref is not None and p == c_ref.name for p in pred["content"]])
        out["style_acc"] = as_float([s_ref is not None and p == s_ref.name for p in pred["style"]])
        if c_ref is not None and c_ref.code is not None:
            out["content_inst"] = as_float([p == (c_ref.name, c_ref.code) for p in pred["content_id"]])
        if s_ref is not None and s_ref.code is not None:
            out["style_inst"] = as_float([p == (s_ref.name, s_ref.code) for p in pred["style_id"]])
        leaked_c = set(pred_s["content"]) - {c_ref.name if c_ref else None}
        leaked_s = set(pred_c["style"]) - {s_ref.name if s_ref else None}
        out["leak_content_acc"] = as_float([p in leaked_c for p in pred["content"]])
        out["leak_style_acc"] = as_float([p in leaked_s for p in pred["style"]])
        out["prompt_asked"] = as_float([len(a) for a in attributes])
        out["prompt_hit"] = as_float(
            [sum(pred[k][i] == v for k, v in a.items()) for i, a in enumerate(attributes)]
        )
        return out


class EncoderScorer:
    """Per-image scores with real encoders, the paper's protocol: DINOv2 for content, CLIP for style and prompt."""

    def __init__(self, clip: Any, dino: Any, name: str = "CLIP + DINOv2") -> None:
        self.clip, self.dino, self.name = clip, dino, name

    def per_image(
        self,
        images: Any,
        content_refs: Any,
        style_refs: Any,
        content: str | None,
        style: str | None,
        attributes: Sequence[dict[str, str]],
        prompts: Sequence[str],
    ) -> dict[str, np.ndarray]:
        df, cf = self.dino.image_features(images), self.clip.image_features(images)
        text = self.clip.text_features(list(prompts))
        return {
            "content": _cos(df, self.dino.image_features(content_refs)),
            "style": _cos(cf, self.clip.image_features(style_refs)),
            "leak_content": _cos(df, self.dino.image_features(style_refs)),
            "leak_style": _cos(cf, self.clip.image_features(content_refs)),
            "prompt_hit": (cf * text).sum(-1).double().cpu().numpy(),
            "prompt_asked": np.ones(len(prompts)),
        }


def load_scorer(
    clip: str | None = None, dino: str | None = None, judges: Path | None = None, device: str = "cpu"
) -> Any:
    """The world's judges, or CLIP + DINOv2 when both are given (:mod:`b4m.eval.encoders`)."""
    if clip is None and dino is None:
        from b4m.models.judges.network import WorldJudges

        return WorldScorer(WorldJudges.load(judges))
    from b4m.eval.encoders import load_clip, load_dinov2

    try:
        return EncoderScorer(
            load_clip(clip, device), load_dinov2(dino, device), f"CLIP {clip} + DINOv2 {dino}"
        )
    except OSError as err:
        raise B4MError(f"--clip/--dino: cannot load the encoders ({str(err).splitlines()[0]})") from None
