"""The base model's quality report: fresh samples of world prompts scored by the world judges
(:func:`evaluate_base_model`), on the balanced evaluation scenes of :func:`eval_scenes`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from b4m.models.base.sample import generate, info_for
from b4m.world import concepts, render
from b4m.world.instances import (
    CONTENT_TRAITS,
    N_CONTENT_CODES,
    N_PERSONAL,
    N_STYLE_CODES,
    STYLE_TRAITS,
    encode_code,
    has_instances,
    personal_codes,
)

__all__ = ["eval_scenes", "evaluate_base_model"]


def eval_scenes(n_per_concept: int, seed: int) -> dict[str, list[Any]]:
    """Balanced evaluation scenes: held-in (each content and each style about ``n_per_concept`` times, random
    attributes), held-out contents with held-in styles, and held-in contents with held-out styles."""
    rng = np.random.default_rng(seed)
    c_in, s_in = concepts.HELD_IN_CONTENTS, concepts.HELD_IN_STYLES

    def scenes(contents: Sequence[str], styles: Sequence[str], attribute_prob: float) -> list[Any]:
        n = n_per_concept * max(len(contents), len(styles))
        cs = [contents[i % len(contents)] for i in range(n)]
        ss = [styles[i % len(styles)] for i in rng.permutation(n)]
        out = []
        for c, s in zip(cs, ss, strict=True):
            while (c, s) in concepts.UNSEEN_PAIRS:  # asked for on their own, below
                s = styles[int(rng.integers(len(styles)))]
            base = render.random_scene(rng, contents=(c,), styles=(s,), attribute_prob=attribute_prob)
            out.append(base)
        return out

    per_pair = max(2, n_per_concept // 4)
    unseen = [
        render.random_scene(rng, contents=(c,), styles=(s,), attribute_prob=0.0)
        for c, s in sorted(concepts.UNSEEN_PAIRS)
        for _ in range(per_pair)
    ]
    return {
        "held_in": scenes(c_in, s_in, 0.5),
        "unseen_pairs": unseen,
        "held_out_content": scenes(concepts.HELD_OUT_CONTENTS, s_in, 0.0),
        "held_out_style": scenes(c_in, concepts.HELD_OUT_STYLES, 0.0),
    }


@torch.no_grad()
def evaluate_base_model(
    pipe: DiffusionPipeline,
    judges: Any,
    n_per_concept: int = 16,
    seed: int = 1234,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample fresh images from world prompts and score them with the world judges.

    ``judges.classify(images (B, 3, H, W) in [0, 1])`` must return logits over ``CONTENTS`` (``"content"``),
    ``STYLES`` (``"style"``) and each attribute's values. Reports (fractions in [0, 1]):

    - ``content_acc`` / ``style_acc``: held-in prompts (held-in content × held-in style, random attributes);
    - ``attribute_acc[name]``: over held-in prompts that state a non-default value of ``name``, and
      ``attribute_acc_all[name]`` over all held-in prompts (unstated means the default value);
      ``attribute_acc_mean`` averages the former;
    - ``held_out_content_acc`` and ``held_out_style_acc``: prompts naming a held-out concept (expected near
      ``chance_content`` = 1/len(CONTENTS) and ``chance_style`` = 1/len(STYLES)), with what the judges saw
      instead in ``held_out_content_pred`` / ``held_out_style_pred`` (most frequent predictions);
    - ``unseen_content_acc`` / ``unseen_style_acc``: prompts of ``UNSEEN_PAIRS``, pairs base training never
      rendered (does the model compose?);
    - ``personal_content_rate`` / ``personal_style_rate``: on held-in prompts, how often an image is judged to
      be one given personal instance of its class (averaged over the personal instances; prompts of classes
      with instances only), next to
      ``chance_content_instance`` = 1/N_CONTENT_CODES and ``chance_style_instance`` (needs judges with instance
      trait heads; personal instances must not come from a prompt alone).
    """
    sets = eval_scenes(n_per_concept, seed)
    result: dict[str, Any] = {
        "n_per_concept": n_per_concept,
        "seed": seed,
        "num_inference_steps": num_inference_steps or info_for(pipe).num_inference_steps,
        "guidance_scale": info_for(pipe).guidance_scale if guidance_scale is None else guidance_scale,
        "chance_content": 1.0 / len(concepts.CONTENTS),
        "chance_style": 1.0 / len(concepts.STYLES),
    }
    preds: dict[str, dict[str, np.ndarray]] = {}
    for k, (name, scenes) in enumerate(sets.items()):
        prompts = [render.caption(s) for s in scenes]
        images = generate(
            pipe, prompts, seed + 7919 * k, num_inference_steps, guidance_scale, batch_size, progress
        )
        out: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), 256):
            logits = judges.classify(images[i : i + 256])
            for key, v in logits.items():
                out.setdefault(key, []).append(torch.as_tensor(v).argmax(-1).cpu().numpy())
        preds[name] = {key: np.concatenate(v) for key, v in out.items()}
        result[f"n_{name}"] = len(scenes)

    def acc(
        name: str, key: str, values: Sequence[str], truth: list[str], mask: np.ndarray | None = None
    ) -> float:
        p = preds[name][key]
        t = np.array([values.index(v) for v in truth])
        ok = p == t
        return float(ok[mask].mean()) if mask is not None else float(ok.mean())

    held_in = sets["held_in"]
    result["content_acc"] = acc("held_in", "content", concepts.CONTENTS, [s.content for s in held_in])
    result["style_acc"] = acc("held_in", "style", concepts.STYLES, [s.style for s in held_in])
    result["per_content_acc"] = {
        c: acc("held_in", "content", concepts.CONTENTS, [s.content for s in held_in],
               np.array([s.content == c for s in held_in]))
        for c in concepts.HELD_IN_CONTENTS
    }  # fmt: skip
    result["per_style_acc"] = {
        st: acc("held_in", "style", concepts.STYLES, [s.style for s in held_in],
                np.array([s.style == st for s in held_in]))
        for st in concepts.HELD_IN_STYLES
    }  # fmt: skip
    result["attribute_acc"], result["attribute_acc_all"] = {}, {}
    for attr, values in concepts.ATTRIBUTES.items():
        truth = [getattr(s, attr) for s in held_in]
        stated = np.array([v != concepts.DEFAULT_ATTRIBUTES[attr] for v in truth])
        result["attribute_acc"][attr] = (
            acc("held_in", attr, values, truth, stated) if stated.any() else float("nan")
        )
        result["attribute_acc_all"][attr] = acc("held_in", attr, values, truth)
    result["attribute_acc_mean"] = float(np.nanmean(list(result["attribute_acc"].values())))
    ho_c, ho_s = sets["held_out_content"], sets["held_out_style"]
    result["held_out_content_acc"] = acc(
        "held_out_content", "content", concepts.CONTENTS, [s.content for s in ho_c]
    )
    result["held_out_style_acc"] = acc("held_out_style", "style", concepts.STYLES, [s.style for s in ho_s])
    result["held_out_content_pred"] = _top_names(preds["held_out_content"]["content"], concepts.CONTENTS)
    result["held_out_style_pred"] = _top_names(preds["held_out_style"]["style"], concepts.STYLES)
    unseen = sets["unseen_pairs"]
    result["unseen_content_acc"] = acc(
        "unseen_pairs", "content", concepts.CONTENTS, [s.content for s in unseen]
    )
    result["unseen_style_acc"] = acc("unseen_pairs", "style", concepts.STYLES, [s.style for s in unseen])
    p = preds["held_in"]
    for kind, traits, n_codes in (("content", CONTENT_TRAITS, N_CONTENT_CODES),
                                  ("style", STYLE_TRAITS, N_STYLE_CODES)):  # fmt: skip
        if not all(f"{kind}_{t}" in p for t in traits):
            continue
        codes = encode_code(kind, [p[f"{kind}_{t}"] for t in traits])
        # over the prompts whose class has instances (the others have one look)
        hits = [
            int(code) in personal_codes(kind, getattr(s, kind))
            for s, code in zip(held_in, codes, strict=True)
            if has_instances(kind, getattr(s, kind))
        ]
        result[f"personal_{kind}_rate"] = float(np.mean(hits)) / N_PERSONAL if hits else float("nan")
        result[f"chance_{kind}_instance"] = 1.0 / n_codes
    return result


def _top_names(pred: np.ndarray, names: Sequence[str], k: int = 3) -> dict[str, float]:
    counts = np.bincount(pred, minlength=len(names)) / max(1, len(pred))
    return {names[i]: float(counts[i]) for i in np.argsort(-counts)[:k]}
