"""Eye colour: the iris albedo read from the photo's iris pixels, de-lit like the skin.

The refined iris landmarks of mediapipe's face mesh (468-472: the subject's
right iris centre and rim, 473-477: the left) give each iris as a circle in
the photo. Its pixels are those inside the circle (less the pupil) and inside
the eye opening shrunk away from the lids (lids and lashes), and, with the
BiSeNet parser, not parsed as an occluder (skin, which is what a hand
parses as; hair, hat, brows, nose, background). Of those, the brightest fifth (specular
highlights, the window reflection on the cornea, sclera bleeding in at the
rim) and the darkest fifth (lashes, pupil edge, limbal ring) are dropped;
the per-channel median of the rest, in linear light, divided by the fitted
SH shading at a forward-facing eye and by the exposure read from the
sclera (:func:`avatarsdk.albedo.sclera_exposure`), is the iris albedo: the
same de-lighting the skin gets (:func:`avatarsdk.albedo.unwrap`).

A closed or hidden eye contributes nothing: lid gap below
``min_open`` times the eye's width, or fewer than ``min_pixels`` usable
pixels; neither does an eye whose colour comes out red to magenta
(:func:`implausibly_red`: a flash's red eye, or lid pink on a small eye).

A flash's red eye is read round the glow instead: an eye whose pupil disc glows
(:func:`red_glow`: red to magenta, as saturated as the skin round the eye or more,
and lit, unlike a dark pupil) is sampled bilinearly at full resolution over the
annulus, glowing samples out (:func:`red_eye_samples`), both such eyes pooled and
read under a stated pixel rule (:func:`red_eye_colour`), then de-lit like the rest;
``note`` says how it went or why not. On the development set's flash photos the
irises are 4-5 px in radius and what is left round the glow reads a pink-tinged grey.
With no usable eye the colour is :data:`DEFAULT_IRIS` and ``source`` says
``"default"``. The sclera keeps the default white
(:data:`avatarsdk.materials.SCLERA_SRGB`): its pixels set the exposure, so
reading its colour from them would be circular.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import map_coordinates
from PIL import Image, ImageDraw

from avatarsdk.colour import linear_to_srgb, srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.render.shading import sh_shading

__all__ = ["DEFAULT_IRIS", "IrisColour", "eye_openness", "eyes_behind_glasses", "implausibly_red", "iris_colour",
           "iris_pixels"]

DEFAULT_IRIS: tuple[float, float, float] = (0.35, 0.25, 0.15)
"""sRGB iris albedo when no eye is usable (a mid brown, the commonest iris colour)."""

# Mediapipe face-mesh indices per eye (subject's side): iris centre, iris rim,
# eye corners (outer, inner), lid midpoints (upper, lower), the eye-opening loop.
_EYES = {
    "right": dict(centre=468, rim=(469, 470, 471, 472), corners=(33, 133), lids=(159, 145),
                  loop=(33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)),
    "left": dict(centre=473, rim=(474, 475, 476, 477), corners=(263, 362), lids=(386, 374),
                 loop=(263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)),
}
_NOT_IRIS = ("background", "skin", "l_brow", "r_brow", "nose", "hair", "hat", "cloth")
_PUPIL = 0.40  # fraction of the iris radius kept out as pupil (a photo's pupil is ~30-50% of the iris)
_RIM = 0.90  # fraction of the iris radius kept (the limbus blurs into the sclera)
_FORWARD = (0.0, 0.0, 1.0)  # model-frame normal of an eye looking at the camera


@dataclass(frozen=True)
class IrisColour:
    """The iris albedo chosen for an avatar.

    Attributes:
        colour: sRGB iris albedo, three values in [0, 1].
        source: "photo" (read from the photo) or "default" (no usable eye).
        pixels: iris pixels the colour was read from (both eyes).
        per_eye: side -> {"pixels", "openness", "used"} diagnostics, and "red": True for an eye
            whose colour was red to magenta (:func:`implausibly_red`: not used); an eye with a
            flash's red eye has "red_eye": True, "glow" (share of its pupil disc glowing) and
            "iris_pixels" (pixels left round the glow).
        note: how red-eye eyes were read or why not (:func:`red_eye_colour`); empty without red eye.
    """

    colour: tuple[float, float, float]
    source: str
    pixels: int
    per_eye: dict
    note: str = ""

    def to_json(self) -> dict:
        out = {"colour": [round(float(c), 4) for c in self.colour], "source": self.source,
               "pixels": int(self.pixels), "per_eye": self.per_eye}
        return out | ({"note": self.note} if self.note else {})


def _points(points) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[0] < 478 or pts.shape[1] < 2:
        raise InputError(f"iris: need [478, 2+] landmarks with the refined iris points, got {pts.shape}")
    return pts[:, :2]


def eye_openness(points, side: str) -> float:
    """Lid gap over eye width (upper/lower lid midpoints over the corners): ~0.3 open, < 0.1 closed."""
    xy = _points(points)
    e = _EYES[side]
    width = float(np.linalg.norm(xy[e["corners"][0]] - xy[e["corners"][1]]))
    gap = float(np.linalg.norm(xy[e["lids"][0]] - xy[e["lids"][1]]))
    return gap / max(width, 1e-6)


def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise InputError(f"iris: image must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
    return img


def _circle(xy: np.ndarray, side: str) -> tuple[np.ndarray, float]:
    """Iris centre (x, y) and radius in pixels, from the refined iris landmarks."""
    e = _EYES[side]
    centre = xy[e["centre"]]
    return centre, float(np.linalg.norm(xy[list(e["rim"])] - centre, axis=1).mean())


def _usable(img: np.ndarray, xy: np.ndarray, side: str, parsing, lid_margin: float):
    """Pixels of the eye opening that may show iris, and the median sRGB skin round the eye.

    The opening shrunk by ``lid_margin`` of the eye's width (lids, lashes), less lid-skin
    pixels and, with the BiSeNet parse, less occluders (see :func:`iris_pixels`). The skin is
    the median of a ring round the opening (a quarter of the eye's width each way), or None
    when the ring has fewer than 10 pixels.

    Returns:
        ([H, W] bool mask, [3] float sRGB 0-255 skin or None).
    """
    e = _EYES[side]
    h, w = img.shape[:2]
    width = float(np.linalg.norm(xy[e["corners"][0]] - xy[e["corners"][1]]))
    grow = max(1, int(round(lid_margin * width)))
    poly = [tuple(p) for p in xy[list(e["loop"])]]
    opening = Image.new("1", (w, h), 0)
    ImageDraw.Draw(opening).polygon(poly, fill=1)
    lids = Image.new("1", (w, h), 0)
    ImageDraw.Draw(lids).line(poly + poly[:1], fill=1, width=2 * grow + 1)
    mask = np.asarray(opening, bool) & ~np.asarray(lids, bool)
    # Lid skin: on small eyes the iris circle overlaps the lids by more than the margin.
    # Drop candidates whose chromaticity is within 0.035 of the skin around the eye and
    # whose brightness is skin-like (the skin ring: the opening grown by a quarter width).
    ring = Image.new("1", (w, h), 0)
    ImageDraw.Draw(ring).line(poly + poly[:1], fill=1, width=max(3, int(round(0.5 * width))))
    ring_mask = np.asarray(ring, bool) & ~np.asarray(opening, bool)
    skin = None
    if ring_mask.sum() >= 10:
        skin = np.median(img[ring_mask][:, :3].astype(np.float64), axis=0)
        px = img[..., :3].astype(np.float64)
        total = px.sum(-1, keepdims=True).clip(1)
        chroma = px[..., :2] / total
        skin_chroma = skin[:2] / max(skin.sum(), 1)
        near = np.linalg.norm(chroma - skin_chroma, axis=-1) < 0.035
        bright = total[..., 0] > 0.6 * skin.sum()
        mask &= ~(near & bright)
    if parsing is not None and getattr(parsing, "method", None) == "bisenet":
        # Drop what the parser calls an occluder or another part (a hand reads as skin, a
        # fringe as hair); keep eye, eyeglasses and unparsed pixels: behind glasses the
        # parser says "eye_g", and on small faces it often labels no eye at all.
        mask &= ~parsing.mask(*_NOT_IRIS)
    return mask, skin


def iris_pixels(image: np.ndarray, points, *, side: str, parsing=None, lid_margin: float = 0.04) -> np.ndarray:
    """The photo's pixels of one iris.

    Args:
        image: [H, W, 3] uint8 sRGB photo.
        points: [478, 2 or 3] face-mesh landmarks in pixels (x right, y down).
        side: "left" or "right" (the subject's).
        parsing: optional :class:`~avatarsdk.datatypes.FaceParse`; with ``method ==
            "bisenet"`` pixels parsed as skin, hair, hat, brows, nose, cloth or
            background (occluders: a hand parses as skin) are dropped.
        lid_margin: the eye opening is shrunk by this fraction of the eye's width.

    Returns:
        [N, 3] uint8 pixels (N may be 0).
    """
    if side not in _EYES:
        raise InputError(f"side must be 'left' or 'right', got {side!r}")
    img = _check_image(image)
    xy = _points(points)
    h, w = img.shape[:2]
    mask, _ = _usable(img, xy, side, parsing, lid_margin)
    centre, radius = _circle(xy, side)
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2
    mask &= (r2 <= (_RIM * radius) ** 2) & (r2 >= (_PUPIL * radius) ** 2)
    return img[mask][:, :3]


def red_glow(srgb: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Which sRGB samples are a flash's red-eye glow: red to magenta, as vivid as the skin or more, and lit.

    A sample glows when red is its largest channel and blue at least :data:`RED_BG` times
    green (the red-to-magenta hues of :func:`implausibly_red`: brown and amber irises are
    orange, blue is far below green), its saturation ``1 - min/max`` is at least the
    skin's round the eye (in the same light no blue, grey, green or hazel iris is as
    saturated toward red as skin; the glow is), and its red is at least
    :data:`GLOW_MIN_RED` of the skin's (a flash's glow is lit from inside the eye; a
    dark pupil in a warm photo has a red hue too, but no light).

    Args:
        srgb: [N, 3] sRGB samples, 0-255.
        skin: [3] sRGB skin colour round the eye, 0-255.

    Returns:
        [N] bool.
    """
    px = np.asarray(srgb, np.float64)
    skin = np.asarray(skin, np.float64)
    top = px.max(1)
    sat = 1.0 - px.min(1) / np.maximum(top, 1e-6)
    skin_sat = 1.0 - skin.min() / max(skin.max(), 1e-6)
    hue = (px[:, 0] >= top) & (px[:, 2] >= RED_BG * px[:, 1])
    return hue & (sat >= skin_sat) & (px[:, 0] >= GLOW_MIN_RED * skin[0])


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N, C] values of an [H, W, C] float image at subpixel points (pixel centres at integers, edges clamped)."""
    return np.stack([map_coordinates(image[..., c], [y, x], order=1, mode="nearest") for c in range(image.shape[2])],
                    -1)


@dataclass(frozen=True)
class RedEye:
    """One eye's flash red-eye test and, when it is one, its iris samples without the glow.

    Attributes:
        red_eye: the centre of the iris glows red (:func:`red_glow` on at least
            :data:`RED_EYE_FRACTION` of its samples).
        glow: share of the centre's samples that glow (0 when none was usable).
        samples: [N, 3] linear-light iris samples of the annulus, glow excluded (empty unless red eye).
        pixels: distinct photo pixels those samples lie on (nearest pixel).
    """

    red_eye: bool
    glow: float
    samples: np.ndarray
    pixels: int


def red_eye_samples(image: np.ndarray, points, *, side: str, parsing=None, lid_margin: float = 0.04,
                    rings: int = 16, angles: int = 64) -> RedEye:
    """Test one eye for a flash's red eye and, when it has one, sample its iris without the glow.

    On a polar grid over the iris circle (``rings`` rings of equal area, ``angles``
    angles) the photo is sampled bilinearly in linear light at full resolution: an
    iris of 5 px radius has some 50 pixels, many of them mixed with the glow or the
    sclera, and subpixel samples weigh each by how much of it lies in the annulus.
    Samples count only where the nearest pixel is usable (:func:`iris_pixels`' mask:
    the opening away from the lids, no lid skin, no occluder). The eye has red eye when
    at least :data:`RED_EYE_FRACTION` of the usable samples of the pupil disc (radius
    ``_PUPIL`` of the iris) are :func:`red_glow`; then the annulus (``_PUPIL`` to
    ``_RIM`` of the radius) less its glowing samples is the iris.

    Returns:
        :class:`RedEye`.
    """
    if side not in _EYES:
        raise InputError(f"side must be 'left' or 'right', got {side!r}")
    img = _check_image(image)
    xy = _points(points)
    mask, skin = _usable(img, xy, side, parsing, lid_margin)
    empty = RedEye(False, 0.0, np.zeros((0, 3)), 0)
    if skin is None:
        return empty
    centre, radius = _circle(xy, side)
    rho = np.sqrt((np.arange(rings) + 0.5) / rings) * _RIM  # equal-area rings out to the rim
    theta = 2 * np.pi * (np.arange(angles) + 0.5) / angles
    rr = np.repeat(rho, angles)
    x = centre[0] + radius * rr * np.tile(np.cos(theta), rings)
    y = centre[1] + radius * rr * np.tile(np.sin(theta), rings)
    h, w = img.shape[:2]
    xi, yi = np.clip(np.round(x).astype(int), 0, w - 1), np.clip(np.round(y).astype(int), 0, h - 1)
    ok = mask[yi, xi]
    # Linear light of the iris's box only (2 px margin: bilinear needs the neighbours).
    x0, y0 = max(0, int(np.floor(centre[0] - radius)) - 2), max(0, int(np.floor(centre[1] - radius)) - 2)
    x1, y1 = min(w, int(np.ceil(centre[0] + radius)) + 3), min(h, int(np.ceil(centre[1] + radius)) + 3)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return empty
    lin = _bilinear(srgb_to_linear(img[y0:y1, x0:x1, :3].astype(np.float32) / 255.0), x - x0, y - y0)
    glow = red_glow(linear_to_srgb(lin) * 255.0, skin)
    pupil = ok & (rr < _PUPIL)
    if pupil.sum() < 4:
        return empty
    share = float(glow[pupil].mean())
    if share < RED_EYE_FRACTION:
        return RedEye(False, share, np.zeros((0, 3)), 0)
    keep = ok & (rr >= _PUPIL) & ~glow
    pixels = len(set(zip(yi[keep].tolist(), xi[keep].tolist())))
    return RedEye(True, share, lin[keep], pixels)


def eyes_behind_glasses(parsing, points, *, min_fraction: float = 0.5) -> tuple[str, ...]:
    """The eyes (subject's "right", "left") that the parse puts behind eyeglasses.

    An eye counts when at least ``min_fraction`` of the pixels of its iris circle
    (refined iris landmarks) are parsed ``eye_g``: the parser labels a lens with
    the eye behind it as glasses. Lenses tint and reflect, and frames cross the
    eye white, so the sclera there is no exposure reference
    (:func:`avatarsdk.pipeline.photo_exposure`). Only the "bisenet" parse knows
    glasses; for any other (or None) the answer is empty.

    Args:
        parsing: :class:`~avatarsdk.datatypes.FaceParse` or None.
        points: [478, 2 or 3] face-mesh landmarks in pixels.
        min_fraction: share of the iris circle parsed as glasses.

    Returns:
        The sides behind glasses, in the order ("right", "left").
    """
    if parsing is None or getattr(parsing, "method", None) != "bisenet":
        return ()
    xy = _points(points)
    glasses = parsing.glasses
    h, w = glasses.shape
    out = []
    for side in ("right", "left"):
        e = _EYES[side]
        centre = xy[e["centre"]]
        radius = max(1.0, float(np.linalg.norm(xy[list(e["rim"])] - centre, axis=1).mean()))
        x0, x1 = max(0, int(centre[0] - radius)), min(w, int(centre[0] + radius) + 1)
        y0, y1 = max(0, int(centre[1] - radius)), min(h, int(centre[1] + radius) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
        if disc.any() and glasses[y0:y1, x0:x1][disc].mean() >= min_fraction:
            out.append(side)
    return tuple(out)


RED_RG = 1.4
"""sRGB red over green at or above which an iris colour may be implausibly red (:func:`implausibly_red`)."""
RED_BG = 0.75
"""sRGB blue over green at or above which such a colour is red to magenta rather than brown."""
GLOW_MIN_RED = 0.4
"""A red-eye glow's sRGB red is at least this share of the skin's (:func:`red_glow`): it is lit, a pupil is dark."""
RED_EYE_FRACTION = 0.5
"""Share of the pupil disc's usable samples that must glow for an eye to count as a flash's red eye."""
RED_EYE_AGREE = 0.03
"""With few red-eye iris pixels, the two eyes' chromaticities (r, g over r+g+b) must agree within this."""


def implausibly_red(linear_rgb) -> bool:
    """Whether a linear iris colour is red to magenta, which no iris is (a flash's red eye, lid or eye-corner pink).

    In sRGB: red at least :data:`RED_RG` times green and blue at least :data:`RED_BG`
    times green. Brown and amber irises are as red against green but their blue is
    far below green (orange hues); hazel, green, blue and grey ones are not red.
    On the development set's flash photos a red-eye pupil and the pink of small,
    lid-crowded eyes gave such colours (sRGB like (138, 77, 71)); a dark brown
    with this much blue falls back to :data:`DEFAULT_IRIS`, a mid brown.
    """
    r, g, b = linear_to_srgb(torch.as_tensor(np.asarray(linear_rgb, np.float32))).tolist()
    g = max(g, 1e-3)
    return r >= RED_RG * g and b >= RED_BG * g


def _robust_linear(lin: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per-channel median of the middle 60% by luminance of linear samples, those not ``keep`` (clipped) out."""
    lum = lin @ np.array([0.2126, 0.7152, 0.0722])
    lo, hi = np.quantile(lum[keep], [0.2, 0.8]) if keep.any() else (0.0, 0.0)
    keep = keep & (lum >= lo) & (lum <= hi)
    return np.median(lin[keep], axis=0) if keep.sum() >= 3 else np.median(lin, axis=0)


def _robust_colour(px: np.ndarray) -> np.ndarray:
    """Linear-light per-channel median of the middle 60% by luminance, highlights and clipped pixels out."""
    lin = srgb_to_linear(torch.from_numpy(px.astype(np.float32) / 255.0)).numpy()
    return _robust_linear(lin, px.max(1) < 250)  # clipped: a highlight


_CLIPPED = float(srgb_to_linear(np.float64(250 / 255)))  # linear value of sRGB 250: a highlight


def _chroma(lin: np.ndarray) -> np.ndarray:
    """(r, g) over r + g + b of a linear colour."""
    return np.asarray(lin[:2]) / max(float(np.sum(lin)), 1e-6)


def red_eye_colour(eyes: dict[str, RedEye], *, min_pixels: int = 12, delight=None) -> tuple[np.ndarray | None, int, str]:
    """The iris colour of the red-eye eyes, pooled, or None with the reason.

    The glow-free annulus samples of both eyes (:func:`red_eye_samples`) are pooled and
    read like any iris (:func:`_robust_colour`'s median of the middle 60%, clipped
    highlights out). The rule on how many pixels are enough, and why:

    * ``min_pixels`` distinct photo pixels or more, both eyes together: read, as an
      eye without red eye needs ``min_pixels`` of its own;
    * fewer, but at least half of that, and each of the two eyes with 3 pixels or more
      whose colours agree (chromaticity within :data:`RED_EYE_AGREE`): read; two eyes
      that agree are two witnesses of the same colour, which one eye's few pixels,
      mixed with glow and lid at their edges, are not;
    * otherwise, or when the pooled colour is still red to magenta
      (:func:`implausibly_red`: glow left in it), or would be once de-lit by ``delight``
      (a function of a linear colour: the albedo the avatar would get; no iris is red to
      magenta, whether glow survived or the fitted light's colour pushes it there), None:
      the default is used.

    Returns:
        (linear colour or None, pixels pooled, reason: a short sentence for fit.json).
    """
    pixels = sum(e.pixels for e in eyes.values())
    if pixels == 0:
        return None, 0, "red eye: no iris pixel left after the glow"
    pooled = np.concatenate([e.samples for e in eyes.values() if e.pixels])
    colour = _robust_linear(pooled, pooled.max(1) < _CLIPPED)
    if pixels < min_pixels:
        each = [e for e in eyes.values() if e.pixels >= 3]
        if pixels * 2 < min_pixels or len(each) < 2:
            return None, pixels, (f"red eye: {pixels} iris pixels left after the glow "
                                  f"({', '.join(f'{s} {e.pixels}' for s, e in eyes.items())}), fewer than "
                                  f"{min_pixels} and not two eyes of 3 or more that agree")
        a, b = (_chroma(_robust_linear(e.samples, e.samples.max(1) < _CLIPPED)) for e in each)
        if np.linalg.norm(a - b) > RED_EYE_AGREE:
            return None, pixels, f"red eye: {pixels} iris pixels, the two eyes disagree (chromaticity {np.linalg.norm(a - b):.3f})"
    if implausibly_red(colour):
        return None, pixels, "red eye: the iris left after the glow is still red to magenta"
    if delight is not None and implausibly_red(np.clip(delight(colour), 0.0, 1.0)):
        srgb = np.round(linear_to_srgb(np.clip(delight(colour), 0.0, 1.0)) * 255).astype(int).tolist()
        return None, pixels, (f"red eye: {pixels} iris pixels read, but de-lit their colour is red to magenta "
                              f"(sRGB {tuple(srgb)}), which no iris is")
    return colour, pixels, f"red eye: read from {pixels} iris pixels round the glow ({', '.join(eyes)})"


def iris_colour(
    image: np.ndarray,
    points,
    light: np.ndarray,
    *,
    exposure: float = 1.0,
    parsing=None,
    min_pixels: int = 12,
    min_open: float = 0.12,
) -> IrisColour:
    """Read the iris albedo from the photo (see the module docstring).

    Args:
        image: [H, W, 3] uint8 sRGB photo.
        points: [478, 2 or 3] face-mesh landmarks with the refined iris points.
        light: [9, 3] fitted SH light (model frame), as the skin is de-lit with.
        exposure: the exposure scale the skin albedo is divided by.
        parsing: optional :class:`~avatarsdk.datatypes.FaceParse` (eye classes).
        min_pixels: an eye with fewer usable pixels is not used.
        min_open: an eye whose lid gap is below this fraction of its width counts as closed.

    Returns:
        :class:`IrisColour`; ``source == "default"`` with :data:`DEFAULT_IRIS` when no eye is usable.

    Raises:
        InputError: malformed image, landmarks or light.
    """
    light = np.asarray(light, np.float32)
    if light.shape != (9, 3) or not np.isfinite(light).all():
        raise InputError(f"iris: light must be finite [9, 3] SH coefficients, got {light.shape}")
    if not (np.isfinite(exposure) and exposure > 0):
        raise InputError(f"iris: exposure must be > 0, got {exposure!r}")
    shade = sh_shading(torch.tensor([_FORWARD]), torch.from_numpy(light))[0].numpy()  # [3]

    def delight(lin):
        return lin / np.maximum(shade, 1e-3) / exposure

    per_eye, colours, counts, flash = {}, [], [], {}
    for side in ("right", "left"):
        openness = eye_openness(points, side)
        px = iris_pixels(image, points, side=side, parsing=parsing)
        per_eye[side] = {"pixels": int(len(px)), "openness": round(openness, 3), "used": False}
        if openness < min_open:
            continue
        flashed = red_eye_samples(image, points, side=side, parsing=parsing)
        if flashed.red_eye:  # read round the glow, both eyes pooled (red_eye_colour)
            per_eye[side] |= {"red_eye": True, "glow": round(flashed.glow, 3), "iris_pixels": flashed.pixels}
            flash[side] = flashed
            continue
        used = len(px) >= min_pixels
        colour = _robust_colour(px) if used else None
        red = colour is not None and implausibly_red(colour)
        per_eye[side]["used"] = bool(used and not red)
        if red:
            per_eye[side]["red"] = True
        elif used:
            colours.append(colour)
            counts.append(len(px))
    note = ""
    if flash:
        colour, pixels, note = red_eye_colour(flash, min_pixels=min_pixels, delight=delight)
        if colour is not None:
            colours.append(colour)
            counts.append(pixels)
            for side in flash:
                per_eye[side]["used"] = flash[side].pixels > 0
    if not colours:
        return IrisColour(colour=DEFAULT_IRIS, source="default", pixels=0, per_eye=per_eye, note=note)
    lin = np.average(np.stack(colours), axis=0, weights=counts)
    albedo = np.clip(delight(lin), 0.0, 1.0)
    srgb = linear_to_srgb(torch.from_numpy(albedo.astype(np.float32))).numpy()
    return IrisColour(colour=tuple(float(c) for c in np.clip(srgb, 0, 1)), source="photo", pixels=int(sum(counts)),
                      per_eye=per_eye, note=note)
