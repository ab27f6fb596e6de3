"""kohya's ``ss_*`` header fields, filled from what a b4m header knows, so that tools find the trigger words.

A1111's extra-networks panel (and ComfyUI helper nodes, Civitai) read kohya sd-scripts' metadata: the training
tags from ``ss_tag_frequency`` (JSON ``{"<dataset folder>": {"<tag>": count}}``, a tag being one comma-separated
part of an image's caption, counted once per caption), the name from ``ss_output_name``, the base model from
``ss_sd_model_name``, ``ss_resolution``, and a free-text ``ss_training_comment``. b4m writes them from its own
header: the prompts it trained with (a stage-1 adapter's ``prompt`` and ``images`` folder, a fused adapter's
``content``/``style`` parts, a method's ``config``), its ``trigger_words`` and its training ``config``. What b4m
does not record (image counts, the training start time) is left out rather than guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["kohya_fields", "tag_frequency"]

_NO_FOLDER = "b4m"
# (images key, prompt key) pairs in a b4m header's ``config`` (stage 1, stage 2 and the methods' options).
_CONFIG_PAIRS = (("images", "prompt"), ("content_images", "content_prompt"), ("style_images", "style_prompt"))


def _sources(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(dataset name, prompt)`` for every prompt the header records, each pair once, in a stable order."""
    found: list[tuple[Any, Any]] = [(meta.get("images"), meta.get("prompt"))]
    for part in ("content", "style"):
        if isinstance(meta.get(part), Mapping):
            found.append((meta[part].get("images"), meta[part].get("prompt")))
    config = meta.get("config")
    if isinstance(config, Mapping):
        found += [(config.get(i), config.get(p)) for i, p in _CONFIG_PAIRS]
    out: list[tuple[str, str]] = []
    for folder, prompt in found:
        if not isinstance(prompt, str) or not prompt.strip():
            continue
        name = Path(folder).name if isinstance(folder, str) and Path(folder).name else _NO_FOLDER
        if (name, prompt.strip()) not in out:
            out.append((name, prompt.strip()))
    return out


def tag_frequency(meta: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """kohya's ``ss_tag_frequency`` from a b4m header: per dataset folder, every comma-separated part of its
    prompts, with each trigger word as a tag of its own (first, counted once per prompt holding it, so tools that
    sort by count show it first); trigger words no recorded prompt holds go under ``"b4m"``."""
    words = [w for w in meta.get("trigger_words") or [] if isinstance(w, str) and w.strip()]
    groups: dict[str, dict[str, int]] = {}
    placed: set[str] = set()
    for name, prompt in _sources(meta):
        group = groups.setdefault(name, {})
        for word in words:
            if re.search(rf"(?<![\w@#]){re.escape(word)}(?![\w@#])", prompt):
                group[word] = group.get(word, 0) + 1
                placed.add(word)
        for tag in (t.strip() for t in prompt.split(",")):
            if tag:
                group[tag] = group.get(tag, 0) + 1
    rest = [w for w in dict.fromkeys(words) if w not in placed]
    if rest:
        group = groups.setdefault(_NO_FOLDER, {})
        for word in rest:
            group[word] = group.get(word, 0) + 1
    return groups


def kohya_fields(meta: Mapping[str, Any], path: str | Path) -> dict[str, str]:
    """The ``ss_*`` entries (strings, as safetensors headers hold them) a b4m header supports, beyond the network
    fields :func:`~b4m.adapters.codec.save_kohya` always writes."""
    fields = {"ss_output_name": Path(path).stem}
    tags = tag_frequency(meta)
    if tags:
        fields["ss_tag_frequency"] = json.dumps(tags, ensure_ascii=False)
    base = meta.get("base_model")
    if isinstance(base, str) and base:
        fields["ss_sd_model_name"] = base
    config = meta.get("config")
    resolution = meta.get("resolution", config.get("resolution") if isinstance(config, Mapping) else None)
    if isinstance(resolution, int) and not isinstance(resolution, bool) and resolution > 0:
        fields["ss_resolution"] = f"({resolution}, {resolution})"
    words = list(
        dict.fromkeys(w for w in meta.get("trigger_words") or [] if isinstance(w, str) and w.strip())
    )
    made = [f"{k} {meta[k]}" for k in ("method", "role") if isinstance(meta.get(k), str)]
    comment = "made with b4m" + (f" ({', '.join(made)})" if made else "")
    if words:
        comment += "; trigger words: " + ", ".join(words)
    fields["ss_training_comment"] = comment
    return fields
