"""Measuring judges (:func:`evaluate_judges`): accuracy of every head on fresh renders whose seeds training
never uses, clean and under :func:`~b4m.models.judges.augment.perturb`, and the similarity margins of the
identity embeddings."""

from __future__ import annotations

import numpy as np
import torch

from b4m.models.judges.augment import perturb
from b4m.models.judges.data import render_batch, scene_labels, uniform_scene
from b4m.models.judges.network import WorldJudges
from b4m.world.concepts import ATTRIBUTES, CONTENTS, HELD_OUT_CONTENTS, HELD_OUT_STYLES, STYLES
from b4m.world.instances import (
    CONTENT_TRAITS,
    INSTANCE_CONTENTS,
    INSTANCE_STYLES,
    STYLE_TRAITS,
    has_instances,
    personal_codes,
)
from b4m.world.render import Scene

__all__ = ["evaluate_judges"]

_EVAL_SEED_OFFSET = 1_000_000_000  # evaluation seeds never overlap training seeds (< 1e9)


def _eval_scenes(n_per_concept: int, rng: np.random.Generator) -> list[Scene]:
    """``n_per_concept`` scenes per content (random style) and per style (random content); attributes
    uniform, so attribute values are covered evenly too."""
    scenes = []
    for content in CONTENTS:
        extra = 4 if content in INSTANCE_CONTENTS else 1  # instance accuracy needs more than class accuracy
        scenes += [uniform_scene(rng, contents=(content,)) for _ in range(n_per_concept * extra)]
        scenes += [uniform_scene(rng, contents=(content,), personal=True) for _ in range(n_per_concept // 2)]
    for style in STYLES:
        extra = 4 if style in INSTANCE_STYLES else 1
        scenes += [uniform_scene(rng, styles=(style,)) for _ in range(n_per_concept * extra)]
        scenes += [uniform_scene(rng, styles=(style,), personal=True) for _ in range(n_per_concept // 2)]
    return scenes


@torch.no_grad()
def _predict_all(judges: WorldJudges, images: torch.Tensor, chunk: int = 256) -> dict[str, torch.Tensor]:
    preds: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(images), chunk):
        for k, v in judges.classify(images[s : s + chunk]).items():
            preds.setdefault(k, []).append(v.argmax(-1).cpu())
    return {k: torch.cat(v) for k, v in preds.items()}


def _accuracies(preds: dict[str, torch.Tensor], scenes: list[Scene]) -> dict[str, float]:
    labels = scene_labels(scenes)
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
