"""The reference and auxiliary folders of a content-style pair, exported from the world, and the words and scene
attributes of its evaluation prompts: what the demo and the bench both use (numpy + PIL + the world only).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = [
    "AUX_DATA",
    "PROMPT_ATTRIBUTES",
    "PairRefs",
    "content_phrase",
    "export_world_data",
    "prompt_set",
    "style_phrase",
]

PROMPT_ATTRIBUTES: list[dict[str, str]] = [
    {},
    {"position": "left"},
    {"size": "small"},
    {"background": "blue"},
    {"position": "right", "background": "yellow"},
]
"""The scene attributes of the demo's (and the bench's) evaluation prompts, one prompt each."""


@dataclasses.dataclass(frozen=True)
class PairRefs:
    """What a pair's references are exported from (the demo's defaults)."""

    content: str = "teddy#3"
    style: str = "papercut#5"
    content_word: str = "snq"
    style_word: str = "wzk"
    n_content: int = 4
    n_style: int = 3
    aux_styles: list[str] = dataclasses.field(default_factory=lambda: ["stripes", "dots", "checker"])
    aux_contents: list[str] = dataclasses.field(default_factory=lambda: ["car", "house", "fish"])
    seed: int = 0
    aux_data: str = "plain"
    """How the auxiliary folders are made (:data:`AUX_DATA`)."""

    @classmethod
    def of(cls, cfg: Any) -> PairRefs:
        """The fields of ``cfg`` (e.g. the demo's config) that a :class:`PairRefs` has (the others: defaults)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})


AUX_DATA: dict[str, str] = {
    "plain": "each auxiliary style over one drawn content (with n=1 and one seed, the same content in every "
    "folder), captioned without identifiers",
    "official": "as the official B4M scripts: each auxiliary style over a different content, each auxiliary "
    "content a photo, every caption reusing the pair's identifier ('a fish in wzk stripes style', 'a photo of "
    "a snq car')",
}
"""The ways of making MCP's auxiliary folders (``--aux-data``)."""


def class_of(name: str) -> str:
    return name.partition("#")[0]


def content_phrase(cfg: Any) -> str:
    """The content's words in a prompt, identifier first: ``"snq teddy"``."""
    return f"{cfg.content_word} {class_of(cfg.content)}".strip()


def style_phrase(cfg: Any) -> str:
    """The style's words in a prompt: ``"wzk papercut"``."""
    return f"{cfg.style_word} {class_of(cfg.style)}".strip()


def prompt_set(cfg: Any) -> tuple[list[str], list[dict[str, str]]]:
    """The evaluation prompts of a pair (its trigger words and the attribute requests), with their attributes."""
    from b4m.world.render import Scene, caption

    prompts = [caption(Scene.of(cfg.content, cfg.style, **a), content_word=content_phrase(cfg),
                       style_word=style_phrase(cfg)) for a in PROMPT_ATTRIBUTES]  # fmt: skip
    return prompts, [dict(a) for a in PROMPT_ATTRIBUTES]


def data_folders(cfg: Any) -> dict[str, dict[str, Any]]:
    """Every folder exported under ``data/``, with what it is exported from."""
    from b4m.world.concepts import HELD_IN_CONTENTS

    folders: dict[str, dict[str, Any]] = {
        "content": {"content": cfg.content, "n": cfg.n_content, "content_word": content_phrase(cfg)},
        "style": {
            "style": cfg.style,
            "n": cfg.n_style,
            "style_word": style_phrase(cfg),
            # the style references must not show the content being learned (content leakage)
            "contents": [c for c in HELD_IN_CONTENTS if c != class_of(cfg.content)],
        },
    }
    if getattr(cfg, "aux_data", "plain") == "official":
        # distinct contents under the auxiliary styles: neither the target's class nor an auxiliary content
        pool = [c for c in HELD_IN_CONTENTS if c != class_of(cfg.content) and c not in cfg.aux_contents]
        folders |= {f"aux-style-{s}": {"style": s, "n": 1, "contents": [pool[k % len(pool)]],
                                       "style_word": f"{cfg.style_word} {s}".strip()}
                    for k, s in enumerate(cfg.aux_styles)}  # fmt: skip
        folders |= {f"aux-content-{c}": {"content": c, "n": 1, "content_word": f"{cfg.content_word} {c}".strip()}
                    for c in cfg.aux_contents}  # fmt: skip
        return folders
    folders |= {f"aux-style-{s}": {"style": s, "n": 1} for s in cfg.aux_styles}
    folders |= {f"aux-content-{c}": {"content": c, "n": 1} for c in cfg.aux_contents}
    return folders


def export_world_data(cfg: Any, data: Path, fresh: bool = False) -> dict[str, Any]:
    """Export the reference and auxiliary folders of ``cfg`` (a :class:`PairRefs`, or any config with its fields)
    from the world into ``data`` (again only when what they are made from changed, or ``fresh``); returns the
    folders and prompts the methods are given."""
    from b4m.owned import Folder
    from b4m.world.export import export_concept

    Folder(data.parent).child(data.name)
    folders = {}
    for name, kw in data_folders(cfg).items():
        folder = data / name
        want = {"seed": cfg.seed, **kw}
        if fresh or Folder(folder).info.get("demo") != json.loads(json.dumps(want)):
            export_concept(folder, seed=cfg.seed, overwrite=True, **kw)
            Folder(folder).set_info(demo=want)
        Folder(data).child(name)
        folders[name] = folder
    return {
        "content": folders["content"],
        "style": folders["style"],
        "aux_styles": [folders[f"aux-style-{s}"] for s in cfg.aux_styles],
        "aux_contents": [folders[f"aux-content-{c}"] for c in cfg.aux_contents],
        "content_prompt": f"a photo of a {content_phrase(cfg)}",
        "style_prompt": None,  # each style image has its own caption: "a cup in wzk papercut style"
    }
