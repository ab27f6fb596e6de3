"""Concept names and content geometry of the synthetic world.

The world stands in for "internet images": a *content* is an object identity with a recognisable shape and
part structure (a teddy is a head with two round ears over a body with arms), a *style* is a way of rendering
any content (texture, material, palette, drawing manner), and *attributes* are prompt-controlled properties
that a judge can check on a 32 px image (horizontal position, size, background colour).

Each content is a list of :class:`Part` primitives in a y-down frame of roughly ``[-1, 1]^2``. Parts are painted
in order (later parts cover earlier ones); ``role`` names the colour role a style gives the part:
0 main body, 1 secondary, 2 accent, 3 dark detail (eyes, wheels, windows). ``erase`` parts cut holes.

Every content and style also has instances (:mod:`b4m.world.instances`): the user's own concepts ("my teddy
bear", "my paper cut-out style") are personal instances of known classes, as in the paper. Held-out contents
and styles are never shown to the base model at all; they are the harder "new class" track.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ATTRIBUTES",
    "BACKGROUND_RGB",
    "CONTENTS",
    "CONTENT_COLORS",
    "CONTENT_PARTS",
    "DEFAULT_ATTRIBUTES",
    "HELD_IN_CONTENTS",
    "HELD_IN_STYLES",
    "HELD_OUT_CONTENTS",
    "HELD_OUT_STYLES",
    "IDENTIFIERS",
    "STYLES",
    "UNSEEN_PAIRS",
    "Part",
]


@dataclass(frozen=True)
class Part:
    """One drawing primitive of a content.

    ``kind`` and ``params`` (all in the content's y-down frame):

    - ``"ellipse"``: ``(cx, cy, rx, ry, angle_deg)``
    - ``"rect"``: ``(x0, y0, x1, y1)``
    - ``"poly"``: ``(x0, y0, x1, y1, ...)`` vertices of a simple polygon
    - ``"capsule"``: ``(x0, y0, x1, y1, half_width)`` a thick segment with round ends
    - ``"ring"``: ``(cx, cy, r_outer, r_inner)``

    ``clip`` optionally keeps only points inside the box ``(x0, y0, x1, y1)``.
    """

    kind: str
    role: int
    params: tuple[float, ...]
    clip: tuple[float, float, float, float] | None = None
    erase: bool = False


def _e(role: int, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, clip=None) -> Part:
    return Part("ellipse", role, (cx, cy, rx, ry, angle), clip)


def _c(role: int, cx: float, cy: float, r: float, clip=None) -> Part:
    return Part("ellipse", role, (cx, cy, r, r, 0.0), clip)


def _r(role: int, x0: float, y0: float, x1: float, y1: float) -> Part:
    return Part("rect", role, (x0, y0, x1, y1))


def _p(role: int, *xy: float) -> Part:
    return Part("poly", role, tuple(xy))


def _k(role: int, x0: float, y0: float, x1: float, y1: float, w: float) -> Part:
    return Part("capsule", role, (x0, y0, x1, y1, w))


def _ring(role: int, cx: float, cy: float, ro: float, ri: float, clip=None) -> Part:
    return Part("ring", role, (cx, cy, ro, ri), clip)


def _star(role: int, cx: float, cy: float, r_out: float, r_in: float, n: int = 5) -> Part:
    import math

    pts: list[float] = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = -math.pi / 2 + math.pi * i / n
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return Part("poly", role, tuple(pts))


def _petals(role: int, cx: float, cy: float, dist: float, r: float, n: int) -> list[Part]:
    import math

    return [
        _c(role, cx + dist * math.cos(2 * math.pi * i / n), cy + dist * math.sin(2 * math.pi * i / n), r)
        for i in range(n)
    ]


CONTENT_PARTS: dict[str, tuple[Part, ...]] = {
    "teddy": (
        _c(0, -0.36, -0.72, 0.19),
        _c(0, 0.36, -0.72, 0.19),
        _c(1, -0.36, -0.72, 0.09),
        _c(1, 0.36, -0.72, 0.09),
        _e(0, -0.52, 0.28, 0.17, 0.3, 35),
        _e(0, 0.52, 0.28, 0.17, 0.3, -35),
        _e(0, 0.0, 0.42, 0.5, 0.48),
        _e(1, 0.0, 0.5, 0.28, 0.28),
        _c(0, -0.3, 0.86, 0.17),
        _c(0, 0.3, 0.86, 0.17),
        _c(0, 0.0, -0.36, 0.42),
        _e(1, 0.0, -0.22, 0.19, 0.14),
        _c(3, -0.16, -0.46, 0.065),
        _c(3, 0.16, -0.46, 0.065),
        _c(3, 0.0, -0.27, 0.06),
    ),
    "cup": (
        _ring(0, 0.42, -0.05, 0.38, 0.2),
        _p(0, -0.6, -0.55, 0.45, -0.55, 0.32, 0.6, -0.47, 0.6),
        _e(3, -0.075, -0.55, 0.52, 0.1),
        _r(1, -0.55, -0.2, 0.41, -0.05),
        _e(1, -0.075, 0.68, 0.8, 0.13),
    ),
    "house": (
        _r(1, 0.3, -0.8, 0.52, -0.3),
        _r(0, -0.62, -0.1, 0.62, 0.9),
        _p(1, -0.85, -0.05, 0.85, -0.05, 0.0, -0.82),
        _r(3, -0.14, 0.42, 0.14, 0.9),
        _r(2, -0.5, 0.08, -0.24, 0.32),
        _r(2, 0.24, 0.08, 0.5, 0.32),
    ),
    "tree": (
        _p(1, -0.14, 0.95, 0.14, 0.95, 0.09, 0.1, -0.09, 0.1),
        _k(1, 0.0, 0.35, 0.3, 0.05, 0.06),
        _c(0, 0.0, -0.45, 0.45),
        _c(0, -0.42, -0.05, 0.38),
        _c(0, 0.42, -0.05, 0.38),
        _c(0, 0.0, 0.05, 0.35),
        _c(2, -0.2, -0.35, 0.07),
        _c(2, 0.25, -0.1, 0.07),
    ),
    "fish": (
        _p(1, 0.38, 0.0, 0.95, -0.5, 0.82, 0.0, 0.95, 0.5),
        _p(1, -0.3, -0.25, 0.15, -0.3, -0.05, -0.62),
        _e(0, -0.12, 0.0, 0.62, 0.4),
        _ring(1, -0.35, 0.0, 0.28, 0.22, clip=(-0.2, -0.5, 1.0, 0.5)),
        _p(1, 0.0, 0.15, 0.25, 0.3, 0.0, 0.4),
        _c(2, -0.5, -0.1, 0.1),
        _c(3, -0.5, -0.1, 0.05),
    ),
    "car": (
        _p(0, -0.5, 0.0, -0.3, -0.5, 0.3, -0.5, 0.55, 0.0),
        _p(0, -0.95, 0.05, -0.85, -0.1, 0.9, -0.1, 0.95, 0.05, 0.95, 0.42, -0.95, 0.42),
        _p(2, -0.4, -0.07, -0.25, -0.42, -0.03, -0.42, -0.03, -0.07),
        _p(2, 0.05, -0.07, 0.05, -0.42, 0.25, -0.42, 0.44, -0.07),
        _c(3, -0.55, 0.45, 0.25),
        _c(3, 0.55, 0.45, 0.25),
        _c(2, -0.55, 0.45, 0.1),
        _c(2, 0.55, 0.45, 0.1),
        _r(2, 0.82, 0.05, 0.95, 0.15),
    ),
    "star": (
        _star(0, 0.0, 0.08, 1.0, 0.42),
        _star(1, 0.0, 0.08, 0.42, 0.22),
    ),
    "umbrella": (
        _e(0, 0.0, 0.0, 0.95, 0.8, 0.0, clip=(-1.0, -1.0, 1.0, 0.0)),
        _c(0, -0.63, 0.0, 0.32, clip=(-1.0, -1.0, 1.0, 0.0)),
        _c(0, 0.0, 0.0, 0.32, clip=(-1.0, -1.0, 1.0, 0.0)),
        _c(0, 0.63, 0.0, 0.32, clip=(-1.0, -1.0, 1.0, 0.0)),
        Part("ellipse", 0, (-0.63, 0.02, 0.31, 0.16, 0.0), erase=True),
        Part("ellipse", 0, (0.0, 0.02, 0.31, 0.16, 0.0), erase=True),
        Part("ellipse", 0, (0.63, 0.02, 0.31, 0.16, 0.0), erase=True),
        _p(1, -0.32, -0.12, 0.0, -0.8, 0.32, -0.12),
        _k(3, 0.0, -0.95, 0.0, 0.72, 0.055),
        _ring(3, 0.17, 0.72, 0.22, 0.1, clip=(-1.0, 0.72, 1.0, 1.2)),
    ),
    "key": (
        _ring(0, -0.58, 0.0, 0.4, 0.17),
        _r(0, -0.22, -0.11, 0.95, 0.11),
        _r(0, 0.5, 0.1, 0.64, 0.36),
        _r(0, 0.76, 0.1, 0.9, 0.28),
        _c(1, -0.58, 0.0, 0.17),
        Part("ellipse", 0, (-0.58, 0.0, 0.13, 0.13, 0.0), erase=True),
    ),
    "bottle": (
        _r(1, -0.17, -0.98, 0.17, -0.76),
        _r(0, -0.12, -0.78, 0.12, -0.2),
        _e(0, 0.0, -0.22, 0.36, 0.24),
        _r(0, -0.36, -0.22, 0.36, 0.9),
        _e(0, 0.0, 0.9, 0.36, 0.06),
        _r(2, -0.36, 0.12, 0.36, 0.55),
        _r(1, -0.36, 0.28, 0.36, 0.38),
    ),
    "lamp": (
        _r(3, -0.06, -0.4, 0.06, 0.82),
        _e(0, 0.0, 0.86, 0.48, 0.12),
        _r(0, -0.48, 0.82, 0.48, 0.9),
        _p(1, -0.26, -0.96, 0.26, -0.96, 0.58, -0.32, -0.58, -0.32),
        _c(2, 0.0, -0.25, 0.12),
    ),
    "boat": (
        _r(3, -0.04, -0.95, 0.04, 0.4),
        _p(1, 0.08, -0.9, 0.08, 0.3, 0.78, 0.3),
        _p(2, -0.08, -0.72, -0.08, 0.3, -0.62, 0.3),
        _p(0, -0.98, 0.36, 0.98, 0.36, 0.68, 0.78, -0.68, 0.78),
        _r(2, -0.85, 0.46, 0.85, 0.53),
    ),
    "bird": (
        _p(1, -0.45, 0.0, -0.98, -0.3, -0.98, 0.2, -0.45, 0.3),
        _k(3, -0.05, 0.4, -0.1, 0.82, 0.045),
        _k(3, 0.18, 0.4, 0.18, 0.82, 0.045),
        _e(0, -0.02, 0.1, 0.58, 0.4),
        _c(0, 0.5, -0.38, 0.3),
        _p(2, 0.72, -0.46, 0.72, -0.26, 1.0, -0.33),
        _e(1, -0.12, 0.02, 0.38, 0.2, -18),
        _c(3, 0.6, -0.43, 0.065),
    ),
    "flower": (
        _k(1, 0.0, 0.05, 0.0, 0.98, 0.07),
        _e(1, -0.32, 0.62, 0.3, 0.12, 30),
        _e(1, 0.32, 0.45, 0.3, 0.12, -30),
        *_petals(0, 0.0, -0.38, 0.36, 0.24, 6),
        _c(2, 0.0, -0.38, 0.2),
    ),
    "chair": (
        _r(0, -0.6, -0.98, -0.4, 0.98),
        _r(1, -0.4, -0.9, 0.1, -0.75),
        _r(1, -0.4, -0.55, 0.1, -0.42),
        _r(0, -0.6, 0.0, 0.6, 0.2),
        _r(0, 0.4, 0.2, 0.6, 0.98),
        _r(1, -0.4, 0.55, 0.4, 0.65),
    ),
    "mushroom": (
        _p(1, -0.3, 0.92, 0.3, 0.92, 0.22, -0.1, -0.22, -0.1),
        _e(1, 0.0, 0.92, 0.3, 0.07),
        _e(0, 0.0, 0.0, 0.98, 0.88, 0.0, clip=(-1.0, -1.0, 1.0, 0.0)),
        _e(0, 0.0, 0.0, 0.98, 0.16, 0.0, clip=(-1.0, 0.0, 1.0, 0.2)),
        _c(2, -0.42, -0.38, 0.14),
        _c(2, 0.12, -0.6, 0.12),
        _c(2, 0.5, -0.25, 0.13),
        _c(2, -0.05, -0.2, 0.09),
    ),
    "apple": (
        _c(0, -0.28, 0.12, 0.6),
        _c(0, 0.28, 0.12, 0.6),
        _e(0, 0.0, 0.45, 0.55, 0.4),
        _k(3, 0.0, -0.42, 0.1, -0.88, 0.06),
        _e(1, 0.33, -0.7, 0.28, 0.11, -30),
        _e(2, -0.35, -0.08, 0.1, 0.16, 20),
    ),
    "bell": (
        _ring(3, 0.0, -0.86, 0.15, 0.07),
        _c(0, 0.0, -0.32, 0.46),
        _p(0, -0.46, -0.32, 0.46, -0.32, 0.62, 0.25, 0.82, 0.58, -0.82, 0.58, -0.62, 0.25),
        _c(3, 0.0, 0.78, 0.16),
        _r(1, -0.86, 0.52, 0.86, 0.68),
        _r(2, -0.5, -0.12, 0.5, -0.02),
    ),
    "rocket": (
        _p(1, -0.28, 0.2, -0.62, 0.82, -0.26, 0.68),
        _p(1, 0.28, 0.2, 0.62, 0.82, 0.26, 0.68),
        _p(2, -0.16, 0.68, 0.16, 0.68, 0.0, 1.0),
        _e(0, 0.0, -0.02, 0.32, 0.82),
        _e(1, 0.0, -0.02, 0.32, 0.82, 0.0, clip=(-1.0, -1.0, 1.0, -0.5)),
        _c(3, 0.0, -0.15, 0.14),
        _c(2, 0.0, -0.15, 0.08),
        _r(1, -0.3, 0.42, 0.3, 0.52),
    ),
    "cat": (
        _k(0, 0.38, 0.82, 0.82, 0.2, 0.1),
        _p(0, -0.42, -0.4, -0.08, -0.6, -0.4, -0.98),
        _p(0, 0.42, -0.4, 0.08, -0.6, 0.4, -0.98),
        _p(1, -0.34, -0.52, -0.18, -0.6, -0.35, -0.84),
        _p(1, 0.34, -0.52, 0.18, -0.6, 0.35, -0.84),
        _e(0, 0.0, 0.45, 0.46, 0.52),
        _e(1, 0.0, 0.55, 0.24, 0.34),
        _c(0, 0.0, -0.35, 0.42),
        _e(2, -0.17, -0.4, 0.09, 0.07),
        _e(2, 0.17, -0.4, 0.09, 0.07),
        _e(3, -0.17, -0.4, 0.03, 0.07),
        _e(3, 0.17, -0.4, 0.03, 0.07),
        _p(3, -0.07, -0.24, 0.07, -0.24, 0.0, -0.16),
    ),
    "anchor": (
        _ring(0, 0.0, -0.78, 0.2, 0.09),
        _r(0, -0.08, -0.62, 0.08, 0.8),
        _r(0, -0.48, -0.46, 0.48, -0.32),
        _ring(0, 0.0, 0.12, 0.8, 0.64, clip=(-1.0, 0.12, 1.0, 1.0)),
        _p(0, -0.9, 0.0, -0.6, 0.16, -0.72, 0.32),
        _p(0, 0.9, 0.0, 0.6, 0.16, 0.72, 0.32),
        _c(1, 0.0, -0.39, 0.07),
    ),
    "guitar": (
        _r(1, -0.14, -1.0, 0.14, -0.8),
        _r(1, -0.08, -0.82, 0.08, -0.1),
        _c(0, 0.0, 0.5, 0.5),
        _c(0, 0.0, 0.0, 0.37),
        _c(3, 0.0, 0.18, 0.14),
        _r(3, -0.22, 0.56, 0.22, 0.64),
        _r(2, -0.015, -0.8, 0.015, 0.6),
    ),
}

# Natural colours per role (main, secondary, accent, dark detail), used by "photo" and the colour-keeping styles.
CONTENT_COLORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "teddy": ((0.62, 0.40, 0.2), (0.86, 0.7, 0.5), (0.9, 0.8, 0.6), (0.1, 0.07, 0.05)),
    "cup": ((0.82, 0.22, 0.2), (0.93, 0.85, 0.78), (0.9, 0.9, 0.9), (0.3, 0.16, 0.08)),
    "house": ((0.88, 0.78, 0.55), (0.72, 0.22, 0.16), (0.55, 0.8, 0.95), (0.35, 0.2, 0.12)),
    "tree": ((0.22, 0.62, 0.22), (0.45, 0.28, 0.12), (0.85, 0.2, 0.2), (0.1, 0.25, 0.1)),
    "fish": ((0.98, 0.55, 0.1), (0.95, 0.85, 0.75), (0.98, 0.98, 0.98), (0.05, 0.05, 0.08)),
    "car": ((0.2, 0.4, 0.85), (0.25, 0.3, 0.5), (0.75, 0.88, 0.95), (0.1, 0.1, 0.12)),
    "star": ((0.98, 0.8, 0.15), (0.99, 0.93, 0.55), (1.0, 1.0, 0.8), (0.5, 0.35, 0.05)),
    "umbrella": ((0.85, 0.15, 0.45), (0.98, 0.6, 0.75), (0.9, 0.9, 0.9), (0.2, 0.12, 0.1)),
    "key": ((0.85, 0.7, 0.25), (0.65, 0.5, 0.15), (0.95, 0.9, 0.6), (0.3, 0.25, 0.1)),
    "bottle": ((0.2, 0.6, 0.35), (0.85, 0.2, 0.15), (0.95, 0.92, 0.8), (0.1, 0.2, 0.1)),
    "lamp": ((0.3, 0.3, 0.35), (0.98, 0.82, 0.45), (1.0, 0.98, 0.75), (0.25, 0.25, 0.28)),
    "boat": ((0.55, 0.32, 0.15), (0.97, 0.95, 0.9), (0.85, 0.2, 0.2), (0.3, 0.2, 0.1)),
    "bird": ((0.3, 0.55, 0.9), (0.15, 0.3, 0.65), (0.98, 0.7, 0.1), (0.05, 0.05, 0.05)),
    "flower": ((0.95, 0.4, 0.65), (0.25, 0.6, 0.2), (0.98, 0.85, 0.15), (0.1, 0.3, 0.1)),
    "chair": ((0.6, 0.38, 0.2), (0.75, 0.52, 0.3), (0.8, 0.6, 0.4), (0.3, 0.18, 0.1)),
    "mushroom": ((0.85, 0.15, 0.12), (0.95, 0.9, 0.8), (1.0, 1.0, 0.97), (0.3, 0.2, 0.15)),
    "apple": ((0.85, 0.12, 0.12), (0.3, 0.65, 0.2), (1.0, 0.75, 0.7), (0.35, 0.22, 0.1)),
    "bell": ((0.9, 0.72, 0.2), (0.7, 0.5, 0.12), (1.0, 0.92, 0.6), (0.3, 0.22, 0.08)),
    "rocket": ((0.9, 0.9, 0.92), (0.85, 0.2, 0.2), (1.0, 0.7, 0.1), (0.2, 0.3, 0.5)),
    "cat": ((0.55, 0.55, 0.58), (0.92, 0.85, 0.85), (0.6, 0.85, 0.3), (0.05, 0.05, 0.05)),
    "anchor": ((0.3, 0.35, 0.45), (0.6, 0.65, 0.75), (0.8, 0.8, 0.85), (0.15, 0.15, 0.2)),
    "guitar": ((0.85, 0.5, 0.18), (0.35, 0.2, 0.1), (0.9, 0.85, 0.7), (0.12, 0.08, 0.05)),
}

CONTENTS: tuple[str, ...] = tuple(CONTENT_PARTS)

STYLES: tuple[str, ...] = (
    "photo",
    "flat",
    "outline",
    "stripes",
    "dots",
    "checker",
    "gradient",
    "grain",
    "metal",
    "marble",
    "camo",
    "mosaic",
    "knit",
    "papercut",
    "glass",
    "neon",
    "sticker",
    "wood",
)

HELD_OUT_CONTENTS: tuple[str, ...] = ("mushroom", "umbrella", "anchor", "guitar")
HELD_OUT_STYLES: tuple[str, ...] = ("glass", "neon", "sticker", "wood")
"""The "new class" track: brand-new classes the base model never sees (their words have tokens but are never
trained). Every other class is known to the base model; its *personal instances* (:mod:`b4m.world.instances`)
are the "personal instance" track."""
HELD_IN_CONTENTS: tuple[str, ...] = tuple(c for c in CONTENTS if c not in HELD_OUT_CONTENTS)
HELD_IN_STYLES: tuple[str, ...] = tuple(s for s in STYLES if s not in HELD_OUT_STYLES)

UNSEEN_PAIRS: frozenset[tuple[str, str]] = frozenset(
    [("teddy", s) for s in ("stripes", "checker", "marble", "mosaic", "camo", "metal", "knit")]
    + [("cat", s) for s in ("flat", "dots", "gradient", "grain", "papercut", "mosaic", "metal")]
    + [(c, "papercut") for c in ("cup", "house", "tree", "fish", "car", "star", "key")]
    + [(c, "knit") for c in ("bottle", "lamp", "boat", "bird", "flower", "chair", "apple")]
)
"""Held-in (content, style) pairs that base training never renders (28 of 252, 11 %), to check that the base
composes pairs it never saw. They involve the classes that became known in the fifth session (teddy, cat,
papercut, knit), which no earlier base model saw either, so a base fine-tuned from an earlier one has never
seen them (``benchmarks/base_model.md``)."""

IDENTIFIERS: tuple[str, ...] = ("snq", "wzk", "sks", "ohwx", "zxv", "qlj", "vbk", "pfy")
"""Rare identifier words (DreamBooth's "sks"): single tokens of the built-in tokenizer that base training
never uses, so their embeddings stay untrained. Prompts follow the paper: "a photo of a snq teddy",
"a cup in wzk papercut style"."""

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "position": ("left", "center", "right"),
    "size": ("small", "medium", "large"),
    "background": ("white", "black", "blue", "yellow"),
}
DEFAULT_ATTRIBUTES: dict[str, str] = {"position": "center", "size": "medium", "background": "white"}

BACKGROUND_RGB: dict[str, tuple[float, float, float]] = {
    "white": (0.95, 0.95, 0.93),
    "black": (0.06, 0.06, 0.07),
    "blue": (0.22, 0.42, 0.85),
    "yellow": (0.98, 0.84, 0.22),
}
