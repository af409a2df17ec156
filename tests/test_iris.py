"""Eye colour from the photo's iris pixels (avatarsdk.iris) on painted synthetic eyes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from avatarsdk.errors import InputError
from avatarsdk.iris import _EYES, DEFAULT_IRIS, eye_openness, iris_colour, iris_pixels
from avatarsdk.materials import default_textures

SKIN = (196, 150, 128)
SCLERA = (236, 232, 224)
BLUE = (70, 120, 185)
BROWN = (105, 62, 30)
AMBIENT = np.zeros((9, 3), np.float32)
AMBIENT[0] = 1.0  # uniform white light: shading 1 at every normal


def paint_face(iris_rgb, *, open_ratio: float = 0.32, highlight: bool = True, size: int = 400):
    """A skin-coloured photo with two painted eyes and the 478 landmarks that describe them.

    Each eye: a sclera ellipse (the loop of 16 lid points), an iris disc with a
    black pupil, a white specular dot and a dark lash line on the upper lid.
    Landmarks other than the eyes' are placed at the image centre.
    """
    img = Image.new("RGB", (size, size), SKIN)
    draw = ImageDraw.Draw(img)
    pts = np.full((478, 3), size / 2, np.float64)
    for side, cx in (("right", 0.33 * size), ("left", 0.67 * size)):
        e = _EYES[side]
        cy, a = 0.45 * size, 0.09 * size
        b = a * open_ratio
        loop = e["loop"]
        theta = np.pi + 2 * np.pi * np.arange(len(loop)) / len(loop)
        xy = np.stack([cx + a * np.cos(theta), cy - b * np.sin(theta)], 1)
        pts[list(loop), :2] = xy
        draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=SCLERA)
        r = 0.42 * a
        pts[e["centre"], :2] = (cx, cy)
        pts[list(e["rim"]), :2] = [(cx + r, cy), (cx, cy - r), (cx - r, cy), (cx, cy + r)]
        # Iris clipped by the lids: draw on a layer masked by the eye opening.
        layer = Image.new("RGB", (size, size), SKIN)
        ld = ImageDraw.Draw(layer)
        ld.ellipse([cx - a, cy - b, cx + a, cy + b], fill=SCLERA)
        ld.ellipse([cx - r, cy - r, cx + r, cy + r], fill=iris_rgb)
        ld.ellipse([cx - 0.35 * r, cy - 0.35 * r, cx + 0.35 * r, cy + 0.35 * r], fill=(8, 8, 8))
        if highlight:
            ld.ellipse([cx + 0.35 * r, cy - 0.75 * r, cx + 0.65 * r, cy - 0.45 * r], fill=(255, 255, 255))
        m = Image.new("L", (size, size), 0)
        ImageDraw.Draw(m).ellipse([cx - a, cy - b, cx + a, cy + b], fill=255)
        img.paste(layer, (0, 0), m)
        draw = ImageDraw.Draw(img)
        draw.arc([cx - a, cy - b, cx + a, cy + b], 180, 360, fill=(20, 15, 12), width=3)
    return np.asarray(img), pts


def test_blue_iris_is_read_as_blue_and_painted_blue():
    img, pts = paint_face(BLUE)
    ic = iris_colour(img, pts, AMBIENT)
    assert ic.source == "photo" and ic.pixels > 100
    got = np.asarray(ic.colour) * 255
    # Under a uniform unit light the albedo is the painted colour (highlights, pupil, lashes ignored).
    assert np.abs(got - BLUE).max() < 12, got
    tex = default_textures(iris_rgb=ic.colour)["eyes"]
    tile = tex[:, 256:].reshape(-1, 3).astype(float)
    # Iris texels of the iris tile (away from the white sclera ring and the dark pupil): blue dominates.
    r, g, b = tile.T
    iris = (b > 60) & (b < 220) & (np.abs(r - g) + np.abs(g - b) > 20)
    assert iris.sum() > 1000
    assert np.median(b[iris] - r[iris]) > 40


def test_brown_iris_and_light_is_divided_out():
    img, pts = paint_face(BROWN)
    dim = AMBIENT * 0.5  # the photo was lit at half intensity: the albedo is twice as bright in linear light
    bright = iris_colour(img, pts, dim)
    plain = iris_colour(img, pts, AMBIENT)
    assert bright.colour[0] > plain.colour[0] > bright.colour[2]
    lin = lambda c: ((np.asarray(c) + 0.055) / 1.055) ** 2.4  # noqa: E731 sRGB -> linear (above the toe)
    np.testing.assert_allclose(lin(bright.colour), np.minimum(2 * lin(plain.colour), 1), rtol=0.03)
    half = iris_colour(img, pts, AMBIENT, exposure=0.5)
    np.testing.assert_allclose(half.colour, bright.colour, atol=1e-6)


def test_closed_eyes_fall_back_to_default():
    img, pts = paint_face(BLUE, open_ratio=0.06)
    assert eye_openness(pts, "left") < 0.12
    ic = iris_colour(img, pts, AMBIENT)
    assert ic.source == "default" and ic.colour == DEFAULT_IRIS and ic.pixels == 0
    assert not ic.per_eye["left"]["used"] and not ic.per_eye["right"]["used"]
    assert ic.to_json()["source"] == "default"


def test_one_hidden_eye_uses_the_other():
    img, pts = paint_face(BLUE)
    img = img.copy()
    img[:, 200:] = SKIN  # the left eye (image right) covered by a skin-coloured hand
    pts = pts.copy()
    pts[list(_EYES["left"]["loop"]), 1] = pts[_EYES["left"]["centre"], 1]  # mesh says it is shut
    ic = iris_colour(img, pts, AMBIENT)
    assert ic.source == "photo" and ic.per_eye["right"]["used"] and not ic.per_eye["left"]["used"]
    assert ic.colour[2] > ic.colour[0]


def test_bad_inputs():
    img, pts = paint_face(BLUE)
    with pytest.raises(InputError):
        iris_colour(img, pts[:468], AMBIENT)
    with pytest.raises(InputError):
        iris_colour(img, pts, np.zeros((4, 3)))
    with pytest.raises(InputError):
        iris_pixels(img.astype(np.float32), pts, side="left")
    with pytest.raises(InputError):
        iris_pixels(img, pts, side="middle")


def _parse_with_glasses(shape, pts, sides, *, method="bisenet"):
    from avatarsdk.datatypes import FaceParse

    labels = np.ones(shape[:2], np.uint8)  # skin
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for side in sides:
        e = _EYES[side]
        cx, cy = pts[e["centre"], :2]
        r = 3 * np.linalg.norm(pts[list(e["rim"]), :2] - pts[e["centre"], :2], axis=1).mean()
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 6  # eye_g: the lens over the eye
    return FaceParse(labels=labels, method=method)


def test_eyes_behind_glasses():
    from avatarsdk.iris import eyes_behind_glasses

    img, pts = paint_face(BROWN)
    assert eyes_behind_glasses(_parse_with_glasses(img.shape, pts, ("left",)), pts) == ("left",)
    assert eyes_behind_glasses(_parse_with_glasses(img.shape, pts, ("right", "left")), pts) == ("right", "left")
    assert eyes_behind_glasses(_parse_with_glasses(img.shape, pts, ()), pts) == ()
    assert eyes_behind_glasses(None, pts) == ()
    # The mesh parse knows no glasses, whatever its labels say.
    assert eyes_behind_glasses(_parse_with_glasses(img.shape, pts, ("left",), method="mesh"), pts) == ()


def test_red_eye_is_not_an_iris_colour():
    """A flash's red eye (or lid pink) is red to magenta, which no iris is: the default is used; brown stays."""
    from avatarsdk.iris import implausibly_red

    img, pts = paint_face((170, 52, 60))
    ic = iris_colour(img, pts, AMBIENT)
    assert ic.source == "default" and ic.colour == DEFAULT_IRIS
    assert all(e.get("red") and not e["used"] for e in ic.per_eye.values())
    lin = lambda rgb: (np.asarray(rgb, np.float64) / 255) ** 2.2  # noqa: E731
    assert implausibly_red(lin((138, 77, 71))) and implausibly_red(lin((125, 61, 75)))
    for natural in (BROWN, (72, 45, 11), BLUE, (61, 81, 70), (132, 136, 136), (101, 93, 76)):
        assert not implausibly_red(lin(natural)), natural
    assert iris_colour(*paint_face(BROWN), AMBIENT).source == "photo"
