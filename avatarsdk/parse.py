"""Face parsing: which pixels of the photo are skin, hair, lips, glasses, cloth, background...

Two parsers, one result type (:class:`~avatarsdk.datatypes.FaceParse`, labels at the
photo's resolution):

* ``"bisenet"`` (default): the 19-class CelebAMask-HQ BiSeNet
  (:mod:`avatarsdk.nn.parsing`) on a face-aligned 512 x 512 crop. The crop is
  the FFHQ / CelebA-HQ alignment (Karras et al. 2019) computed from the face
  mesh's iris centres and mouth corners, so the face sits where the network saw
  faces in training::

      e = (iris_r + iris_l) / 2        m = (mouth_r + mouth_l) / 2
      x = (iris_l - iris_r) - rot90(m - e)   normalised, times max(2 |iris_l - iris_r|, 1.8 |m - e|)
      y = rot90(x)                     c = e + 0.1 (m - e)
      crop square: corners c - x - y (top left) ... c + x + y (bottom right)

  The photo is resampled into the crop (box-filtered first when the crop is
  more than 1.5x larger than 512 px, as the original's PIL resize does), ImageNet-
  normalised, and the logits are sampled back bilinearly at photo pixel centres
  (on a grid of ``floor(scale)`` pixels, then nearest-upsampled, when the crop
  is larger than the network's input). Pixels outside the crop are
  :data:`~avatarsdk.datatypes.UNPARSED`. The weights' terms are non-commercial
  (CelebAMask-HQ); see :mod:`avatarsdk.licensing`.
* ``"mesh"``: the face-mesh polygons and the selfie mask that the SDK used
  before a parser was available (and uses in permissive mode): face oval on the
  person -> skin; brow, eye and lip polygons; the inner lip loop -> mouth
  interior; off the person -> background; the rest of the person unparsed. It
  cannot tell hair, hands or glasses from skin.

Typical use::

    from avatarsdk.parse import parse_face
    parsing = parse_face(photo, landmarks)          # FaceParse
    parsing.hair, parsing.face_surface               # [H, W] bool
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from avatarsdk.detect import _area, _chains, _face_polygons, _polygon
from avatarsdk.errors import InputError
from avatarsdk.hands import detect_hands, hand_mask
from avatarsdk.datatypes import LEFT_IRIS, PARSE_CLASSES, RIGHT_IRIS, UNPARSED, FaceParse, Landmarks, Photo
from avatarsdk.nn.parsing import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, load_bisenet

__all__ = ["COVERED_LIPS", "PARSERS", "PARSE_THREADS", "align_crop", "covered_mouth", "overlay", "parse_face",
           "PALETTE"]

log = logging.getLogger(__name__)

PARSERS = ("bisenet", "mesh")

PARSE_THREADS = 2
"""Intra-op threads for the parser's forward (the target machine has 2 cores)."""

# Mediapipe face-mesh indices: iris centres (refined landmarks) and mouth corners.
_IRIS_R, _IRIS_L = RIGHT_IRIS[0], LEFT_IRIS[0]  # subject's right eye (image left), subject's left eye
_MOUTH_R, _MOUTH_L = 61, 291
_NOSE_TIP = 1

PALETTE = np.array([
    (0, 0, 0), (255, 200, 150), (120, 60, 20), (160, 80, 30), (0, 120, 255), (0, 200, 255), (200, 0, 200),
    (255, 120, 0), (255, 170, 0), (255, 255, 0), (255, 110, 110), (40, 40, 40), (220, 0, 60), (150, 0, 40),
    (120, 220, 120), (0, 255, 180), (60, 60, 200), (110, 60, 0), (255, 0, 255),
], np.uint8)
"""[19, 3] sRGB colour per class for overlays (index as :data:`~avatarsdk.datatypes.PARSE_CLASSES`)."""

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _network():
    return load_bisenet()


def align_crop(landmarks: Landmarks) -> np.ndarray:
    """The face-aligned square crop of a photo (FFHQ / CelebA-HQ alignment from the face mesh).

    Args:
        landmarks: from :func:`avatarsdk.detect.detect` (478 points, irises included).

    Returns:
        [3, 2] float64 photo pixel coordinates (x, y; pixel centres at integers)
        of the crop's top-left, top-right and bottom-left corners (edge corners).

    Raises:
        InputError: fewer than 478 points, or non-finite or degenerate eye/mouth points.
    """
    pts = np.asarray(landmarks.points, np.float64)
    if pts.ndim != 2 or pts.shape[0] < 478 or pts.shape[1] < 2:
        raise InputError(f"parsing needs 478 face-mesh landmarks with irises, got shape {pts.shape}")
    eye_r, eye_l = pts[_IRIS_R, :2], pts[_IRIS_L, :2]
    mouth = (pts[_MOUTH_R, :2] + pts[_MOUTH_L, :2]) / 2
    if not np.all(np.isfinite([eye_r, eye_l, mouth])):
        raise InputError("parsing: the eye or mouth landmarks are not finite")
    eye = (eye_r + eye_l) / 2
    eye_to_eye = eye_l - eye_r
    eye_to_mouth = mouth - eye
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # eye line minus the mouth direction turned 90 deg
    norm = float(np.hypot(*x))
    half = max(2.0 * float(np.hypot(*eye_to_eye)), 1.8 * float(np.hypot(*eye_to_mouth)))
    if not norm > 1e-6 or not half > 1.0:
        raise InputError(f"parsing: degenerate face (eye distance {np.hypot(*eye_to_eye):.2f} px)")
    x = x / norm * half
    y = np.array([-x[1], x[0]])
    c = eye + 0.1 * eye_to_mouth
    return np.stack([c - x - y, c + x - y, c - x + y])


def _crop_affine(corners: np.ndarray, size: int) -> np.ndarray:
    """[2, 3] map from crop pixel centres (x, y) to photo pixel centres."""
    tl, tr, bl = corners
    ax, ay = (tr - tl) / size, (bl - tl) / size
    origin = tl + 0.5 * ax + 0.5 * ay  # crop pixel centre 0 lies half a crop pixel inside the edge corner
    return np.stack([ax, ay, origin], 1)  # columns: d/dx_crop, d/dy_crop, offset


def _sample_crop(image: np.ndarray, affine: np.ndarray, size: int) -> torch.Tensor:
    """Resample the photo into the crop: [3, size, size] float32 RGB in [0, 1] (black outside the photo)."""
    h, w = image.shape[:2]
    scale = float(np.hypot(*affine[:, 0]))  # photo pixels per crop pixel
    src = image
    if scale > 1.5:  # box-filter down first: bilinear sampling alone would alias
        k = scale
        src = np.asarray(Image.fromarray(image).resize((max(1, round(w / k)), max(1, round(h / k))),
                                                       Image.Resampling.BOX))
    q = torch.arange(size, dtype=torch.float64)
    gy, gx = torch.meshgrid(q, q, indexing="ij")
    a = torch.from_numpy(affine)
    px = a[0, 0] * gx + a[0, 1] * gy + a[0, 2]  # photo pixel centres
    py = a[1, 0] * gx + a[1, 1] * gy + a[1, 2]
    # photo centre -> photo edge coordinate -> grid_sample's [-1, 1] (align_corners=False; the same for `src`)
    grid = torch.stack([(px + 0.5) / w * 2 - 1, (py + 0.5) / h * 2 - 1], -1)
    img = torch.from_numpy(np.array(src, np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    out = F.grid_sample(img, grid[None].float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0]


def _normalise(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (rgb - mean) / std


def _logits(crop: torch.Tensor) -> torch.Tensor:
    """[19, S, S] logits of a [3, S, S] crop in [0, 1]."""
    net = _network()
    with _LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(PARSE_THREADS)
        try:
            with torch.inference_mode():
                return net(_normalise(crop)[None])[0]
        finally:
            torch.set_num_threads(threads)


def _labels_back(logits: torch.Tensor, affine: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Sample crop logits at the photo's pixel centres; [H, W] uint8 labels, UNPARSED outside the crop."""
    h, w = hw
    size = logits.shape[-1]
    inv = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))[:2]  # photo centre -> crop centre
    # Photo-space bounding box of the crop.
    corners = affine @ np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1],
                                 [size - 0.5, size - 0.5, 1]], np.float64).T
    x0, x1 = max(0, math.floor(corners[0].min())), min(w - 1, math.ceil(corners[0].max()))
    y0, y1 = max(0, math.floor(corners[1].min())), min(h - 1, math.ceil(corners[1].max()))
    labels = np.full((h, w), UNPARSED, np.uint8)
    if x1 < x0 or y1 < y0:
        return labels
    step = max(1, math.floor(float(np.hypot(*affine[:, 0]))))  # sample no finer than the crop's own pixels
    xs = np.arange(x0, x1 + 1, step, dtype=np.float64) + (step - 1) / 2
    ys = np.arange(y0, y1 + 1, step, dtype=np.float64) + (step - 1) / 2
    gx, gy = np.meshgrid(xs, ys)
    cx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]  # crop pixel centres
    cy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    grid = torch.from_numpy(np.stack([(cx + 0.5) / size * 2 - 1, (cy + 0.5) / size * 2 - 1], -1)).float()
    sampled = F.grid_sample(logits[None], grid[None], mode="bilinear", padding_mode="border",
                            align_corners=False)[0]  # [19, h', w']
    lab = sampled.argmax(0).to(torch.uint8).numpy()
    inside = (cx >= -0.5) & (cx <= size - 0.5) & (cy >= -0.5) & (cy <= size - 0.5)
    lab = np.where(inside, lab, UNPARSED).astype(np.uint8)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    if step > 1:
        lab = np.asarray(Image.fromarray(lab).resize((lab.shape[1] * step, lab.shape[0] * step),
                                                     Image.Resampling.NEAREST))[:bh, :bw]
    labels[y0:y1 + 1, x0:x1 + 1] = lab
    return labels


def _check(photo: Photo, landmarks: Landmarks) -> None:
    image = getattr(photo, "image", None)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"parsing needs a Photo with an [H, W, 3] uint8 image, got "
                         f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    h, w = image.shape[:2]
    if min(h, w) < 8:
        raise InputError(f"parsing needs a photo at least 8 x 8 pixels, got {w} x {h}")
    pts = getattr(landmarks, "points", None)
    if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[0] != 478 or pts.shape[1] < 2:
        raise InputError(f"parsing needs Landmarks with [478, 3] points, got {getattr(pts, 'shape', None)}")
    if not np.all(np.isfinite(pts[:, :2])):
        raise InputError("parsing: landmarks are not finite")
    xy = pts[:468, :2]
    if xy[:, 0].max() < -0.5 or xy[:, 0].min() > w - 0.5 or xy[:, 1].max() < -0.5 or xy[:, 1].min() > h - 0.5:
        raise InputError(f"parsing: the landmarks lie outside the {w} x {h} photo (landmarks from another photo?)")
    pm = getattr(landmarks, "person_mask", None)
    if not isinstance(pm, np.ndarray) or pm.shape != (h, w):
        raise InputError(f"parsing: person mask {getattr(pm, 'shape', None)} does not match the photo ({h}, {w})")


def parse_face(photo: Photo, landmarks: Landmarks, *, method: str = "bisenet", hands: bool = True) -> FaceParse:
    """Classify the photo's pixels around the face.

    Args:
        photo: the photo (:func:`avatarsdk.photo.load_photo`).
        landmarks: its detection (:func:`avatarsdk.detect.detect`).
        method: "bisenet" (the face-parsing network) or "mesh" (face-mesh polygons
            and the selfie mask; no weights beyond mediapipe's).
        hands: also find hands (:mod:`avatarsdk.hands`, mediapipe, Apache-2.0)
            and add them to the occluders, whatever the method (the network
            calls a hand on the chin skin).

    Returns:
        :class:`~avatarsdk.datatypes.FaceParse` with labels at the photo's resolution.

    Raises:
        InputError: unknown method; a photo that is not [H, W, 3] uint8 or under
            8 x 8; landmarks that are not 478 finite points inside the photo, or
            whose person mask does not match it.
        WeightsError: ("bisenet") the parser's weights are missing or tampered with.
    """
    if method not in PARSERS:
        raise InputError(f"parser must be one of {', '.join(PARSERS)}, got {method!r}")
    _check(photo, landmarks)
    if method == "mesh":
        parsing = _mesh_parse(photo, landmarks)
    else:
        affine = _crop_affine(align_crop(landmarks), INPUT_SIZE)
        crop = _sample_crop(photo.image, affine, INPUT_SIZE)
        logits = _logits(crop)
        labels = _labels_back(logits, affine, photo.image.shape[:2])
        parsing = FaceParse(labels=labels, method="bisenet", crop=affine)
    if not hands:
        return parsing
    found = detect_hands(photo)
    cover = hand_mask(found, photo.image.shape[:2])
    if method == "bisenet":
        covered = covered_mouth(photo, landmarks, parsing)
        if covered is not None:
            cover = cover | covered
    return dataclasses.replace(parsing, hands=cover, num_hands=len(found))


COVERED_LIPS = 0.7
"""A mouth counts as covered when the network finds lips or mouth on less than this fraction of the
face mesh's lip polygon (the mesh guesses the lips under a hand; the network sees the hand)."""

COVERED_SEED = 0.03
"""...or when skin covers a blob of at least this fraction of that polygon (past a rim where the two
outlines may disagree): fingers over part of the mouth."""


def covered_mouth(photo: Photo, landmarks: Landmarks, parsing: FaceParse) -> np.ndarray | None:
    """Pixels of a skin-coloured cover over the mouth (a hand or fingers that the hand model missed).

    The network calls a hand skin, but it does not call it lips: when less than :data:`COVERED_LIPS`
    of the face mesh's outer lip polygon is parsed as lips or mouth, or a skin blob covers
    :data:`COVERED_SEED` of it, the skin-labelled pixels in that polygon seed the cover, and a marker watershed (OpenCV) on the photo grows it against
    seeds of the upper face (skin, nose, brows, eyes above the nose tip) and of what is not the
    face (background, hair, hat, cloth). Without a covered mouth nothing is returned.

    Returns:
        [H, W] bool, or None when the lips are visible (or nothing seeds the cover).
    """
    h, w = photo.image.shape[:2]
    xy = landmarks.points[:, :2].astype(np.float64)
    _, outer = _lip_loops(xy)
    poly = Image.new("1", (w, h), 0)
    ImageDraw.Draw(poly).polygon([tuple(p) for p in xy[outer]], fill=1)
    lip_poly = np.asarray(poly, bool)
    if lip_poly.sum() < 20:
        return None
    lips = parsing.mask("u_lip", "l_lip", "mouth")
    # Skin inside the lip polygon, less a rim (where a visible mouth's outline and the mesh's disagree).
    rim = max(2, round(0.04 * math.sqrt(lip_poly.sum())))
    seed = binary_erosion(lip_poly & parsing.mask("skin", "neck"), np.ones((3, 3), bool), iterations=rim)
    if lips[lip_poly].mean() >= COVERED_LIPS and seed.sum() < COVERED_SEED * lip_poly.sum():
        return None
    if seed.sum() < 10:
        return None
    # The upper face: above the line through the nose tip, square to the eyes-to-mouth direction.
    eyes = (xy[_IRIS_R] + xy[_IRIS_L]) / 2
    down = (xy[_MOUTH_R] + xy[_MOUTH_L]) / 2 - eyes
    down /= max(float(np.hypot(*down)), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w]
    above = (xx - xy[_NOSE_TIP, 0]) * down[0] + (yy - xy[_NOSE_TIP, 1]) * down[1] < 0
    face = above & parsing.mask("skin", "nose", "l_brow", "r_brow", "l_eye", "r_eye")
    other = parsing.mask("background", "hair", "hat", "cloth")
    markers = np.zeros((h, w), np.int32)
    markers[other] = 3
    markers[face] = 2
    markers[seed] = 1
    bgr = np.ascontiguousarray(photo.image[..., ::-1])
    cv2.watershed(bgr, markers)
    return markers == 1


def _lip_loops(xy: np.ndarray) -> tuple[list, list]:
    """(inner, outer) lip loops of the face mesh: landmark index lists."""
    from mediapipe.python.solutions import face_mesh_connections as fmc  # local: heavy; only the lip layout needs it

    inner, outer = sorted(_chains(fmc.FACEMESH_LIPS), key=lambda c: _area(xy[c]))
    return inner, outer


def _mesh_parse(photo: Photo, landmarks: Landmarks) -> FaceParse:
    """The polygon parser: what the face mesh and the selfie mask can tell."""
    from mediapipe.python.solutions import face_mesh_connections as fmc  # local: heavy; only this layout needs it

    h, w = photo.image.shape[:2]
    xy = landmarks.points[:, :2].astype(np.float64)
    idx = {n: PARSE_CLASSES.index(n) for n in PARSE_CLASSES}
    img = Image.new("L", (w, h), UNPARSED)
    draw = ImageDraw.Draw(img)
    oval, _ = _face_polygons()
    draw.polygon([tuple(p) for p in xy[oval]], fill=idx["skin"])
    # mediapipe's LEFT is the subject's left; CelebAMask-HQ's l_ is the subject's left too (checked on
    # the astronaut: the network puts l_brow on the image's right).
    for edges, name in ((fmc.FACEMESH_LEFT_EYEBROW, "l_brow"), (fmc.FACEMESH_RIGHT_EYEBROW, "r_brow"),
                        (fmc.FACEMESH_LEFT_EYE, "l_eye"), (fmc.FACEMESH_RIGHT_EYE, "r_eye")):
        draw.polygon([tuple(p) for p in xy[_polygon(edges)]], fill=idx[name])
    inner, outer = _lip_loops(xy)
    lips = Image.new("1", (w, h), 0)
    ImageDraw.Draw(lips).polygon([tuple(p) for p in xy[outer]], fill=1)
    mouth = Image.new("1", (w, h), 0)
    ImageDraw.Draw(mouth).polygon([tuple(p) for p in xy[inner]], fill=1)
    labels = np.array(img, np.uint8)
    lips_m, mouth_m = np.asarray(lips, bool), np.asarray(mouth, bool)
    # Upper lip above the line through the mouth corners, lower lip below it.
    a, b = xy[_MOUTH_R], xy[_MOUTH_L]
    yy, xx = np.mgrid[0:h, 0:w]
    below = (b[0] - a[0]) * (yy - a[1]) - (b[1] - a[1]) * (xx - a[0]) > 0
    labels[lips_m & ~below] = idx["u_lip"]
    labels[lips_m & below] = idx["l_lip"]
    labels[mouth_m] = idx["mouth"]
    labels[landmarks.person_mask <= 0.5] = idx["background"]
    return FaceParse(labels=labels, method="mesh", crop=None)


def overlay(photo: Photo, parsing: FaceParse, *, alpha: float = 0.55) -> np.ndarray:
    """The photo with each parsed class tinted in its :data:`PALETTE` colour (unparsed pixels greyed).

    Returns:
        [H, W, 3] uint8 sRGB.
    """
    img = photo.image.astype(np.float32)
    lab = parsing.labels
    colour = PALETTE[np.minimum(lab, len(PALETTE) - 1)].astype(np.float32)
    out = np.where((lab != UNPARSED)[..., None], (1 - alpha) * img + alpha * colour, 0.5 * img + 64)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

