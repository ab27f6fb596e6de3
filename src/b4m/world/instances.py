"""Instances: the personal subject of a known class ("*my* teddy") and the personal variant of a style.

The paper's and DreamBooth's setting is a personal **instance of a class the base model knows**: the base
composes *teddy bear* with any style, the adapter adds the identity. The world models that with discrete
traits that every render carries:

- a **content instance** is a code of geometric traits that survive every style (styles repaint colours, not
  shapes): ``squeeze`` (none / narrow / short), ``taper`` (none / narrow top / narrow bottom) and ``mark``
  (none / a crest on top / a plinth below / a knob on the right side) -- 36 codes per content class;
- a **style instance** is a code of rendering traits: ``palette`` (4 per style family), ``scale`` (texture
  period, line or layer width: fine / medium / coarse) and ``edge`` (soft, or a bold contour) -- 24 codes per
  style family.

For every class and every style family a fixed, seeded set of :data:`N_PERSONAL` codes is **personal**: base
training never renders them (it draws random *public* codes), so a personal instance is not drawn by prompt
alone, and each one differs from every public code in at least one visible trait. Personal instances are named
``"teddy#3"`` / ``"papercut#5"`` everywhere (CLI, API, benchmark); a bare class name means "random public
instances of the class", as an internet image search would return.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONTENT_TRAITS",
    "N_CONTENT_CODES",
    "N_PERSONAL",
    "N_STYLE_CODES",
    "STYLE_TRAITS",
    "ConceptRef",
    "catalogue",
    "content_traits",
    "parse_concept",
    "personal_codes",
    "public_codes",
    "style_traits",
]

CONTENT_TRAITS: dict[str, tuple[str, ...]] = {
    "squeeze": ("none", "narrow", "short"),
    "taper": ("none", "top", "bottom"),
    "mark": ("none", "crest", "plinth", "knob"),
}
STYLE_TRAITS: dict[str, tuple[str, ...]] = {
    "palette": ("p0", "p1", "p2", "p3"),
    "scale": ("fine", "medium", "coarse"),
    "edge": ("soft", "bold"),
}
N_PERSONAL = 8
"""Personal instances per content class and per style family."""


def _n_codes(traits: dict[str, tuple[str, ...]]) -> int:
    n = 1
    for values in traits.values():
        n *= len(values)
    return n


N_CONTENT_CODES = _n_codes(CONTENT_TRAITS)
N_STYLE_CODES = _n_codes(STYLE_TRAITS)


def _decode(code: int, traits: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Mixed-radix digits of ``code``, first trait most significant: ``{trait: value index}``."""
    n = _n_codes(traits)
    if not 0 <= code < n:
        raise ValueError(f"instance code {code} is out of range 0..{n - 1}")
    out: dict[str, int] = {}
    for name, values in reversed(list(traits.items())):
        code, out[name] = divmod(code, len(values))
    return dict(reversed(list(out.items())))


def content_traits(code: int) -> dict[str, int]:
    """``{"squeeze": i, "taper": j, "mark": k}`` value indices of a content instance code."""
    return _decode(code, CONTENT_TRAITS)


def style_traits(code: int) -> dict[str, int]:
    """``{"palette": i, "scale": j, "edge": k}`` value indices of a style instance code."""
    return _decode(code, STYLE_TRAITS)


def personal_codes(kind: str, name: str) -> tuple[int, ...]:
    """The :data:`N_PERSONAL` personal codes of content class or style family ``name`` (``kind`` is
    ``"content"`` or ``"style"``), seeded by the name, so they never change between runs or machines.
    Code 0 (all traits at their plain value) is always public."""
    n = {"content": N_CONTENT_CODES, "style": N_STYLE_CODES}[kind]
    rng = np.random.default_rng([zlib.crc32(f"{kind}:{name}".encode()), 7])
    return tuple(int(c) + 1 for c in rng.choice(n - 1, size=N_PERSONAL, replace=False))


def public_codes(kind: str, name: str) -> tuple[int, ...]:
    """The codes base training draws from for ``name``: every code that is not personal."""
    n = {"content": N_CONTENT_CODES, "style": N_STYLE_CODES}[kind]
    personal = set(personal_codes(kind, name))
    return tuple(c for c in range(n) if c not in personal)


@dataclass(frozen=True)
class ConceptRef:
    """A content class or style family, optionally one personal instance of it (``index`` into its
    :func:`personal_codes`)."""

    kind: str
    name: str
    index: int | None = None

    @property
    def code(self) -> int | None:
        return None if self.index is None else personal_codes(self.kind, self.name)[self.index]

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}#{self.index}"


def parse_concept(text: str, kind: str) -> ConceptRef:
    """``"teddy"`` or ``"teddy#3"`` -> :class:`ConceptRef`; ``kind`` is ``"content"`` or ``"style"``.

    Raises ``ValueError`` naming the known names (or the valid instance numbers).
    """
    from b4m.world.concepts import CONTENTS, STYLES

    names = CONTENTS if kind == "content" else STYLES
    name, sep, idx = str(text).strip().partition("#")
    if name not in names:
        raise ValueError(f"{kind} {text!r} is not one of {', '.join(names)} (add #0..#{N_PERSONAL - 1} "
                         "for a personal instance)")  # fmt: skip
    if not sep:
        return ConceptRef(kind, name)
    if not idx.isdigit() or not 0 <= int(idx) < N_PERSONAL:
        raise ValueError(f"{kind} {text!r}: the personal instance number must be 0..{N_PERSONAL - 1}")
    return ConceptRef(kind, name, int(idx))


def describe_code(kind: str, code: int) -> str:
    """``"narrow, top taper, crest"`` / ``"palette p2, coarse, bold edge"``: the traits that are not plain."""
    if kind == "content":
        t = content_traits(code)
        words = [CONTENT_TRAITS["squeeze"][t["squeeze"]], CONTENT_TRAITS["taper"][t["taper"]] + " taper",
                 CONTENT_TRAITS["mark"][t["mark"]]]  # fmt: skip
        words = [w for w in words if not w.startswith("none")]
        return ", ".join(words) or "plain"
    t = style_traits(code)
    return (f"palette {STYLE_TRAITS['palette'][t['palette']]}, {STYLE_TRAITS['scale'][t['scale']]}, "
            f"{STYLE_TRAITS['edge'][t['edge']]} edge")  # fmt: skip


def catalogue() -> list[tuple[str, str]]:
    """Every name the world's commands accept, with what it is: each content class and style family (known
    to the base model, or held out as a brand-new class), and each personal instance of the known ones."""
    from b4m.world.concepts import HELD_IN_CONTENTS, HELD_IN_STYLES, HELD_OUT_CONTENTS, HELD_OUT_STYLES

    rows: list[tuple[str, str]] = []
    for kind, known, new in (("content", HELD_IN_CONTENTS, HELD_OUT_CONTENTS),
                             ("style", HELD_IN_STYLES, HELD_OUT_STYLES)):  # fmt: skip
        for name in known:
            rows.append((name, f"{kind} class, known to the base model"))
            for i, code in enumerate(personal_codes(kind, name)):
                rows.append(
                    (f"{name}#{i}", f"personal {kind} instance of {name}: {describe_code(kind, code)}")
                )
        for name in new:
            rows.append((name, f"held-out {kind}: a new class the base model never saw"))
    return rows
