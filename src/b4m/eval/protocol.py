"""The paper's encoders as one per-image scorer (B4M, Xu et al., ACM TOG 2025, Sec. 5, Table 1; DuoLoRA for CSD):

- **content** = DINOv2 (CLS token) cosine between a generated image and the content references;
- **style** = CLIP image cosine to the style references, and **style_csd** = CSD cosine (:mod:`b4m.eval.csd`);
- **prompt** = CLIP text-image cosine between the image and its prompt (with class words for identifiers).

Each alignment is the **pairwise average** the papers compute: per generated image the mean cosine over every
reference image, so the mean over images is the mean over all generated x reference pairs. The centroid variant
(cosine to the normalised mean reference feature, what ``b4m eval`` and the world's judges report) comes along as
``content_centroid``, ``style_centroid``, ``style_csd_centroid``. Leakage (lower is better) is the pairwise cosine
of the content features to the *style* references and of the style features to the *content* references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from b4m.errors import B4MError

__all__ = ["ProtocolScorer", "load_protocol_scorer", "pairwise_mean", "centroid_cos"]


def pairwise_mean(features: Any, refs: Any) -> np.ndarray:
    """Per row of ``features`` (unit-norm), the mean cosine to every row of ``refs`` (unit-norm)."""
    return (features @ refs.T).mean(-1).double().cpu().numpy()


def centroid_cos(features: Any, refs: Any) -> np.ndarray:
    """Per row of ``features``, the cosine to the normalised mean of ``refs``."""
    import torch.nn.functional as F

    return (features @ F.normalize(refs.mean(0, keepdim=True), dim=-1).T).squeeze(-1).double().cpu().numpy()


class ProtocolScorer:
    """Per-image scores with DINOv2 (content), CLIP (style, prompt) and optionally CSD (style); see the module."""

    def __init__(self, clip: Any, dino: Any, csd: Any = None, name: str = "DINOv2 + CLIP + CSD") -> None:
        self.clip, self.dino, self.csd, self.name = clip, dino, csd, name

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
        dino, clip = self.dino.image_features, self.clip.image_features
        df, dc, ds = dino(images), dino(content_refs), dino(style_refs)
        cf, cs, cc = clip(images), clip(style_refs), clip(content_refs)
        text = self.clip.text_features(list(prompts))
        out = {
            "content": pairwise_mean(df, dc),
            "content_centroid": centroid_cos(df, dc),
            "style": pairwise_mean(cf, cs),
            "style_centroid": centroid_cos(cf, cs),
            "leak_content": pairwise_mean(df, ds),
            "leak_style": pairwise_mean(cf, cc),
            "prompt_hit": (cf * text).sum(-1).double().cpu().numpy(),
            "prompt_asked": np.ones(len(prompts)),
        }
        if self.csd is not None:
            sf, ss = self.csd.image_features(images), self.csd.image_features(style_refs)
            out["style_csd"] = pairwise_mean(sf, ss)
            out["style_csd_centroid"] = centroid_cos(sf, ss)
        return out


def load_protocol_scorer(
    clip: str | None, dino: str | None, csd: str | None = None, device: str = "cpu"
) -> ProtocolScorer:
    """Load the encoders (each a local folder or hub id; CSD a safetensors file or folder); a model that cannot
    load is one :class:`~b4m.errors.B4MError` naming its option."""
    from b4m.eval.csd import load_csd
    from b4m.eval.encoders import load_clip, load_dinov2

    missing = [o for o, v in (("--clip", clip), ("--dino", dino)) if v is None]
    if missing:
        raise B4MError(f"{' and '.join(missing)}: give the encoder (a local folder or a hub id)")
    loaded: dict[str, Any] = {}
    for option, value, loader in (("--clip", clip, load_clip), ("--dino", dino, load_dinov2)):
        try:
            loaded[option] = loader(value, device)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise B4MError(f"{option} {value}: cannot load it ({first})") from None
    csd_model = None if csd is None else load_csd(csd, device)
    name = f"DINOv2 {dino} + CLIP {clip}" + ("" if csd is None else f" + CSD {csd}")
    return ProtocolScorer(loaded["--clip"], loaded["--dino"], csd_model, name)
