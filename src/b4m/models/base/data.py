"""The base model's data: the world's vocabulary, the rendered training pool (held-in scenes only), caption
fillers, and the pool's latents."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from b4m.models.base.config import BaseModelConfig
from b4m.world import concepts, render
from b4m.world.instances import INSTANCE_CONTENTS, INSTANCE_STYLES, personal_codes

__all__ = [
    "WORD",
    "encode_pool",
    "filler_hook",
    "insert_fillers",
    "render_pool",
    "to_model_range",
    "world_words",
]

WORD = re.compile(r"[a-z0-9]+")
"""A caption word (the tokenizer gives each one its own token)."""


def world_words(n_random: int = 3000, seed: int = 0) -> list[str]:
    """Every word the world's captions use (all contents and styles, held-out ones too, and attributes),
    plus the rare identifier words (:data:`~b4m.world.concepts.IDENTIFIERS`).

    Held-out words and identifiers get tokens as well (as a real encoder knows words it cannot draw); they
    are never trained on, so their embeddings stay at their random initialisation.
    """
    words: set[str] = set()
    texts = [*concepts.CONTENTS, *concepts.STYLES, *concepts.IDENTIFIERS]
    for values in concepts.ATTRIBUTES.values():
        texts.extend(str(v) for v in values)
    texts.extend(str(k) for k in concepts.ATTRIBUTES)
    rng = np.random.default_rng(seed)
    for i in range(n_random):
        scene = render.random_scene(
            rng, contents=concepts.CONTENTS, styles=concepts.STYLES, attribute_prob=1.0 if i % 2 else 0.0
        )
        texts.append(render.caption(scene))
    for text in texts:
        words.update(WORD.findall(str(text).lower().replace("_", " ")))
    return sorted(words)


def _scene_names(scene: Any) -> tuple[str, str]:
    return scene.content, scene.style


def render_pool(
    cfg: BaseModelConfig, n: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, list[str]]:
    """``n`` random held-in scenes rendered to uint8 (n, H, W, 3), with their captions; random *public*
    instances of each class (``cfg.exclude_unseen_pairs``: no pair of ``UNSEEN_PAIRS``).

    Never renders a held-out content or style, an unseen pair or a personal instance (asserted per scene).
    """
    held_out_c, held_out_s = set(concepts.HELD_OUT_CONTENTS), set(concepts.HELD_OUT_STYLES)
    excluded = concepts.UNSEEN_PAIRS if cfg.exclude_unseen_pairs else frozenset()
    rng = np.random.default_rng(seed)
    images = np.empty((n, cfg.resolution, cfg.resolution, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(n), desc="render pool", disable=not progress, mininterval=2):
        focus_c, focus_s = rng.random() < cfg.instance_share, rng.random() < cfg.instance_share
        scene = render.random_scene(
            rng,
            contents=INSTANCE_CONTENTS if focus_c else concepts.HELD_IN_CONTENTS,
            styles=INSTANCE_STYLES if focus_s and not focus_c else concepts.HELD_IN_STYLES,
            attribute_prob=cfg.attribute_prob,
            exclude_pairs=excluded,
        )
        c, s = _scene_names(scene)
        assert c not in held_out_c and s not in held_out_s and (c, s) not in excluded, (
            f"held-out concept or unseen pair in base training data: {c}, {s}"
        )
        seed_i = int(rng.integers(2**31))
        c_code, s_code = scene.codes(seed_i)
        assert c_code not in personal_codes("content", c) and s_code not in personal_codes("style", s)
        images[i] = render.render(scene, seed=seed_i, resolution=cfg.resolution)
        captions.append(render.caption(scene))
    return images, captions


def insert_fillers(
    ids: torch.Tensor, prob: float, max_fillers: int, placeholder: int, eos: int, gen: torch.Generator
) -> torch.Tensor:
    """Caption token ids (B, L) with 1 to ``max_fillers`` ``placeholder`` ids inserted at random positions
    between BOS and EOS in a share ``prob`` of the rows (later tokens shift right; rows without room for
    them are left as they are). See ``BaseModelConfig.filler_prob``."""
    out = ids.clone()
    length = ids.shape[1]
    chosen = torch.rand(len(ids), generator=gen) < prob
    counts = torch.randint(1, max_fillers + 1, (len(ids),), generator=gen)
    for r in torch.nonzero(chosen).flatten().tolist():
        row = ids[r].tolist()
        end = row.index(eos)  # the first EOS closes the caption (padding repeats it)
        k = int(counts[r])
        if end + k >= length:
            continue
        words = row[1:end]
        for _ in range(k):
            at = int(torch.randint(0, len(words) + 1, (1,), generator=gen))
            words.insert(at, placeholder)
        new = [row[0], *words, eos]
        out[r] = torch.tensor(new + [eos] * (length - len(new)))
    return out


def filler_hook(text_encoder: CLIPTextModel, placeholder: int, gen: torch.Generator) -> Any:
    """Replace the embedding of every ``placeholder`` id past position 0 by a fresh draw from the encoder's
    initial token-embedding distribution; returns the hook handle (``.remove()`` it)."""
    std = 0.02 * float(text_encoder.config.initializer_factor)  # CLIPPreTrainedModel's init of token rows

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        mask = inputs[0] == placeholder
        mask[:, 0] = False
        if not mask.any():
            return out
        out = out.clone()
        out[mask] = torch.randn(int(mask.sum()), out.shape[-1], generator=gen).to(out.dtype) * std
        return out

    return text_encoder.get_input_embeddings().register_forward_hook(hook)


def to_model_range(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) as float (B, 3, H, W) in [-1, 1], the autoencoder's range."""
    x = torch.as_tensor(images_u8)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, images: np.ndarray, batch: int = 256, progress: bool = True
) -> torch.Tensor:
    """Posterior mean and std of every pool image, stacked as (n, 2, C, h, w) float16."""
    out = []
    for i in tqdm(range(0, len(images), batch), desc="encode pool", disable=not progress, mininterval=2):
        post = vae.encode(to_model_range(images[i : i + batch])).latent_dist
        out.append(torch.stack([post.mean, post.std], dim=1).half())
    return torch.cat(out)
