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


def paint_face(iris_rgb, *, open_ratio: float = 0.32, highlight: bool = True, size: int = 400,
               pupil=((8, 8, 8), 0.35), glow=None, lashes: int = 3):
    """A skin-coloured photo with two painted eyes and the 478 landmarks that describe them.

    Each eye: a sclera ellipse (the loop of 16 lid points), an iris disc with a
    pupil (colour, radius over the iris radius; black by default), optionally a
    glow ring round it (colour, outer radius: a flash's red eye), a white specular
    dot and a dark lash line on the upper lid. Landmarks other than the eyes' are
    placed at the image centre.
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
        for rgb, frac in ([glow] if glow else []) + [pupil]:  # the glow ring first, the pupil over it
            ld.ellipse([cx - frac * r, cy - frac * r, cx + frac * r, cy + frac * r], fill=rgb)
        if highlight:
            ld.ellipse([cx + 0.35 * r, cy - 0.75 * r, cx + 0.65 * r, cy - 0.45 * r], fill=(255, 255, 255))
        m = Image.new("L", (size, size), 0)
        ImageDraw.Draw(m).ellipse([cx - a, cy - b, cx + a, cy + b], fill=255)
        img.paste(layer, (0, 0), m)
        draw = ImageDraw.Draw(img)
        draw.arc([cx - a, cy - b, cx + a, cy + b], 180, 360, fill=(20, 15, 12), width=lashes)
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


BLUE_GREY = (105, 120, 135)
FLASH = dict(pupil=((150, 40, 48), 0.5), glow=((185, 100, 108), 0.65))  # a dilated red pupil and its pink glow


@pytest.mark.parametrize("size", [400, 120])  # irises of ~15 px and ~4.5 px radius
def test_flash_red_eye_reads_the_blue_grey_iris_round_the_glow(size):
    """A flash's red pupil and glow fill the inner 65% of the iris; the annulus round them is the colour."""
    img, pts = paint_face(BLUE_GREY, size=size, lashes=3 if size > 200 else 1, **FLASH)
    ic = iris_colour(img, pts, AMBIENT)
    assert ic.source == "photo", ic.note
    assert all(e["red_eye"] and e["used"] and e["glow"] > 0.9 for e in ic.per_eye.values()), ic.per_eye
    got = np.asarray(ic.colour) * 255
    assert np.abs(got - BLUE_GREY).max() < (4 if size > 200 else 16), got
    assert got[2] > got[0] + 10 and got[2] > got[1] + 10, got  # blue-grey, not the glow's pink
    assert "red eye" in ic.to_json()["note"]


def test_dark_pupils_and_warm_irises_are_not_red_eye():
    """A dark pupil is no glow, even a red-tinted one (a warm photo); nor is a brown iris round it."""
    from avatarsdk.iris import red_eye_samples, red_glow

    for iris, pupil in ((BROWN, ((8, 8, 8), 0.35)), ((90, 40, 30), ((40, 10, 12), 0.5))):
        img, pts = paint_face(iris, pupil=pupil)
        for side in ("right", "left"):
            assert not red_eye_samples(img, pts, side=side).red_eye
    skin = np.array(SKIN, float)
    glow = red_glow(np.array([[150, 40, 48], [185, 100, 108], [40, 10, 12], [105, 62, 30], [105, 120, 135],
                              [190, 160, 150]], float), skin)
    # Lit red and pink glow; not a dark red pupil, a brown or blue-grey iris, or paler-than-skin pink.
    assert glow.tolist() == [True, True, False, False, False, False]


def _flashed(colour, pixels, n=40):
    from avatarsdk.iris import RedEye

    lin = ((np.asarray(colour, float) / 255 + 0.055) / 1.055) ** 2.4
    return RedEye(True, 0.9, np.tile(lin, (n, 1)), pixels)


def test_red_eye_pixel_rule():
    """Enough pixels pooled, or two agreeing eyes of a few each; one eye's few pixels or red left-overs are not."""
    from avatarsdk.iris import red_eye_colour

    grey, other = (110, 118, 128), (128, 100, 70)
    colour, n, why = red_eye_colour({"right": _flashed(grey, 7), "left": _flashed(grey, 6)})
    assert colour is not None and n == 13 and "read from 13" in why
    colour, n, why = red_eye_colour({"right": _flashed(grey, 4), "left": _flashed(grey, 3)})
    assert colour is not None and n == 7  # few, but both eyes see the same colour
    colour, n, why = red_eye_colour({"right": _flashed(grey, 9), "left": _flashed(grey, 2)})
    assert colour is None and "fewer than 12" in why  # one eye's 9 pixels alone
    colour, n, why = red_eye_colour({"right": _flashed(grey, 4), "left": _flashed(other, 4)})
    assert colour is None and "disagree" in why
    colour, n, why = red_eye_colour({"right": _flashed((150, 70, 80), 20), "left": _flashed((150, 70, 80), 20)})
    assert colour is None and "still red" in why  # glow left in the annulus
    colour, n, why = red_eye_colour({"right": _flashed(grey, 20)}, delight=lambda c: c * np.array([2.5, 1.0, 0.8]))
    assert colour is None and "de-lit" in why  # the avatar would get a pink iris
    assert red_eye_colour({"right": _flashed(grey, 0)})[0] is None


def test_bilinear_samples_at_pixel_centres_and_between():
    from avatarsdk.iris import _bilinear

    img = np.arange(4 * 5 * 3, dtype=np.float64).reshape(4, 5, 3)
    x, y = np.array([0.0, 2.0, 1.5, 4.0, 9.0]), np.array([0.0, 1.0, 2.5, 3.0, -3.0])
    got = _bilinear(img, x, y)
    np.testing.assert_allclose(got[0], img[0, 0])
    np.testing.assert_allclose(got[1], img[1, 2])
    np.testing.assert_allclose(got[2], img[2:4, 1:3].reshape(-1, 3).mean(0))  # between four pixel centres
    np.testing.assert_allclose(got[3], img[3, 4])
    np.testing.assert_allclose(got[4], img[0, 4])  # outside: clamped to the edge
