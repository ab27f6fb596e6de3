"""Instances: the personal subject of a known class ("*my* teddy") and the personal variant of a style.

The paper's and DreamBooth's setting is a personal **instance of a class the base model knows**: the base
composes *teddy bear* with any style, the adapter adds the identity. The world models that with discrete
traits that every render of an instance class carries:

- a **content instance** is a code of geometric traits that survive every style (styles repaint colours, not
  shapes): ``squeeze`` (none / narrow / short / a taper toward the top) and ``mark`` (none / a crest on top / a
  plinth below / a knob on the right side) -- 16 codes per content class;
- a **style instance** is a code of rendering traits: ``palette`` (4 per style family) and ``finish`` (3 per
  family, :data:`FINISH_NAMES`: papercut's drop shadow raised / flat / deep, knit's contrast yarn striped /
  plain / ribbed) -- 12 codes per style family.

Instances exist for the classes of :data:`INSTANCE_CONTENTS` and :data:`INSTANCE_STYLES` (those the benchmark's
"personal instance" track uses); every other class has one look (code 0), as before. Per instance class, the
:data:`PUBLIC_TRAITS` codes (8 per content class, 4 per style family; together they show every trait value) are
what base training draws;
the other :data:`N_PERSONAL` codes are **personal**: base training never renders them, so a personal instance
is not drawn by prompt alone, and each differs from every public code in at least one visible trait. Personal
instances are named ``"teddy#3"`` / ``"papercut#5"`` everywhere (CLI, API, benchmark); a bare class name
means "random public instances of the class", as an internet image search would return.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CONTENT_TRAITS",
    "FINISH_NAMES",
    "INSTANCE_CONTENTS",
    "INSTANCE_STYLES",
    "N_CONTENT_CODES",
    "N_PERSONAL",
    "N_STYLE_CODES",
    "STYLE_TRAITS",
    "ConceptRef",
    "catalogue",
    "content_traits",
    "describe_code",
    "encode_code",
    "has_instances",
    "learnable_concept_problem",
    "parse_concept",
    "personal_codes",
    "public_codes",
    "style_traits",
]

CONTENT_TRAITS: dict[str, tuple[str, ...]] = {
    "squeeze": ("none", "narrow", "short", "taper"),
    "mark": ("none", "crest", "plinth", "knob"),
}
STYLE_TRAITS: dict[str, tuple[str, ...]] = {
    "palette": ("p0", "p1", "p2", "p3"),
    "finish": ("f0", "f1", "f2"),
}
INSTANCE_CONTENTS: tuple[str, ...] = ("teddy", "cat")
"""Content classes with an instance space (the others always render code 0)."""
INSTANCE_STYLES: tuple[str, ...] = ("papercut", "knit")
"""Style families with an instance space."""
PUBLIC_TRAITS: dict[str, tuple[tuple[int, int], ...]] = {
    # (squeeze, mark) with mark - squeeze = 0 or 1 (mod 4): every squeeze with two marks, every mark with two
    # squeezes
    "content": ((0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 0)),
    "style": ((0, 0), (1, 1), (2, 2), (3, 0)),
}
"""Trait value indices of the public codes. Content: a cyclic band of 8 of the 16 codes in which every trait
value appears with two partners, meant to let base training learn the traits as parts rather than as a few fixed
combinations (what that did, measured: ``benchmarks/base_model.md``). Style: the plain code and a diagonal that
shows every value once. A personal instance is always a new *combination* of values base training knows."""
FINISH_NAMES: dict[str, tuple[str, ...]] = {
    "papercut": ("raised", "flat", "deep"),
    "knit": ("striped", "plain", "ribbed"),
}
"""What the ``finish`` trait means per family: the paper's drop shadow (a halo, none, or a long offset shadow)
or the knit's contrast yarn (every 2nd row, none, or a border along the outline)."""
N_PERSONAL = 8
"""Personal instances per instance class and per instance style family."""


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
    """``{"squeeze": i, "mark": j}`` value indices of a content instance code."""
    return _decode(code, CONTENT_TRAITS)


def style_traits(code: int) -> dict[str, int]:
    """``{"palette": i, "finish": j}`` value indices of a style instance code."""
    return _decode(code, STYLE_TRAITS)


def has_instances(kind: str, name: str) -> bool:
    """Whether content class / style family ``name`` has an instance space (personal instances)."""
    return name in (INSTANCE_CONTENTS if kind == "content" else INSTANCE_STYLES)


def _traits_of(kind: str) -> dict[str, tuple[str, ...]]:
    return CONTENT_TRAITS if kind == "content" else STYLE_TRAITS


def encode_code(kind: str, digits: Sequence[Any]) -> Any:
    """The instance code of trait value indices ``digits`` (in trait order; the inverse of
    :func:`content_traits` / :func:`style_traits`). Digits may be ints or integer arrays (codes of a batch)."""
    code: Any = 0
    for values, d in zip(_traits_of(kind).values(), digits, strict=True):
        code = code * len(values) + d
    return code


def public_codes(kind: str, name: str) -> tuple[int, ...]:
    """The codes base training draws from for ``name``: the :data:`PUBLIC_TRAITS` codes of an instance class,
    ``(0,)`` for any other class."""
    if not has_instances(kind, name):
        return (0,)
    return tuple(sorted(encode_code(kind, d) for d in PUBLIC_TRAITS[kind]))


def personal_codes(kind: str, name: str) -> tuple[int, ...]:
    """The :data:`N_PERSONAL` personal codes of content class or style family ``name`` (``kind`` is
    ``"content"`` or ``"style"``): every code that is not public, in an order seeded by the name (so
    ``teddy#3`` and ``cat#3`` differ, and neither changes between runs or machines). Empty for a class without
    instances."""
    if not has_instances(kind, name):
        return ()
    n = {"content": N_CONTENT_CODES, "style": N_STYLE_CODES}[kind]
    public = set(public_codes(kind, name))
    rest = np.array([c for c in range(n) if c not in public])
    rng = np.random.default_rng([zlib.crc32(f"{kind}:{name}".encode()), 7])
    return tuple(int(c) for c in rng.permutation(rest))


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
    if not has_instances(kind, name):
        with_instances = INSTANCE_CONTENTS if kind == "content" else INSTANCE_STYLES
        raise ValueError(f"{kind} {text!r}: {name} has no personal instances; those that do: "
                         f"{', '.join(f'{n}#0..#{N_PERSONAL - 1}' for n in with_instances)}")  # fmt: skip
    if not idx.isdigit() or not 0 <= int(idx) < N_PERSONAL:
        raise ValueError(f"{kind} {text!r}: the personal instance number must be 0..{N_PERSONAL - 1}")
    return ConceptRef(kind, name, int(idx))


def learnable_concept_problem(text: str, kind: str) -> str | None:
    """Why ``text`` cannot be a concept to *learn*, or ``None`` when it can: it must be a name the world knows
    that the base model cannot already draw -- a personal instance (``"teddy#3"``) or a held-out class. The
    message omits the option name; callers prefix it (``"--content teddy: ..."``)."""
    from b4m.world.concepts import HELD_OUT_CONTENTS, HELD_OUT_STYLES

    try:
        ref = parse_concept(text, kind)
    except ValueError as err:
        return str(err)
    new = HELD_OUT_CONTENTS if kind == "content" else HELD_OUT_STYLES
    if ref.index is None and ref.name not in new:
        names = (
            [ref.name]
            if has_instances(kind, ref.name)
            else INSTANCE_CONTENTS
            if kind == "content"
            else INSTANCE_STYLES
        )
        mine = " or ".join(f"{n}#0..#{N_PERSONAL - 1}" for n in names)
        return (f"the base model already draws {text}; choose a personal instance ({mine}) "
                f"or a held-out {kind}: {', '.join(new)}")  # fmt: skip
    return None


def describe_code(kind: str, code: int, name: str = "") -> str:
    """``"narrow, crest"`` / ``"palette p2, deep"``: a code's traits (``"plain"`` for content code 0); ``name``
    (the style family) words the ``finish`` trait."""
    if kind == "content":
        t = content_traits(code)
        words = [CONTENT_TRAITS[trait][t[trait]] for trait in CONTENT_TRAITS]
        return ", ".join(w for w in words if w != "none") or "plain"
    t = style_traits(code)
    finish = FINISH_NAMES.get(name, STYLE_TRAITS["finish"])[t["finish"]]
    return f"palette {STYLE_TRAITS['palette'][t['palette']]}, {finish}"


def catalogue() -> list[tuple[str, str]]:
    """Every name the world's commands accept, with what it is: each content class and style family (known
    to the base model, or held out as a brand-new class), and each personal instance of the known ones."""
    from b4m.world.concepts import HELD_IN_CONTENTS, HELD_IN_STYLES, HELD_OUT_CONTENTS, HELD_OUT_STYLES

    rows: list[tuple[str, str]] = []
    for kind, known, new in (("content", HELD_IN_CONTENTS, HELD_OUT_CONTENTS),
                             ("style", HELD_IN_STYLES, HELD_OUT_STYLES)):  # fmt: skip
        for name in known:
            public = "; ".join(describe_code(kind, c, name) for c in public_codes(kind, name))
            rows.append((name, f"{kind} class, known to the base model"
                         + (f" (drawn as: {public})" if has_instances(kind, name) else "")))  # fmt: skip
            for i, code in enumerate(personal_codes(kind, name)):
                rows.append(
                    (f"{name}#{i}", f"personal {kind} instance of {name}: {describe_code(kind, code, name)}")
                )
        for name in new:
            rows.append((name, f"held-out {kind}: a new class the base model never saw"))
    return rows
