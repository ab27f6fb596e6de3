"""What ``b4m eval`` reads besides images: prompt files and the world attributes each prompt asks for, and the
concept a reference folder shows (from a world export's ``metadata.jsonl``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from b4m.errors import B4MError

_POSITION = re.compile(r"\b(?:on the (left|right)|in the (center))\b")
_SIZE = re.compile(r",\s*(small|medium|large)\b")
_BACKGROUND = re.compile(r"\bon an? (\w+) background\b")


def prompt_attributes(prompt: str) -> dict[str, str]:
    """The world attributes a prompt asks for, read from the wording of :func:`b4m.world.render.caption`:
    ``"... on the left, small, on a blue background"`` -> ``{"position": "left", "size": "small",
    "background": "blue"}``."""
    from b4m.world.concepts import ATTRIBUTES

    found: dict[str, str] = {}
    if m := _POSITION.search(prompt):
        found["position"] = m.group(1) or m.group(2)
    if m := _SIZE.search(prompt):
        found["size"] = m.group(1)
    if (m := _BACKGROUND.search(prompt)) and m.group(1) in ATTRIBUTES["background"]:
        found["background"] = m.group(1)
    return found


def read_prompts(path: Path, option: str = "--prompts") -> tuple[list[str], list[dict[str, str]]]:
    """Prompts and the attributes each asks for, from a text file (one per line) or a ``.jsonl`` file."""
    from b4m.world.concepts import ATTRIBUTES

    path = Path(path)
    if not path.is_file():
        raise B4MError(f"{option} {path}: no such file; give a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise B4MError(f"{option} {path}: not UTF-8 text; save it as UTF-8") from None
    prompts, attributes = [], []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                prompt, attrs = record["prompt"], dict(record.get("attributes") or {})
            except (ValueError, KeyError, TypeError):
                raise B4MError(
                    f'{option} {path}:{number}: write {{"prompt": "...", "attributes": {{...}}}} on each line'
                ) from None
            bad = [f"{k}={v}" for k, v in attrs.items() if v not in ATTRIBUTES.get(k, ())]
            if bad:
                raise B4MError(
                    f"{option} {path}:{number}: unknown attributes {', '.join(bad)} (known: {ATTRIBUTES})"
                )
        else:
            prompt, attrs = line, prompt_attributes(line)
        prompts.append(str(prompt))
        attributes.append(attrs)
    if not prompts:
        raise B4MError(f"{option} {path}: no prompts in it; write one prompt per line")
    return prompts, attributes


def reference_concept(folder: Path, kind: str) -> str | None:
    """The concept a world export shows (``"teddy#3"``, ``"mushroom"``), from its ``metadata.jsonl``; ``None``
    when the folder has no metadata or shows several (a style folder's contents vary: only its style counts)."""
    from b4m.world.instances import has_instances, personal_codes

    try:
        records = [
            json.loads(line) for line in (Path(folder) / "metadata.jsonl").read_text().splitlines() if line
        ]
        looks = {(r[kind], r.get(f"{kind}_code")) for r in records}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(looks) != 1:
        return None
    name, code = looks.pop()
    if code is None or not has_instances(kind, name):
        return name
    personal = personal_codes(kind, name)
    return f"{name}#{personal.index(code)}" if code in personal else name
