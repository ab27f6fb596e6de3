"""Personal instances of known classes (b4m.world.instances) and how the renderer draws them."""

import numpy as np
import pytest

from b4m.world.concepts import (
    CONTENTS,
    HELD_IN_CONTENTS,
    HELD_IN_STYLES,
    IDENTIFIERS,
    STYLES,
    UNSEEN_PAIRS,
)
from b4m.world.instances import (
    CONTENT_TRAITS,
    N_CONTENT_CODES,
    N_PERSONAL,
    N_STYLE_CODES,
    content_traits,
    parse_concept,
    personal_codes,
    public_codes,
    style_traits,
)
from b4m.world.render import Scene, random_scene, render


def _object_mask(img: np.ndarray) -> np.ndarray:
    return np.abs(img.astype(int) - img[0, 0].astype(int)).sum(-1) > 60


def test_codes_decode_to_every_trait_combination():
    combos = {tuple(content_traits(c).values()) for c in range(N_CONTENT_CODES)}
    assert len(combos) == N_CONTENT_CODES == 36
    assert len({tuple(style_traits(c).values()) for c in range(N_STYLE_CODES)}) == N_STYLE_CODES == 24
    assert content_traits(0) == {"squeeze": 0, "taper": 0, "mark": 0}
    with pytest.raises(ValueError, match="out of range"):
        content_traits(N_CONTENT_CODES)


@pytest.mark.parametrize("kind,names", [("content", CONTENTS), ("style", STYLES)])
def test_personal_codes_are_fixed_distinct_and_never_public(kind, names):
    for name in names:
        personal = personal_codes(kind, name)
        assert len(set(personal)) == N_PERSONAL and 0 not in personal
        assert personal == personal_codes(kind, name)  # seeded by the name
        assert not set(personal) & set(public_codes(kind, name))
    # seeded per name: classes do not share one set
    assert len({personal_codes(kind, n) for n in names}) == len(names)


def test_parse_concept_names_personal_instances():
    ref = parse_concept("teddy#3", "content")
    assert (ref.name, ref.index, ref.code) == ("teddy", 3, personal_codes("content", "teddy")[3])
    assert str(ref) == "teddy#3" and parse_concept("papercut", "style").code is None
    with pytest.raises(ValueError, match="0..7"):
        parse_concept("teddy#8", "content")
    with pytest.raises(ValueError, match="is not one of"):
        parse_concept("dragon#1", "content")
    scene = Scene.of("teddy#3", "papercut#5", size="small")
    assert scene.codes(0) == (ref.code, personal_codes("style", "papercut")[5]) and scene.size == "small"


def test_an_unset_code_draws_public_instances_only():
    for content in ("teddy", "cup"):
        seen = {Scene(content, "photo").codes(s)[0] for s in range(400)}
        assert seen <= set(public_codes("content", content)) and len(seen) > 20


def test_content_traits_change_the_silhouette_in_every_style():
    """Each trait value moves the object's outline, so a style cannot repaint it away."""
    for style in ("photo", "outline", "papercut", "stripes", "neon"):
        base = _object_mask(render(Scene("teddy", style, content_code=0, style_code=0), 5))
        for code in (12, 24, 4, 8, 3):  # narrow, short, top taper, bottom taper... and a crest (mark 3)
            other = _object_mask(render(Scene("teddy", style, content_code=code, style_code=0), 5))
            assert (base ^ other).sum() >= 8, (style, code, content_traits(code))


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a.astype(int) - b.astype(int)).sum(-1) > 60).sum())


@pytest.mark.parametrize("style", ["photo", "outline", "papercut"])
def test_every_personal_content_instance_differs_from_every_public_one(style):
    """Same pose and palette (same seed, fixed style code): a personal teddy's render differs from every
    public teddy's in several pixels of the 32 px image, in styles that repaint everything but the shape."""
    for content in ("teddy", "cup", "key"):
        for p in personal_codes("content", content):
            mine = render(Scene(content, style, content_code=p, style_code=0), 9)
            closest = min(
                _changed_pixels(mine, render(Scene(content, style, content_code=q, style_code=0), 9))
                for q in public_codes("content", content)
            )
            assert closest >= 3, (content, style, p, closest)


def test_every_personal_style_instance_differs_from_every_public_one():
    for style in ("papercut", "stripes", "photo"):
        for p in personal_codes("style", style):
            mine = render(Scene("cup", style, content_code=0, style_code=p), 9)
            closest = min(
                _changed_pixels(mine, render(Scene("cup", style, content_code=0, style_code=q), 9))
                for q in public_codes("style", style)
            )
            assert closest >= 3, (style, p, closest)


def test_bold_edges_and_palettes_show_in_the_pixels():
    soft = render(Scene("cup", "stripes", content_code=0, style_code=0), 2).astype(float)
    bold = render(Scene("cup", "stripes", content_code=0, style_code=1), 2).astype(float)
    other_palette = render(Scene("cup", "stripes", content_code=0, style_code=6), 2).astype(float)
    assert np.abs(soft - bold).mean() > 2 and np.abs(soft - other_palette).mean() > 5


def test_unseen_pairs_are_held_in_and_excluded_from_random_scenes():
    assert len(UNSEEN_PAIRS) >= 0.1 * len(HELD_IN_CONTENTS) * len(HELD_IN_STYLES)
    assert all(c in HELD_IN_CONTENTS and s in HELD_IN_STYLES for c, s in UNSEEN_PAIRS)
    rng = np.random.default_rng(0)
    drawn = {
        (sc.content, sc.style) for sc in (random_scene(rng, exclude_pairs=UNSEEN_PAIRS) for _ in range(3000))
    }
    assert not drawn & UNSEEN_PAIRS and len(drawn) > 200
    assert ("teddy", "papercut") not in UNSEEN_PAIRS and ("teddy", "photo") not in UNSEEN_PAIRS


def test_identifiers_are_not_world_words():
    words = set(CONTENTS) | set(STYLES) | {v for vs in CONTENT_TRAITS.values() for v in vs}
    assert len(IDENTIFIERS) >= 4 and not set(IDENTIFIERS) & words
