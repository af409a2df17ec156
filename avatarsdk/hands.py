"""Hands in the photo, as an occluder mask for the face (mediapipe hand landmarks).

The face parser (:mod:`avatarsdk.parse`) calls a hand on the chin "skin": its
training labels have no hand class. Mediapipe 0.10.21's hand landmark solution
(palm detector + 21-point hand landmark model, Apache-2.0, shipped inside the
wheel, so it runs offline and stays on in permissive mode) finds the hands;
each becomes the convex hull of its 21 landmarks, grown by a fraction of the
hand's size (the landmarks sit on the joints' centre line, the fingers have
width), and the union is an occluder of :class:`~avatarsdk.datatypes.FaceParse`.

Typical use::

    from avatarsdk.hands import detect_hands, hand_mask
    hands = detect_hands(photo)                    # list of [21, 2] pixel arrays
    mask = hand_mask(hands, photo.image.shape[:2])  # [H, W] bool
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt
from scipy.spatial import ConvexHull, QhullError

from avatarsdk.detect import DETECT_MAX_SIDE, _quiet_stderr, _resize
from avatarsdk.errors import ConfigError, InputError
from avatarsdk.datatypes import Photo

__all__ = ["detect_hands", "hand_mask", "MAX_HANDS", "HAND_GROW", "close"]

log = logging.getLogger(__name__)

MAX_HANDS = 4
"""Most hands looked for in one photo (two people holding a face count)."""

MIN_HAND_CONFIDENCE = 0.5
HAND_GROW = 0.12
"""Dilation of each hand's hull, as a fraction of the hand's size (max side of its landmark box)."""

_LOCK = threading.Lock()
_SOLUTION: dict[int, object] = {}
_ORPHANS: list[object] = []  # a forked parent's graphs: referenced forever so their destructors never run here


def _hands_solution():
    """The per-process mediapipe Hands graph (static images, full model)."""
    pid = os.getpid()
    obj = _SOLUTION.get(pid)
    if obj is None:
        try:
            # local: mediapipe is heavy to import and only hand detection needs it here
            from mediapipe.python.solutions import hands
        except ImportError as e:
            raise ConfigError(f"mediapipe is not usable ({e}); hand detection needs mediapipe==0.10.21: "
                              "run `make setup`") from None
        obj = hands.Hands(static_image_mode=True, max_num_hands=MAX_HANDS, model_complexity=1,
                          min_detection_confidence=MIN_HAND_CONFIDENCE)
        _ORPHANS.extend(_SOLUTION.values())  # a forked child must not touch the parent's graph (avatarsdk.detect)
        _SOLUTION.clear()
        _SOLUTION[pid] = obj
    return obj


def close() -> None:
    """Release the cached hand graph (rebuilt on the next call)."""
    with _LOCK:
        obj = _SOLUTION.pop(os.getpid(), None)
        if obj is not None:
            obj.close()


def detect_hands(photo: Photo) -> list[np.ndarray]:
    """Find the hands in a photo.

    Photos whose longer side exceeds :data:`avatarsdk.detect.DETECT_MAX_SIDE`
    are searched on a downscaled copy; coordinates are the photo's pixels.

    Args:
        photo: the photo (:func:`avatarsdk.photo.load_photo`).

    Returns:
        One [21, 2] float64 array of (x, y) pixel coordinates per hand found
        (mediapipe's hand landmark order), possibly empty.

    Raises:
        InputError: the photo is not [H, W, 3] uint8.
        ConfigError: mediapipe is not installed.
    """
    image = getattr(photo, "image", None)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"hand detection needs a Photo with an [H, W, 3] uint8 image, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    small, scale = _resize(image, DETECT_MAX_SIDE)
    h, w = small.shape[:2]
    with _LOCK, _quiet_stderr():
        res = _hands_solution().process(np.ascontiguousarray(small))
    out = []
    for hl in res.multi_hand_landmarks or []:
        p = np.array([[lm.x * w, lm.y * h] for lm in hl.landmark], np.float64)
        out.append((p + 0.5) * scale - 0.5)  # pixel centres of the small copy -> the photo's
    log.debug("hands: %d found", len(out))
    return out


def hand_mask(hands: list[np.ndarray], shape: tuple[int, int], *, grow: float = HAND_GROW) -> np.ndarray:
    """Rasterise hands into an occluder mask.

    Each hand is the convex hull of its landmarks, grown by ``grow`` times its
    size (the longer side of its landmark box): the landmarks run along the
    middle of the fingers and the palm's edge, so the bare hull misses half a
    finger's width all round.

    Args:
        hands: [N, 2] (x, y) pixel arrays, e.g. from :func:`detect_hands`.
        shape: (H, W) of the photo.
        grow: dilation as a fraction of each hand's size.

    Returns:
        [H, W] bool, True on (or near) a hand.

    Raises:
        InputError: a hand that is not [N >= 3, 2] finite points.
    """
    h, w = shape
    out = np.zeros((h, w), bool)
    for p in hands:
        p = np.asarray(p, np.float64)
        if p.ndim != 2 or p.shape[0] < 3 or p.shape[1] != 2 or not np.all(np.isfinite(p)):
            raise InputError(f"a hand must be [N >= 3, 2] finite points, got {p.shape}")
        try:
            poly = p[ConvexHull(p).vertices]
        except QhullError:  # collinear points: the segment, grown below
            poly = p
        r = max(0, round(grow * float((p.max(0) - p.min(0)).max())))
        # Draw and grow inside the hand's box only (a big photo's full frame would be slow).
        x0, y0 = np.floor(p.min(0)).astype(int) - r - 1
        x1, y1 = np.ceil(p.max(0)).astype(int) + r + 2
        bx0, by0, bx1, by1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if bx1 <= bx0 or by1 <= by0:
            continue  # entirely outside the photo
        img = Image.new("1", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(img).polygon([(float(x - x0), float(y - y0)) for x, y in poly], fill=1, outline=1)
        one = np.asarray(img, bool)
        if r > 0:
            one = distance_transform_edt(~one) <= r
        out[by0:by1, bx0:bx1] |= one[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
    return out
