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
    INSTANCE_CONTENTS,
    INSTANCE_STYLES,
    N_CONTENT_CODES,
    N_PERSONAL,
    N_STYLE_CODES,
    STYLE_TRAITS,
    catalogue,
    content_traits,
    learnable_concept_problem,
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
    assert len(combos) == N_CONTENT_CODES == 16
    assert len({tuple(style_traits(c).values()) for c in range(N_STYLE_CODES)}) == N_STYLE_CODES == 12
    assert content_traits(0) == {"squeeze": 0, "mark": 0}
    with pytest.raises(ValueError, match="out of range"):
        content_traits(N_CONTENT_CODES)


@pytest.mark.parametrize(
    "kind,names,traits",
    [("content", INSTANCE_CONTENTS, CONTENT_TRAITS), ("style", INSTANCE_STYLES, STYLE_TRAITS)],
)
def test_personal_codes_are_fixed_distinct_and_never_public(kind, names, traits):
    decode = content_traits if kind == "content" else style_traits
    for name in names:
        personal, public = personal_codes(kind, name), public_codes(kind, name)
        assert len(set(personal)) == N_PERSONAL and 0 not in personal and 0 in public
        assert personal == personal_codes(kind, name)  # seeded by the name
        assert not set(personal) & set(public)
        # base training sees every value of every trait; a personal instance is a new combination
        for trait, values in traits.items():
            assert {decode(c)[trait] for c in public} == set(range(len(values)))
    # seeded per name: classes do not share one order
    assert len({personal_codes(kind, n) for n in names}) == len(names)


def test_classes_without_instances_have_one_look():
    assert personal_codes("content", "cup") == () and public_codes("content", "cup") == (0,)
    assert personal_codes("style", "photo") == () and public_codes("style", "stripes") == (0,)
    with pytest.raises(ValueError, match="cup has no personal instances; those that do: teddy#0..#7"):
        parse_concept("cup#1", "content")
    with pytest.raises(ValueError, match="no instances"):
        Scene("cup", "photo", content_code=3)
    assert {Scene("cup", "stripes").codes(s) for s in range(50)} == {(0, 0)}


def test_catalogue_names_every_personal_instance_in_the_spelling_the_commands_accept():
    rows = dict(catalogue())
    for kind, names in (("content", INSTANCE_CONTENTS), ("style", INSTANCE_STYLES)):
        for name in names:
            for i in range(N_PERSONAL):
                assert f"personal {kind} instance of {name}" in rows[f"{name}#{i}"]
                assert parse_concept(f"{name}#{i}", kind).code == personal_codes(kind, name)[i]
    assert "cup#0" not in rows and "held-out" in rows["mushroom"]


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
    for content in INSTANCE_CONTENTS:
        seen = {Scene(content, "photo").codes(s)[0] for s in range(400)}
        assert seen == set(public_codes("content", content))


def test_content_traits_change_the_silhouette_in_every_style():
    """Each trait value moves the object's outline, so a style cannot repaint it away."""
    for style in ("photo", "outline", "papercut", "stripes", "neon"):
        base = _object_mask(render(Scene("teddy", style, content_code=0, style_code=0), 5))
        for code in range(1, N_CONTENT_CODES):
            other = _object_mask(render(Scene("teddy", style, content_code=code, style_code=0), 5))
            assert (base ^ other).sum() >= 8, (style, code, content_traits(code))


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a.astype(int) - b.astype(int)).sum(-1) > 60).sum())


@pytest.mark.parametrize("style", ["photo", "outline", "papercut"])
def test_every_personal_content_instance_differs_from_every_public_one(style):
    """Same pose and palette (same seed, fixed style code): a personal teddy's render differs from every
    public teddy's in several pixels of the 32 px image, in styles that repaint everything but the shape."""
    for content in INSTANCE_CONTENTS:
        for p in personal_codes("content", content):
            mine = render(Scene(content, style, content_code=p, style_code=0), 9)
            closest = min(
                _changed_pixels(mine, render(Scene(content, style, content_code=q, style_code=0), 9))
                for q in public_codes("content", content)
            )
            assert closest >= 3, (content, style, p, closest)


def test_every_personal_style_instance_differs_from_every_public_one():
    for style in INSTANCE_STYLES:
        for p in personal_codes("style", style):
            mine = render(Scene("cup", style, content_code=0, style_code=p), 9)
            closest = min(
                _changed_pixels(mine, render(Scene("cup", style, content_code=0, style_code=q), 9))
                for q in public_codes("style", style)
            )
            assert closest >= 3, (style, p, closest)


def test_palette_and_finish_show_in_the_pixels():
    for style in INSTANCE_STYLES:
        img = {
            c: render(Scene("cup", style, content_code=0, style_code=c), 2).astype(float) for c in (0, 2, 3)
        }
        assert np.abs(img[0] - img[3]).mean() > 3  # another palette: p1 (code 3) against p0
        assert np.abs(img[0] - img[2]).mean() > 1  # finish f2 (code 2) against f0, same palette


@pytest.mark.parametrize("background", ["white", "black", "blue", "yellow"])
@pytest.mark.parametrize("style", INSTANCE_STYLES)
def test_every_finish_shows_on_every_background(style, background):
    """A style trait must survive every content and attribute. A papercut drop shadow that only darkens the
    card left a black card changed by 0.3/255 on average between raised and flat (a judge could not tell them
    apart); on dark cards it lightens instead."""
    img = [
        render(Scene("cup", style, content_code=0, style_code=f, background=background), 2).astype(float)
        for f in range(len(STYLE_TRAITS["finish"]))  # codes 0, 1, 2: palette p0, finish f0, f1, f2
    ]
    for a in range(len(img)):
        for b in range(a):
            assert np.abs(img[a] - img[b]).mean() > 2, (a, b)


@pytest.mark.parametrize(
    "content,style,digest",
    [
        ("cup", "stripes", "2b6e35679b2e1c86"),
        ("house", "photo", "68b82664aabc8c76"),
        ("bird", "neon", "198e95d3428c88b5"),
        ("mushroom", "glass", "217e0676700a5335"),
    ],
)
def test_classes_without_instances_render_as_before_instances_existed(content, style, digest):
    """Instances change only the classes that have them: these digests are of the renders of the world
    before instances existed, so the judges and base model trained on it stay valid for every other class."""
    import hashlib

    assert hashlib.sha256(render(Scene(content, style), 4).tobytes()).hexdigest()[:16] == digest


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


def test_learnable_concepts_are_personal_instances_or_held_out_classes():
    from b4m.world.concepts import HELD_IN_CONTENTS, HELD_OUT_CONTENTS, HELD_OUT_STYLES

    assert learnable_concept_problem("teddy#3", "content") is None
    assert learnable_concept_problem("papercut#5", "style") is None
    assert learnable_concept_problem(HELD_OUT_CONTENTS[0], "content") is None
    assert learnable_concept_problem(HELD_OUT_STYLES[0], "style") is None
    plain = next(c for c in HELD_IN_CONTENTS if c not in INSTANCE_CONTENTS)
    why = learnable_concept_problem(plain, "content")
    assert why.startswith(
        f"the base model already draws {plain}; choose a personal instance (teddy#0..#7 or cat"
    )
    assert all(name in why for name in HELD_OUT_CONTENTS)
    assert "(teddy#0..#7)" in learnable_concept_problem("teddy", "content")
    assert "is not one of" in learnable_concept_problem("teapot", "content")
    assert "must be 0..7" in learnable_concept_problem("teddy#9", "content")
