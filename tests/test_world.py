import json
import time

import numpy as np
import pytest
from PIL import Image

from b4m.errors import B4MError
from b4m.owned import MANIFEST, Folder
from b4m.world.concepts import (
    ATTRIBUTES,
    CONTENTS,
    DEFAULT_ATTRIBUTES,
    HELD_IN_CONTENTS,
    HELD_IN_STYLES,
    HELD_OUT_CONTENTS,
    HELD_OUT_STYLES,
    STYLES,
)
from b4m.world.export import export_concept, export_folder
from b4m.world.instances import public_codes
from b4m.world.render import Scene, _canonical, caption, random_scene, render
from b4m.world.sheet import contact_sheet, image_grid


def test_concept_sets():
    assert len(CONTENTS) >= 16 and len(STYLES) >= 14
    assert len(HELD_OUT_CONTENTS) >= 4 and len(HELD_OUT_STYLES) >= 4
    assert not set(HELD_OUT_CONTENTS) & set(HELD_IN_CONTENTS)
    assert not set(HELD_OUT_STYLES) & set(HELD_IN_STYLES)
    assert set(HELD_IN_CONTENTS) | set(HELD_OUT_CONTENTS) == set(CONTENTS)
    assert set(HELD_IN_STYLES) | set(HELD_OUT_STYLES) == set(STYLES)
    assert "photo" in HELD_IN_STYLES
    names = CONTENTS + STYLES + tuple(v for vs in ATTRIBUTES.values() for v in vs)
    assert all(n.isascii() and n.isalpha() and n.islower() for n in names)
    assert len(set(CONTENTS + STYLES)) == len(CONTENTS) + len(STYLES)
    for name, value in DEFAULT_ATTRIBUTES.items():
        assert value in ATTRIBUTES[name]


def test_every_concept_renders_and_is_deterministic():
    for i, content in enumerate(CONTENTS):
        for j, style in enumerate(STYLES):
            if (i + j) % 3:
                continue
            img = render(Scene(content, style), seed=i * 31 + j)
            assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    for style in STYLES:
        scene = Scene("cup", style, "left", "large", "blue")
        a, b = render(scene, 3), render(scene, 3)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, render(scene, 4))
    assert render(Scene("teddy", "knit"), 0, resolution=64).shape == (64, 64, 3)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="content='dragon'"):
        Scene("dragon", "photo")
    with pytest.raises(ValueError, match="background='red'"):
        Scene("cup", "photo", background="red")


def test_contents_have_distinct_shapes():
    masks = {c: _canonical(c)[:-1, 0].reshape(160, 160) > 0 for c in CONTENTS}
    ious = []
    for a in CONTENTS:
        for b in CONTENTS:
            if a < b:
                ious.append((masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum())
    assert np.mean(ious) < 0.5 and max(ious) < 0.8


def test_attributes_are_visible():
    base = Scene("apple", "photo")
    img = render(base, 0).astype(float)
    for name, values in ATTRIBUTES.items():
        for value in values:
            if value != DEFAULT_ATTRIBUTES[name]:
                other = render(Scene(**{**base.as_dict(), name: value}), 0).astype(float)
                assert np.abs(other - img).mean() > 3.0, (name, value)
    blue = render(Scene("apple", "photo", background="blue"), 0)
    assert blue[0, 0, 2] > blue[0, 0, 0] + 60
    centroids = []
    for position in ("left", "center", "right"):
        img = render(Scene("star", "flat", position=position, background="black"), 0).astype(float).sum(-1)
        weight = np.abs(img - np.median(img)).sum(0)
        centroids.append((weight * np.arange(32)).sum() / weight.sum())
    assert centroids[0] < 13 < centroids[1] < 19 < centroids[2]


def test_caption_and_random_scene():
    scene = Scene("teddy", "stripes", position="left", size="small", background="blue")
    assert caption(scene) == "a teddy in stripes style on the left, small, on a blue background"
    assert caption(Scene("teddy", "photo")) == "a photo of a teddy"
    assert caption(Scene("apple", "photo")) == "a photo of an apple"
    assert (
        caption(Scene("teddy", "knit"), content_word="snq teddy", style_word="w@z")
        == "a snq teddy in w@z style"
    )
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(300)]
    assert {s.content for s in scenes} <= set(HELD_IN_CONTENTS)
    assert {s.style for s in scenes} <= set(HELD_IN_STYLES)
    frac = np.mean([s.size != DEFAULT_ATTRIBUTES["size"] for s in scenes])
    assert 0.35 < frac < 0.65
    assert all(random_scene(rng, attribute_prob=0.0).background == "white" for _ in range(20))


def test_render_speed():
    rng = np.random.default_rng(1)
    scenes = [random_scene(rng) for _ in range(200)]
    for content in CONTENTS:  # canonical maps are built once per content and mark, then cached
        for code in public_codes("content", content):
            render(Scene(content, "photo", content_code=code), 0)
    t = time.perf_counter()
    for i, s in enumerate(scenes):
        render(s, i)
    assert 200 / (time.perf_counter() - t) > 300  # ~2000/s on one free core; loose for shared CI


def test_export_folder_roundtrip(tmp_path):
    scenes = [Scene("cup", "dots"), Scene("teddy", "photo", size="small")]
    out = export_folder(tmp_path / "set", scenes, [5, 6], content_word="snq teddy")
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST,
        "0000.png",
        "0000.txt",
        "0001.png",
        "0001.txt",
        "metadata.jsonl",
    ]
    for i, scene in enumerate(scenes):
        img = np.asarray(Image.open(out / f"{i:04d}.png"))
        assert np.array_equal(img, render(scene, 5 + i))
        assert (out / f"{i:04d}.txt").read_text().strip() == caption(scene, content_word="snq teddy")
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert meta[1]["content"] == "teddy" and meta[1]["size"] == "small" and meta[1]["seed"] == 6
    with pytest.raises(B4MError, match="holds an earlier export; pass --overwrite"):
        export_folder(out, scenes, [1, 2])
    export_folder(out, scenes[:1], [1], overwrite=True)
    assert len(list(out.glob("*.png"))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    (out / "my_photo.jpg").write_bytes(
        b"the user's"
    )  # a user's file in it: never replaced, even with overwrite
    with pytest.raises(B4MError, match="holds my_photo.jpg, which b4m did not make"):
        export_folder(out, scenes, [1, 2], overwrite=True)
    assert (out / "my_photo.jpg").read_bytes() == b"the user's" and len(list(out.glob("*.png"))) == 1


def test_export_concept(tmp_path):
    out = export_concept(tmp_path / "teddy", content="teddy", n=3, content_word="snq teddy")
    assert (out / "0002.txt").read_text().strip() == "a photo of a snq teddy"
    out = export_concept(tmp_path / "knit", style="knit", n=3, style_word="w@z")
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(m["style"] == "knit" and m["content"] in HELD_IN_CONTENTS for m in meta)
    assert all(m["caption"].endswith("in w@z style") for m in meta)


def test_sheets():
    sheet = contact_sheet(CONTENTS[:3], STYLES[:4], scale=1)
    assert sheet.width > 4 * 32 and sheet.height > 3 * 32
    grid = image_grid([render(Scene("cup", "photo"), i) for i in range(5)], ncols=2, labels=list("abcde"))
    assert grid.height > 3 * 32


def test_export_cleans_what_a_killed_export_left_and_nothing_else(tmp_path):
    out = tmp_path / "refs"
    for name in (".refs.tmp-abc123", ".refs.old-def456", ".other.tmp-1", ".refs.tmp-users"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0000.png").write_bytes(b"x")
    for name in (".refs.tmp-abc123", ".refs.old-def456", ".other.tmp-1"):  # what a killed export left
        Folder(tmp_path / name).record("0000.png")
    (tmp_path / "mine.txt").write_text("user file")
    export_folder(out, [Scene("cup", "dots")], [0])
    kept = [".other.tmp-1", ".refs.tmp-users", "mine.txt", "refs"]  # another export's; one b4m did not make
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
