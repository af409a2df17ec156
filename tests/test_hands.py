"""Hands as occluders: the mask from landmarks, the parse and unwrap drop them, a real photo's hand."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from avatarsdk.errors import InputError
from avatarsdk.hands import hand_mask
from avatarsdk.datatypes import PARSE_CLASSES, FaceParse

ROOT = Path(__file__).resolve().parents[1]
DEVSET = Path(os.environ.get("AVATARSDK_DEVSET", ROOT / "out" / "devset"))


def _synthetic_hand(cx: float, cy: float, size: float) -> np.ndarray:
    """21 points shaped like an open hand: wrist, then five fingers of four joints fanning upwards."""
    pts = [(cx, cy + 0.5 * size)]
    for f, ang in enumerate(np.radians([-50, -20, 0, 20, 40])):
        for j in range(1, 5):
            r = 0.2 * size + 0.2 * j * size * (0.8 if f == 0 else 1.0)
            pts.append((cx + r * np.sin(ang), cy + 0.5 * size - r * np.cos(ang)))
    return np.array(pts)


def test_hand_mask_covers_the_hull_and_grows():
    hand = _synthetic_hand(100, 120, 80)
    bare = hand_mask([hand], (240, 200), grow=0.0)
    grown = hand_mask([hand], (240, 200))
    assert bare.dtype == bool and bare.shape == (240, 200)
    # The bare mask is the hull (area within 5 %); every landmark lies in the grown mask, which
    # contains the bare one and reaches past it.
    from scipy.spatial import ConvexHull

    assert abs(bare.sum() / ConvexHull(hand).volume - 1) < 0.05
    xi, yi = np.round(hand).astype(int).T
    assert grown[yi, xi].all()
    assert (grown >= bare).all() and grown.sum() > 1.3 * bare.sum()
    # The hull is convex: the point between the thumb tip and the little finger tip is in it.
    mid = np.round((hand[4] + hand[20]) / 2).astype(int)
    assert bare[mid[1], mid[0]]
    # Far from the hand nothing is marked.
    assert not grown[:, :20].any() and not grown[230:].any()


def test_hand_mask_several_hands_clipping_and_bad_input():
    a, b = _synthetic_hand(40, 60, 50), _synthetic_hand(160, 200, 50)
    m = hand_mask([a, b], (240, 200))
    assert m[60, 40] and m[200, 160] and not m[120, 100]
    assert np.array_equal(m, hand_mask([a], (240, 200)) | hand_mask([b], (240, 200)))
    # A hand half outside the photo is clipped, one wholly outside marks nothing.
    assert hand_mask([_synthetic_hand(195, 120, 80)], (240, 200))[:, 190:].any()
    assert not hand_mask([_synthetic_hand(1000, 1000, 80)], (240, 200)).any()
    assert not hand_mask([], (240, 200)).any()
    with pytest.raises(InputError):
        hand_mask([np.array([[0.0, np.nan]] * 21)], (10, 10))
    with pytest.raises(InputError):
        hand_mask([np.zeros((2, 2))], (10, 10))


def test_hands_are_occluders_and_leave_the_unwrap():
    from avatarsdk.albedo import occlusion_free

    labels = np.full((120, 100), PARSE_CLASSES.index("skin"), np.uint8)
    hands = hand_mask([_synthetic_hand(50, 90, 40)], (120, 100))
    for method in ("bisenet", "mesh"):
        p = FaceParse(labels=labels, method=method, hands=hands, num_hands=1)
        assert (p.occluders == hands).all()
        keep = occlusion_free(p) > 0
        assert not (keep & hands).any()  # no texel under a hand
        assert keep[5:40].all()  # the clear skin above it stays
        assert not keep[np.roll(hands, 1, 0) & ~hands].any()  # the band around the hand is dropped too
    plain = FaceParse(labels=labels, method="bisenet")
    assert not plain.occluders.any() and plain.face_surface.all()


@pytest.mark.skipif(not (DEVSET / "kpa_can.png").exists(),
                    reason="development set not fetched (scripts/fetch_devset.py)")
def test_hand_at_the_chin_is_found_and_dropped():
    """kpa_can (CC licence, see the devset manifest): the subject's hand holds his chin and cheek."""
    from avatarsdk.albedo import occlusion_free
    from avatarsdk.detect import detect
    from avatarsdk.parse import parse_face
    from avatarsdk.photo import load_photo

    photo = load_photo(DEVSET / "kpa_can.png")
    lm = detect(photo)
    for method in ("bisenet", "mesh"):
        p = parse_face(photo, lm, method=method)
        assert p.num_hands >= 1
        # The hand on the face: some face-oval pixels (chin, right cheek) are under it.
        chin = np.round(lm.points[152, :2]).astype(int)  # mediapipe's chin point
        ys, xs = np.nonzero(p.hands)
        d = np.hypot(xs - chin[0], ys - chin[1]).min()
        assert d < 0.3 * (lm.box[2] - lm.box[0])
        assert not ((occlusion_free(p) > 0) & p.hands).any()
    # Without hand detection the network calls the hand skin: that is what the hands mask fixes.
    bare = parse_face(photo, lm, hands=False)
    assert bare.hands is None and (bare.skin & p.hands).sum() > 500
