"""Renderer of the synthetic world: ``Scene`` + seed -> an RGB image, and the matching caption.

How an image is made (numpy only, a few hundred microseconds at 32 px):

1. Once per content, the parts of :data:`~b4m.world.concepts.CONTENT_PARTS` are rasterised on a canonical
   ``160 x 160`` grid covering ``[-1.5, 1.5]^2`` (the object's longer side spans ``[-1, 1]``). Per canonical pixel
   we keep the part label, its colour role, the signed distance to the object outline ``sd`` (> 0 outside), the
   distance to the nearest part boundary ``dpart``, and a Lambert shade and specular term of a per-part dome.
2. Per image, a pose (rotation, flip, aspect, scale and position jitter drawn from the seed) maps each pixel of a
   2x supersampled grid back to canonical coordinates; one gather fetches the six canonical channels.
3. The style turns those channels into colour (textures are laid out in object-local coordinates measured in
   pixels of a 32 px image, so a style looks the same at 64 px, only sharper); the result is box-downsampled.

The pose depends on ``(seed, content)`` only, the colours and textures on ``(seed, style)``: changing the style,
position, size or background of a scene keeps the same object pose, which makes paired images easy to build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cache, lru_cache

import numpy as np

from b4m.world.concepts import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    CONTENT_COLORS,
    CONTENT_PARTS,
    CONTENTS,
    DEFAULT_ATTRIBUTES,
    HELD_IN_CONTENTS,
    HELD_IN_STYLES,
    STYLES,
    Part,
)
from b4m.world.instances import (
    CONTENT_TRAITS,
    N_CONTENT_CODES,
    N_STYLE_CODES,
    content_traits,
    has_instances,
    parse_concept,
    public_codes,
    style_traits,
)

__all__ = ["Scene", "caption", "random_scene", "render"]

_CANON = 160  # canonical grid size
_EXTENT = 1.5  # canonical grid covers [-_EXTENT, _EXTENT]^2
_SUPERSAMPLE = 2
_UNIT_RES = 32  # texture sizes are given in pixels of a 32 px image

# Object half-extent (fraction of image width) and horizontal offset of "left"/"right" per size.
_SIZE_RADIUS = {"small": 0.19, "medium": 0.26, "large": 0.33}
_SIZE_OFFSET = {"small": 0.28, "medium": 0.23, "large": 0.17}
_POSITION_SIGN = {"left": -1.0, "center": 0.0, "right": 1.0}


@dataclass(frozen=True)
class Scene:
    """What an image shows: one content drawn in one style, with attribute values.

    Every field is a name from :mod:`b4m.world.concepts`; unknown names raise ``ValueError`` listing the options.
    """

    content: str
    style: str
    position: str = DEFAULT_ATTRIBUTES["position"]
    size: str = DEFAULT_ATTRIBUTES["size"]
    background: str = DEFAULT_ATTRIBUTES["background"]
    content_code: int | None = None
    """Content instance code (:mod:`b4m.world.instances`); None draws a random *public* code from the seed."""
    style_code: int | None = None
    """Style instance code; None draws a random public code from the seed."""

    def __post_init__(self) -> None:
        errors = []
        if self.content not in CONTENTS:
            errors.append(f"content={self.content!r} is not one of {CONTENTS}")
        if self.style not in STYLES:
            errors.append(f"style={self.style!r} is not one of {STYLES}")
        for name, n in (("content_code", N_CONTENT_CODES), ("style_code", N_STYLE_CODES)):
            code = getattr(self, name)
            kind, cls = ("content", self.content) if name == "content_code" else ("style", self.style)
            if code is not None and not has_instances(kind, cls) and code != 0:
                errors.append(f"{name}={code!r}: {cls} has no instances; use None or 0")
            elif code is not None and not (isinstance(code, int) and 0 <= code < n):
                errors.append(f"{name}={code!r} is not None or an int in 0..{n - 1}")
        for name, values in ATTRIBUTES.items():
            if getattr(self, name) not in values:
                errors.append(f"{name}={getattr(self, name)!r} is not one of {values}")
        if errors:
            raise ValueError("invalid Scene: " + "; ".join(errors))

    def as_dict(self) -> dict[str, str | int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, content: str, style: str, **attributes: str) -> Scene:
        """A scene from concept names that may name personal instances: ``Scene.of("teddy#3", "papercut#5")``."""
        c, st = parse_concept(content, "content"), parse_concept(style, "style")
        return cls(c.name, st.name, content_code=c.code, style_code=st.code, **attributes)

    def codes(self, seed: int) -> tuple[int, int]:
        """The (content, style) instance codes this scene renders with ``seed``."""
        return _instance_code("content", self, seed), _instance_code("style", self, seed)


# ----------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption(scene: Scene, content_word: str | None = None, style_word: str | None = None) -> str:
    """The prompt describing ``scene``.

    ``"a teddy in stripes style on the left, small, on a blue background"``; style ``photo`` reads
    ``"a photo of a teddy"``. Attributes at their default value are omitted. ``content_word`` and ``style_word``
    replace the concept names, e.g. with trigger words (``"snq teddy"``, ``"wzk papercut"``).
    """
    content = content_word if content_word is not None else scene.content
    if scene.style == "photo" and style_word is None:
        text = f"a photo of {_article(content)} {content}"
    else:
        style = style_word if style_word is not None else scene.style
        text = f"{_article(content)} {content} in {style} style"
    if scene.position != DEFAULT_ATTRIBUTES["position"]:
        text += " in the center" if scene.position == "center" else f" on the {scene.position}"
    if scene.size != DEFAULT_ATTRIBUTES["size"]:
        text += f", {scene.size}"
    if scene.background != DEFAULT_ATTRIBUTES["background"]:
        text += f", on {_article(scene.background)} {scene.background} background"
    return text


def random_scene(
    rng: np.random.Generator,
    contents: tuple[str, ...] = HELD_IN_CONTENTS,
    styles: tuple[str, ...] = HELD_IN_STYLES,
    attribute_prob: float = 0.5,
    exclude_pairs: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
) -> Scene:
    """A scene with a uniform content and style (a pair in ``exclude_pairs`` is drawn again); each attribute
    takes a random non-default value with probability ``attribute_prob`` and its default otherwise. Instance
    codes stay None: the render draws random public instances."""
    while True:
        values = {
            "content": contents[int(rng.integers(len(contents)))],
            "style": styles[int(rng.integers(len(styles)))],
        }
        if (values["content"], values["style"]) not in exclude_pairs:
            break
    for name, options in ATTRIBUTES.items():
        if rng.random() < attribute_prob:
            others = [v for v in options if v != DEFAULT_ATTRIBUTES[name]]
            values[name] = others[int(rng.integers(len(others)))]
        else:
            values[name] = DEFAULT_ATTRIBUTES[name]
    return Scene(**values)


# ----------------------------------------------------------------------------------------------- canonical maps


def _part_mask(part: Part, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = part.params
    if part.kind == "ellipse":
        cx, cy, rx, ry, angle = p
        a = math.radians(angle)
        dx, dy = x - cx, y - cy
        xr = dx * math.cos(a) + dy * math.sin(a)
        yr = -dx * math.sin(a) + dy * math.cos(a)
        mask = (xr / rx) ** 2 + (yr / ry) ** 2 <= 1.0
    elif part.kind == "rect":
        x0, y0, x1, y1 = p
        mask = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    elif part.kind == "poly":
        xs, ys = np.asarray(p[0::2]), np.asarray(p[1::2])
        mask = np.zeros(x.shape, dtype=bool)
        for i in range(len(xs)):
            xa, ya, xb, yb = xs[i], ys[i], xs[i - 1], ys[i - 1]
            if ya == yb:
                continue
            crosses = (ya > y) != (yb > y)
            x_at = xa + (y - ya) * (xb - xa) / (yb - ya)
            mask ^= crosses & (x < x_at)
    elif part.kind == "capsule":
        x0, y0, x1, y1, w = p
        vx, vy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * vx + (y - y0) * vy) / max(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
        mask = (x - x0 - t * vx) ** 2 + (y - y0 - t * vy) ** 2 <= w * w
    elif part.kind == "ring":
        cx, cy, ro, ri = p
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        mask = (d2 <= ro * ro) & (d2 >= ri * ri)
    else:
        raise ValueError(f"unknown Part kind {part.kind!r}; expected ellipse, rect, poly, capsule or ring")
    if part.clip is not None:
        x0, y0, x1, y1 = part.clip
        mask &= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return mask


def _rasterize(parts: tuple[Part, ...], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    labels = np.zeros(x.shape, dtype=np.int32)
    for i, part in enumerate(parts):
        labels[_part_mask(part, x, y)] = 0 if part.erase else i + 1
    return labels


def _nearest_distance(points: np.ndarray, targets: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distance from each point (N, 2) to the nearest target (M, 2), brute force in chunks."""
    if len(targets) == 0:
        return np.full(len(points), np.inf)
    out = np.empty(len(points))
    t2 = (targets**2).sum(-1)[None, :]
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        d2 = (p**2).sum(-1)[:, None] + t2 - 2.0 * (p @ targets.T)
        out[s : s + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def _neighbour_differs(labels: np.ndarray) -> np.ndarray:
    pad = np.pad(labels, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    return (pad[:-2, 1:-1] != c) | (pad[2:, 1:-1] != c) | (pad[1:-1, :-2] != c) | (pad[1:-1, 2:] != c)


def _add_mark(labels: np.ndarray, gx: np.ndarray, gy: np.ndarray, mark: str, n_parts: int) -> np.ndarray:
    """Add a content instance's ``mark`` (:data:`~b4m.world.instances.CONTENT_TRAITS`) as one more part in
    the normalised frame (the object spans [-1, 1] on its longer side): a crest standing on the object's top,
    a plinth under its bottom, or a knob on its right side. Marks change the silhouette, so that styles that
    repaint the inside (papercut layers, neon lines) keep them."""
    if mark == "none":
        return labels
    inside = labels > 0
    ys, xs = np.nonzero(inside)
    ox, oy = gx[ys, xs], gy[ys, xs]
    if mark == "crest":
        top = oy.min()
        x_top = ox[oy < top + 0.1].mean()
        h, w = 0.5, 0.5
        t = (gy - (top - h)) / h  # 0 at the apex, 1 at the object's top
        mask = (t >= 0) & (t <= 1.2) & (np.abs(gx - x_top) <= w * np.clip(t, 0, 1))
    elif mark == "plinth":
        bottom = oy.max()
        low = ox[oy > bottom - 0.15]
        mask = (gy > bottom - 0.05) & (gy < bottom + 0.2) & (gx > low.min() - 0.2) & (gx < low.max() + 0.2)
    elif mark == "knob":
        right, my = ox.max(), oy.mean()
        mask = (gx - (right + 0.1)) ** 2 + (gy - my) ** 2 < 0.28**2
    else:
        raise ValueError(f"unknown mark {mark!r}")
    out = labels.copy()
    out[mask & ~inside] = n_parts + 1
    return out


_MARK_ROLE = {"crest": 1, "plinth": 3, "knob": 2}


@cache
def _canonical(content: str, mark: int = 0) -> np.ndarray:
    """Canonical channels of a content with instance mark ``mark`` (an index into the ``mark`` trait), shape
    (_CANON * _CANON + 1, 6) float32: label, role, sd, dpart, shade, specular. The extra last row is "far
    outside" for out-of-grid lookups."""
    parts = CONTENT_PARTS[content]
    mark_name = CONTENT_TRAITS["mark"][mark]
    probe = np.linspace(-1.4, 1.4, 281)
    px, py = np.meshgrid(probe, probe)
    inside = _rasterize(parts, px, py) > 0
    ys, xs = np.nonzero(inside)
    x0, x1, y0, y1 = probe[xs.min()], probe[xs.max()], probe[ys.min()], probe[ys.max()]
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2

    step = 2 * _EXTENT / _CANON
    grid = -_EXTENT + step * (np.arange(_CANON) + 0.5)
    gx, gy = np.meshgrid(grid, grid)
    labels = _add_mark(_rasterize(parts, cx + gx * half, cy + gy * half), gx, gy, mark_name, len(parts))
    inside = labels > 0
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)

    boundary = _neighbour_differs(inside.astype(np.int32))
    in_flat, bnd_flat = inside.ravel(), boundary.ravel()
    sd = np.empty(_CANON * _CANON)
    sd[in_flat] = -(_nearest_distance(coords[in_flat], coords[bnd_flat & ~in_flat]) - step / 2)
    sd[~in_flat] = _nearest_distance(coords[~in_flat], coords[bnd_flat & in_flat]) - step / 2
    sd = sd.reshape(_CANON, _CANON)

    # Distance to the nearest pixel of another part (or the outside), for part lines and per-part domes.
    part_bnd = _neighbour_differs(labels).ravel()
    dpart = np.full(_CANON * _CANON, 10.0)
    lab_flat = labels.ravel()
    for lab in np.unique(lab_flat[in_flat]):
        own = lab_flat == lab
        dpart[own] = _nearest_distance(coords[own], coords[part_bnd & ~own]) - step / 2
    dpart = dpart.reshape(_CANON, _CANON)

    # Dome height: quarter-circle profile per part plus a broader dome over the whole object.
    def dome(d: np.ndarray, w: float) -> np.ndarray:
        t = np.clip(d / w, 0.0, 1.0)
        return w * np.sqrt(1.0 - (1.0 - t) ** 2)

    height = np.where(inside, 0.6 * dome(dpart, 0.3) + 0.4 * dome(-sd, 0.7), 0.0)
    hy, hx = np.gradient(height, step)
    normal = np.stack([-hx, -hy, np.ones_like(height)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.45, -0.55, 0.7])
    light /= np.linalg.norm(light)
    lam = np.clip(normal @ light, 0.0, None) / light[2]
    half_vec = light + np.array([0.0, 0.0, 1.0])
    half_vec /= np.linalg.norm(half_vec)
    spec = np.clip(normal @ half_vec, 0.0, None) ** 40

    roles = np.array([0] + [p.role for p in parts] + [_MARK_ROLE.get(mark_name, 0)], dtype=np.float32)
    table = np.stack([labels, roles[labels], sd, dpart, np.clip(lam, 0.25, 1.35), spec * inside], axis=-1)
    table = table.reshape(-1, 6).astype(np.float32)
    far = np.array([[0, 0, 1.0, 10.0, 1.0, 0.0]], dtype=np.float32)
    return np.concatenate([table, far], axis=0)


@lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    return ((np.arange(size) + 0.5) / size).astype(np.float32)


@lru_cache(maxsize=8)
def _interp_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) linear interpolation weights, used to upsample small random grids into smooth fields."""
    pos = (np.arange(size) + 0.5) / size * (knots - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, knots - 2)
    frac = pos - lo
    m = np.zeros((size, knots), dtype=np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


# ----------------------------------------------------------------------------------------------- per-image context


@dataclass
class _Pose:
    cx: float
    cy: float
    radius: float
    angle: float
    flip: float
    aspect: float


def _instance_code(kind: str, scene: Scene, seed: int) -> int:
    """The scene's content or style instance code: the one it names, else a public one drawn from the seed."""
    name, code = (scene.content, scene.content_code) if kind == "content" else (scene.style, scene.style_code)
    if code is not None:
        return code
    public = public_codes(kind, name)
    index = CONTENTS.index(name) if kind == "content" else STYLES.index(name)
    salt = 13 if kind == "content" else 29  # the streams the two draws have always used
    return public[int(np.random.default_rng([seed, index, salt]).integers(len(public)))]


_SQUEEZE = {"none": (1.0, 1.0), "narrow": (0.6, 1.0), "short": (1.0, 0.6), "taper": (1.0, 1.0)}
"""Width and height factors of the ``squeeze`` trait (objects only ever shrink, so they stay in frame)."""
_TAPER_TOP = 0.4
"""Width factor of a tapered object at its top (1 at its bottom, linear in between)."""
_KNIT_RIB = 1.2
"""Width (px of a 32 px image) of the contrast border of a ribbed knit."""
_PAPER_SHADOW = ((0.35, 0.0), (0.0, 0.0), (0.5, 2.2))
"""Papercut ``finish``: (strength, offset in px) of the drop shadow: raised, flat, deep."""
_PAPER_GLOW = 0.6
"""Tone the papercut shadow blends a dark card (mean below :data:`_DARK_BG`) toward: a darkening multiplier
changes a black card by at most 6/255, so on dark cards the raised paper's rim catches the light instead, and the
finish stays visible on every background."""
_DARK_BG = 0.25


def _pose(scene: Scene, seed: int) -> _Pose:
    rng = np.random.default_rng([seed, CONTENTS.index(scene.content), 11])
    angle = math.radians(rng.uniform(-12.0, 12.0))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    aspect = rng.uniform(0.92, 1.08)
    scale = rng.uniform(0.94, 1.06)
    jx, jy = rng.uniform(-0.02, 0.02), rng.uniform(-0.04, 0.04)
    cx = 0.5 + _POSITION_SIGN[scene.position] * _SIZE_OFFSET[scene.size] + jx
    return _Pose(cx, 0.5 + jy, _SIZE_RADIUS[scene.size] * scale, angle, flip, aspect)


class _Ctx:
    """Per-pixel channels of one supersampled image, as (S, S) arrays."""

    def __init__(self, scene: Scene, seed: int, resolution: int) -> None:
        self.res = resolution
        self.size = resolution * _SUPERSAMPLE
        self.pose = _pose(scene, seed)
        self.rng = np.random.default_rng([seed, STYLES.index(scene.style), 23])
        ctraits = content_traits(_instance_code("content", scene, seed))
        straits = style_traits(_instance_code("style", scene, seed))
        squeeze = CONTENT_TRAITS["squeeze"][ctraits["squeeze"]]
        self.squeeze = _SQUEEZE[squeeze]
        self.taper = squeeze == "taper"
        # a family without instances keeps its one look: a palette drawn per image, the first finish
        own_look = not has_instances("style", scene.style)
        self.palette = None if own_look else straits["palette"]
        self.finish = 0 if own_look else straits["finish"]
        self.canon = _canonical(scene.content, ctraits["mark"])
        label, role, sd, dpart, shade, spec, u, v = self.sample(0.0, 0.0)
        self.inside = label > 0.5
        self.role = role.astype(np.int64)
        unit = self.pose.radius * _UNIT_RES  # canonical unit -> pixels of a 32 px image
        self.sd = sd * unit
        self.dpart = dpart * unit
        self.shade = shade
        self.spec = spec
        self.tu = u * unit
        self.tv = v * unit
        self.v = v
        bg = np.array(BACKGROUND_RGB[scene.background], dtype=np.float32)
        bg = np.clip(bg + self.rng.uniform(-0.02, 0.02, 3), 0.0, 1.0).astype(np.float32)
        self.bg_rgb = bg
        ramp = 1.0 + 0.05 * (0.5 - _grid(self.size))[:, None, None]
        self.bg = np.clip(bg[None, None, :] * ramp, 0.0, 1.0) * np.ones((1, self.size, 1), np.float32)
        base = np.array(CONTENT_COLORS[scene.content], dtype=np.float32)
        self.natural = np.clip(
            base * self.rng.uniform(0.9, 1.1, (1, 3)) + self.rng.uniform(-0.04, 0.04), 0, 1
        )

    def sample(self, ox: float, oy: float) -> list[np.ndarray]:
        """Canonical channels at pixel centres shifted by (ox, oy) pixels of a 32 px image."""
        p = self.pose
        g = _grid(self.size)
        dx = g - p.cx - ox / _UNIT_RES
        dy = g - p.cy - oy / _UNIT_RES
        c, s = math.cos(p.angle), math.sin(p.angle)
        u = (dx[None, :] * c + dy[:, None] * s) * (p.flip / (p.radius * p.aspect))
        v = (dy[:, None] * c - dx[None, :] * s) * (p.aspect / p.radius)
        # The instance's shape (squeeze): canonical coordinates of the squeezed object's pixels.
        sx, sy = self.squeeze
        u, v = u / sx, v / sy
        if self.taper:  # v runs from -1 (top) to 1 (bottom) over the object
            u = u / (_TAPER_TOP + (1 - _TAPER_TOP) * np.clip((v + 1) / 2, 0.0, 1.0))
        scale = _CANON / (2 * _EXTENT)
        j = np.floor((u + _EXTENT) * scale).astype(np.int64)
        i = np.floor((v + _EXTENT) * scale).astype(np.int64)
        outside = (i < 0) | (i >= _CANON) | (j < 0) | (j >= _CANON)
        idx = np.where(outside, _CANON * _CANON, i * _CANON + j)
        vals = self.canon[idx]
        return [vals[..., k] for k in range(6)] + [u, v]

    def field(self, knots: int) -> np.ndarray:
        """A smooth random field in about [-1, 1], with ``knots`` control points per side."""
        m = _interp_matrix(self.size, knots)
        return m @ self.rng.standard_normal((knots, knots)).astype(np.float32) @ m.T * 0.8

    def structure(self, rgb: np.ndarray, lines: float = 0.6) -> np.ndarray:
        """Keep the content's part structure visible under a texture: darker secondary parts, dark details,
        mild shading and darkened part boundaries."""
        factor = np.array([1.0, 0.78, 1.12, 0.32], dtype=np.float32)[self.role]
        factor = factor * (0.82 + 0.18 * self.shade)
        factor = np.where(self.inside & (self.dpart < 0.45), factor * lines, factor)
        return rgb * factor[..., None]

    def compose(self, obj: np.ndarray, bg: np.ndarray | None = None) -> np.ndarray:
        return np.where(self.inside[..., None], obj, self.bg if bg is None else bg)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).mean())


def _guard(colors: np.ndarray, bg: np.ndarray, min_dist: float = 0.2) -> np.ndarray:
    """Darken or lighten colours that would vanish into the background."""
    out = colors.copy()
    bright = float(bg.mean()) > 0.5
    for k in range(len(out)):
        if _distance(out[k], bg) < min_dist:
            out[k] = out[k] * 0.55 if bright else out[k] + (1.0 - out[k]) * 0.55
    return out


def _pick(ctx: _Ctx, palettes: tuple[tuple[tuple[float, float, float], ...], ...]) -> np.ndarray:
    """The style instance's palette (its main colour kept apart from the background); for a family without
    instances, a random palette whose first two colours both stand out from the background."""
    if ctx.palette is not None:
        pal = np.array(palettes[ctx.palette], dtype=np.float32)
        pal[:1] = _guard(pal[:1], ctx.bg_rgb, 0.22)
        return pal
    ok = [p for p in palettes if _distance(p[0], ctx.bg_rgb) > 0.25 and _distance(p[1], ctx.bg_rgb) > 0.18]
    choices = ok or list(palettes)
    return np.array(choices[int(ctx.rng.integers(len(choices)))], dtype=np.float32)


def _saturate(colors: np.ndarray, amount: float) -> np.ndarray:
    grey = colors.mean(axis=-1, keepdims=True)
    return np.clip(grey + (colors - grey) * amount, 0.0, 1.0)


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.3, 0.59, 0.11], dtype=np.float32)


# ----------------------------------------------------------------------------------------------- styles


def _photo(ctx: _Ctx) -> np.ndarray:
    colors = _guard(ctx.natural, ctx.bg_rgb, 0.15)
    obj = colors[ctx.role] * ctx.shade[..., None] + 0.4 * ctx.spec[..., None]
    shadow_sd = ctx.sample(1.2, 1.6)[2] * ctx.pose.radius * _UNIT_RES
    shadow = 0.32 * np.clip(1.0 - shadow_sd / 2.2, 0.0, 1.0)
    return ctx.compose(obj, ctx.bg * (1.0 - shadow[..., None]))


def _flat(ctx: _Ctx) -> np.ndarray:
    colors = _guard(0.25 + 0.75 * _saturate(ctx.natural, 1.6), ctx.bg_rgb)
    obj = colors[ctx.role]
    obj = np.where((ctx.dpart < 0.45)[..., None], np.float32(0.08), obj)
    return ctx.compose(obj)


def _outline(ctx: _Ctx) -> np.ndarray:
    ink = np.float32(0.1) if ctx.bg_rgb.mean() > 0.4 else np.float32(0.95)
    lines = (ctx.dpart < 0.75) | (ctx.role == 3)
    obj = np.where(lines[..., None], ink, ctx.bg)
    return ctx.compose(obj)


_STRIPE_PALETTES = (
    ((0.85, 0.15, 0.15), (0.97, 0.97, 0.95)),
    ((0.1, 0.15, 0.45), (0.98, 0.85, 0.2)),
    ((0.15, 0.55, 0.3), (0.98, 0.6, 0.7)),
)


def _stripes(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _STRIPE_PALETTES)
    a = math.radians(45.0 + ctx.rng.uniform(-8, 8))
    s = (ctx.tu * math.cos(a) + ctx.tv * math.sin(a)) / 4.0 + ctx.rng.random()
    obj = np.where(((s % 1.0) < 0.5)[..., None], pal[0], pal[1])
    return ctx.compose(ctx.structure(obj))


_DOT_PALETTES = (
    ((0.9, 0.2, 0.3), (0.98, 0.96, 0.9)),
    ((0.15, 0.3, 0.7), (0.98, 0.98, 0.98)),
    ((0.98, 0.8, 0.2), (0.1, 0.1, 0.1)),
    ((0.2, 0.65, 0.6), (0.99, 0.85, 0.3)),
)


def _dots(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _DOT_PALETTES)
    period = 4.6
    gx = ctx.tu / period + ctx.rng.random()
    gy = ctx.tv / (period * 0.866) + ctx.rng.random()
    row = np.floor(gy)
    fx = (gx + 0.5 * (row % 2)) % 1.0 - 0.5
    fy = gy % 1.0 - 0.5
    dot = (fx * period) ** 2 + (fy * period * 0.866) ** 2 < 1.35**2
    obj = np.where(dot[..., None], pal[1], pal[0])
    return ctx.compose(ctx.structure(obj))


_CHECKER_PALETTES = (
    ((0.1, 0.1, 0.1), (0.95, 0.95, 0.95)),
    ((0.95, 0.5, 0.1), (0.1, 0.35, 0.4)),
    ((0.4, 0.15, 0.55), (0.85, 0.75, 0.95)),
)


def _checker(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _CHECKER_PALETTES)
    period = 3.6
    cell = (np.floor(ctx.tu / period + ctx.rng.random()) + np.floor(ctx.tv / period + ctx.rng.random())) % 2
    obj = np.where((cell < 0.5)[..., None], pal[0], pal[1])
    return ctx.compose(ctx.structure(obj))


_GRADIENT_PALETTES = (
    ((0.95, 0.2, 0.65), (1.0, 0.65, 0.1)),
    ((0.3, 0.1, 0.75), (0.1, 0.9, 0.85)),
    ((0.1, 0.35, 0.95), (0.95, 0.3, 0.8)),
)


def _gradient(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _GRADIENT_PALETTES)
    t = np.clip((ctx.v + 1.0) / 2.0, 0.0, 1.0)[..., None]
    obj = pal[0] * (1 - t) + pal[1] * t
    return ctx.compose(ctx.structure(obj, lines=0.75))


def _grain(ctx: _Ctx) -> np.ndarray:
    lum = _lum(ctx.natural)[ctx.role] * ctx.shade
    lum = 0.15 + 0.75 * lum
    sepia = np.stack([lum * 1.08 + 0.05, lum * 0.9 + 0.03, lum * 0.65], axis=-1)
    noise = ctx.rng.normal(0.0, 0.24, (ctx.size, ctx.size, 1)).astype(np.float32)
    obj = sepia + noise
    bg = ctx.bg + ctx.rng.normal(0.0, 0.05, (ctx.size, ctx.size, 1)).astype(np.float32)
    return ctx.compose(obj, bg)


def _metal(ctx: _Ctx) -> np.ndarray:
    t = ctx.v * 0.8 + 0.9 * (1.0 - ctx.shade) - 0.15
    horizon = 0.05 + 0.1 * np.sin(ctx.tu * 0.4)
    sky = np.array([0.55, 0.68, 0.85], np.float32) + (np.clip(t + 1.0, 0, 1)[..., None]) * np.array(
        [0.4, 0.3, 0.15], np.float32
    )
    ground = np.array([0.2, 0.19, 0.2], np.float32) + (np.clip(t - horizon, 0, 1)[..., None]) * np.array(
        [0.45, 0.42, 0.4], np.float32
    )
    obj = np.where((t < horizon)[..., None], sky, ground) + ctx.spec[..., None] * 0.8
    obj = np.where((ctx.inside & (ctx.dpart < 0.4))[..., None], obj * 0.55, obj)
    return ctx.compose(obj)


_MARBLE_PALETTES = (
    ((0.93, 0.92, 0.88), (0.25, 0.26, 0.3)),
    ((0.3, 0.55, 0.45), (0.92, 0.95, 0.9)),
    ((0.95, 0.85, 0.82), (0.5, 0.22, 0.25)),
)


def _marble(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _MARBLE_PALETTES)
    n = ctx.field(5)
    s = np.sin(2 * math.pi * (ctx.tu * 0.1 + ctx.tv * 0.05 + 0.9 * n + ctx.rng.random()))
    vein = np.clip(1.0 - np.abs(s) * 2.5, 0.0, 1.0)[..., None]
    base = pal[0] * (0.92 + 0.08 * n[..., None])
    obj = base * (1 - vein) + pal[1] * vein
    return ctx.compose(ctx.structure(obj, lines=0.8))


_CAMO = np.array([[0.42, 0.45, 0.24], [0.18, 0.25, 0.12], [0.45, 0.32, 0.2], [0.72, 0.66, 0.46]], np.float32)


def _camo(ctx: _Ctx) -> np.ndarray:
    a, b = ctx.field(8), ctx.field(7)
    idx = (a > 0.0).astype(np.int64) + 2 * (b > 0.25)
    obj = _CAMO[idx]
    return ctx.compose(ctx.structure(obj, lines=0.7))


_MOSAIC = np.array(
    [[0.1, 0.35, 0.75], [0.1, 0.65, 0.65], [0.95, 0.93, 0.85], [0.9, 0.65, 0.15], [0.75, 0.2, 0.2]],
    np.float32,
)


def _mosaic(ctx: _Ctx) -> np.ndarray:
    period = 3.3
    gu, gv = ctx.tu / period + 50.0, ctx.tv / period + 50.0
    i, j = np.floor(gu).astype(np.int64), np.floor(gv).astype(np.int64)
    off = int(ctx.rng.integers(1000))
    tile = _MOSAIC[((i * 92821 + j * 68917 + off) % 1009) % len(_MOSAIC)]
    grout = ((gu % 1.0) < 0.24) | ((gv % 1.0) < 0.24)
    obj = np.where(grout[..., None], np.float32(0.3), tile)
    return ctx.compose(ctx.structure(obj, lines=0.8))


_KNIT_PALETTES = (
    ((0.75, 0.12, 0.15), (0.95, 0.9, 0.8)),
    ((0.15, 0.25, 0.55), (0.95, 0.95, 0.95)),
    ((0.5, 0.2, 0.55), (0.95, 0.82, 0.35)),
    ((0.2, 0.5, 0.3), (0.95, 0.95, 0.85)),
)


def _knit(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _KNIT_PALETTES)
    w, h = 3.0, 2.6
    lx = (ctx.tu / w) % 1.0 - 0.5
    ly = (ctx.tv / h) % 1.0
    stitch = 0.6 + 0.4 * np.cos(2 * math.pi * (ly - 1.3 * np.abs(lx)))
    stitch = stitch * np.where(np.abs(lx) > 0.42, 0.7, 1.0)
    row = np.floor(ctx.tv / h).astype(np.int64)
    # finish: contrast rows every 2nd row (striped), none (plain), or a contrast border along the outline
    # (ribbed, like a cuff), which shows on thin objects too
    if ctx.finish == 0:
        band = (row % 2) == 0
    elif ctx.finish == 1:
        band = np.zeros_like(row, dtype=bool)
    else:
        band = ctx.sd > -_KNIT_RIB
    obj = np.where(band[..., None], pal[1], pal[0]) * stitch[..., None]
    obj = obj + ctx.rng.normal(0, 0.04, (ctx.size, ctx.size, 1)).astype(np.float32)
    return ctx.compose(ctx.structure(obj, lines=0.75))


_PAPER_PALETTES = (
    ((0.95, 0.55, 0.5), (0.98, 0.72, 0.6), (0.99, 0.85, 0.7), (1.0, 0.95, 0.85)),
    ((0.35, 0.55, 0.8), (0.5, 0.7, 0.9), (0.7, 0.85, 0.95), (0.88, 0.95, 1.0)),
    ((0.45, 0.7, 0.45), (0.6, 0.82, 0.55), (0.78, 0.9, 0.7), (0.92, 0.97, 0.85)),
    ((0.85, 0.6, 0.15), (0.93, 0.75, 0.35), (0.97, 0.87, 0.55), (1.0, 0.96, 0.8)),
)


def _papercut(ctx: _Ctx) -> np.ndarray:
    pal = _pick(ctx, _PAPER_PALETTES)
    depth = -ctx.sd / 1.6
    layer = np.clip(np.floor(depth), 0, 3).astype(np.int64)
    obj = pal[layer]
    step_shadow = (layer > 0) & ((depth % 1.0) < 0.35)
    obj = np.where(step_shadow[..., None], obj * 0.78, obj)
    obj = np.where((ctx.dpart < 0.4)[..., None], obj * 0.85, obj)
    strength, offset = _PAPER_SHADOW[ctx.finish]
    sd = ctx.sd if offset == 0 else ctx.sample(offset, offset)[2] * ctx.pose.radius * _UNIT_RES
    drop = strength * np.clip(1.0 - sd / 1.5, 0.0, 1.0)[..., None]
    tone = np.float32(_PAPER_GLOW if float(ctx.bg.mean()) < _DARK_BG else 0.0)
    return ctx.compose(obj, ctx.bg * (1.0 - drop) + tone * drop)


_GLASS_TINTS = ((0.5, 0.85, 0.95), (0.55, 0.95, 0.6), (0.95, 0.7, 0.35))


def _glass(ctx: _Ctx) -> np.ndarray:
    tint = np.array(_GLASS_TINTS[int(ctx.rng.integers(len(_GLASS_TINTS)))], np.float32)
    obj = ctx.bg * 0.25 + tint * 0.65 * ctx.shade[..., None]
    streak = ((ctx.tu - ctx.tv) / 9.0 + ctx.rng.random()) % 1.0 < 0.2
    obj = obj + 0.4 * streak[..., None] + 0.5 * ctx.spec[..., None]
    highlight = (ctx.sd > -1.0) & (ctx.shade > 1.0)
    obj = np.where(highlight[..., None], np.float32(0.97), obj)
    obj = np.where((ctx.sd > -0.55)[..., None], tint * 0.4, obj)
    return ctx.compose(obj)


_NEON = ((1.0, 0.2, 0.8), (0.2, 1.0, 1.0), (0.6, 1.0, 0.2), (1.0, 0.5, 0.1))


def _neon(ctx: _Ctx) -> np.ndarray:
    col = np.array(_NEON[int(ctx.rng.integers(len(_NEON)))], np.float32)
    line = ctx.dpart < 0.7
    core = ctx.dpart < 0.3
    obj = np.where(line[..., None], col, np.float32(0.06) + 0.08 * col)
    obj = np.where((core & line)[..., None], col * 0.4 + 0.6, obj)
    glow = 0.75 * np.exp(-np.clip(ctx.sd, 0.0, None) / 1.1)[..., None]
    return ctx.compose(obj, ctx.bg * (1.0 - glow) + col * glow)


def _sticker(ctx: _Ctx) -> np.ndarray:
    colors = _guard(_saturate(ctx.natural, 1.3), np.array([0.98, 0.98, 0.98], np.float32))
    obj = colors[ctx.role]
    border = ctx.sd < 1.3
    ring = (ctx.sd >= 1.3) & (ctx.sd < 2.2)
    bg = np.where(border[..., None], np.float32(0.99), ctx.bg)
    bg = np.where(ring[..., None], ctx.bg * 0.6, bg)
    return ctx.compose(obj, bg)


def _wood(ctx: _Ctx) -> np.ndarray:
    ox, oy = ctx.rng.uniform(-6, 6), ctx.rng.uniform(-20, 20)
    d = np.sqrt((ctx.tu - ox) ** 2 + ((ctx.tv - oy) * 0.3) ** 2) + 0.6 * np.sin(ctx.tv * 0.5)
    t = (0.5 + 0.5 * np.cos(2 * math.pi * d / 2.4))[..., None]
    light = np.array([0.82, 0.6, 0.34], np.float32)
    dark = np.array([0.5, 0.29, 0.13], np.float32)
    obj = light * (1 - t) + dark * t
    return ctx.compose(ctx.structure(obj))


_STYLE_FNS = {
    "photo": _photo,
    "flat": _flat,
    "outline": _outline,
    "stripes": _stripes,
    "dots": _dots,
    "checker": _checker,
    "gradient": _gradient,
    "grain": _grain,
    "metal": _metal,
    "marble": _marble,
    "camo": _camo,
    "mosaic": _mosaic,
    "knit": _knit,
    "papercut": _papercut,
    "glass": _glass,
    "neon": _neon,
    "sticker": _sticker,
    "wood": _wood,
}
assert set(_STYLE_FNS) == set(STYLES), "every style needs a renderer"


def render(scene: Scene, seed: int, resolution: int = 32) -> np.ndarray:
    """Render ``scene`` as an ``(H, W, 3)`` uint8 image; deterministic in ``(scene, seed, resolution)``."""
    if resolution < 8:
        raise ValueError(f"resolution={resolution} is too small; use 8 or more (32 is the world's default)")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    ctx = _Ctx(scene, int(seed), int(resolution))
    rgb = _STYLE_FNS[scene.style](ctx)
    f = _SUPERSAMPLE
    small = rgb.reshape(resolution, f, resolution, f, 3).mean(axis=(1, 3))
    return (np.clip(small, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
