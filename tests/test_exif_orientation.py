"""Reference photos load upright: the EXIF orientation tag a phone writes is applied (``load_images``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from b4m.data.folders import load_images, read_image_folder

SIDE = 64
# An asymmetric pattern: each quadrant its own colour, so every rotation and flip gives another picture.
QUADRANTS = {
    "top_left": (220, 30, 30),
    "top_right": (30, 200, 30),
    "bottom_left": (30, 30, 220),
    "bottom_right": (240, 240, 240),
}


def _upright() -> np.ndarray:
    h = SIDE // 2
    a = np.zeros((SIDE, SIDE, 3), np.uint8)
    a[:h, :h], a[:h, h:] = QUADRANTS["top_left"], QUADRANTS["top_right"]
    a[h:, :h], a[h:, h:] = QUADRANTS["bottom_left"], QUADRANTS["bottom_right"]
    return a


def _quadrant_means(img) -> dict[str, np.ndarray]:
    """Mean colour (0-255) of each quadrant's inner part (away from JPEG's blur at the edges)."""
    a = img.permute(1, 2, 0).numpy() * 255
    q, m = SIDE // 2, SIDE // 8
    return {
        "top_left": a[m : q - m, m : q - m].mean((0, 1)),
        "top_right": a[m : q - m, q + m : -m].mean((0, 1)),
        "bottom_left": a[q + m : -m, m : q - m].mean((0, 1)),
        "bottom_right": a[q + m : -m, q + m : -m].mean((0, 1)),
    }


# (EXIF orientation, how the camera stored the upright picture as np.rot90's k): orientation 6 means "rotate the
# stored pixels 90 degrees clockwise to display", so they were stored turned 90 degrees counter-clockwise.
@pytest.mark.parametrize(("orientation", "stored_k"), [(1, 0), (3, 2), (6, 1), (8, -1)])
def test_jpeg_with_an_orientation_tag_loads_upright(tmp_path, orientation, stored_k):
    stored = np.ascontiguousarray(np.rot90(_upright(), k=stored_k))
    folder = tmp_path / "refs"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    Image.fromarray(stored).save(folder / "photo.jpg", exif=exif, quality=95)
    images = read_image_folder(folder)
    got = _quadrant_means(load_images(images.paths, SIDE)[0])
    for name, colour in QUADRANTS.items():
        assert np.abs(got[name] - np.array(colour)).max() < 12, (name, got[name], colour)


def test_without_a_tag_the_pixels_are_taken_as_stored(tmp_path):
    turned = np.ascontiguousarray(np.rot90(_upright(), k=1))
    Image.fromarray(turned).save(tmp_path / "plain.jpg", quality=95)
    got = _quadrant_means(load_images([tmp_path / "plain.jpg"], SIDE)[0])
    # rot90 counter-clockwise: the top-right quadrant moves to the top left.
    assert np.abs(got["top_left"] - np.array(QUADRANTS["top_right"])).max() < 12
