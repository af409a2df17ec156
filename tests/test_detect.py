"""Face detection, dense landmarks, skin mask, and the mediapipe -> ICT correspondence."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from avatarsdk import detect as detect_mod
from avatarsdk.detect import NUM_LANDMARKS, LandmarkDetector, detect, skin_mask
from avatarsdk.errors import ConfigError, FaceTooSmall, InputError, MultipleFaces, NoFaceFound
from avatarsdk.photo import load_photo
from avatarsdk.rigs import LANDMARKS68, PARTS, load_ict
from avatarsdk.rigs.mediapipe_map import MP68, NUM_POINTS, MediapipeMap, load_correspondence, points_on_mesh
from avatarsdk.datatypes import FACE_MESH_POINTS, IRIS_POINTS, LEFT_IRIS, RIGHT_IRIS


# Mediapipe face-mesh indices used below ("right" = the subject's right).
R_EYE_OUT, R_EYE_IN, L_EYE_IN, L_EYE_OUT = 33, 133, 362, 263
NOSE_TIP, UPPER_LIP, LOWER_LIP, CHIN = 4, 13, 14, 152
R_IRIS, L_IRIS = 468, 473  # iris centres (refine_landmarks)
R_BROW, L_BROW = 105, 334
R_CHEEK, L_CHEEK = 50, 280


def _grown(box, frac):
    x0, y0, x1, y1 = box
    dx, dy = frac * (x1 - x0), frac * (y1 - y0)
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def _inside(points, box):
    x0, y0, x1, y1 = box
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


# ---------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------

def test_astronaut_one_face(photo, lm):
    assert lm.num_faces == 1 and lm.score > 0.8
    assert lm.points.shape == (NUM_LANDMARKS, 3) and lm.points.dtype == np.float32
    assert not lm.points.flags.writeable
    x0, y0, x1, y1 = lm.box
    assert 60 < x1 - x0 < 160 and 60 < y1 - y0 < 160  # the face is ~100 px wide
    # The detector's box is tight (forehead to lip-chin); the mesh reaches the chin.
    assert _inside(lm.points, _grown(lm.box, 0.15)).all()
    assert _inside(lm.points, lm.box).mean() > 0.9
    assert lm.person_mask.shape == photo.size and lm.person_mask.dtype == np.float32
    assert 0 <= lm.person_mask.min() and lm.person_mask.max() <= 1


def test_the_478_point_layout_is_stated_once(lm):
    """detect() is a LandmarkDetector; the layout constants agree with what it returns and with the ICT map."""
    assert isinstance(detect, LandmarkDetector)
    assert (FACE_MESH_POINTS, IRIS_POINTS, NUM_LANDMARKS, NUM_POINTS) == (468, 10, 478, 468)
    assert (RIGHT_IRIS[0], LEFT_IRIS[0]) == (R_IRIS, L_IRIS)
    assert sorted([RIGHT_IRIS[0], *RIGHT_IRIS[1], LEFT_IRIS[0], *LEFT_IRIS[1]]) == list(range(468, 478))
    for centre, rim in (RIGHT_IRIS, LEFT_IRIS):  # each centre sits in the middle of its rim points
        rim_xy = lm.points[list(rim), :2]
        radius = np.linalg.norm(rim_xy - rim_xy.mean(0), axis=1).mean()
        assert np.linalg.norm(rim_xy.mean(0) - lm.points[centre, :2]) < 0.5 * radius


def test_astronaut_geometry_is_plausible(lm):
    p = lm.points
    eye_y = p[[R_EYE_OUT, R_EYE_IN, L_EYE_IN, L_EYE_OUT], 1].max()
    assert eye_y < p[NOSE_TIP, 1] < p[UPPER_LIP, 1] < p[LOWER_LIP, 1] < p[CHIN, 1]  # y grows downward
    # The subject's right eye is on the image's left.
    assert p[R_EYE_OUT, 0] < p[R_EYE_IN, 0] < p[L_EYE_IN, 0] < p[L_EYE_OUT, 0]
    assert p[R_EYE_OUT, 0] < p[R_IRIS, 0] < p[R_EYE_IN, 0]
    assert p[L_EYE_IN, 0] < p[L_IRIS, 0] < p[L_EYE_OUT, 0]
    assert p[NOSE_TIP, 2] < p[[R_EYE_OUT, L_EYE_OUT, CHIN], 2].min()  # the nose is nearest the camera
    assert p[R_BROW, 1] < p[R_EYE_OUT, 1] and p[L_BROW, 1] < p[L_EYE_OUT, 1]
    iod = np.linalg.norm(p[L_EYE_OUT, :2] - p[R_EYE_OUT, :2])
    assert 0.4 < iod / (lm.box[2] - lm.box[0]) < 0.8


def test_person_mask_covers_the_person(lm):
    m = lm.person_mask
    cx, cy = lm.points[NOSE_TIP, :2].round().astype(int)
    assert m[cy, cx] > 0.9
    assert m[:40, :40].mean() < 0.1 and m[:40, -40:].mean() < 0.1  # wall behind her


def test_blank_image_has_no_face():
    with pytest.raises(NoFaceFound, match=r"<array>: no face found in the 200x120 photo"):
        detect(load_photo(np.full((120, 200, 3), 128, np.uint8)))


def _two_faces(photo) -> np.ndarray:
    face = Image.fromarray(photo.image).crop((130, 30, 330, 250))
    canvas = Image.new("RGB", (600, 300), (200, 200, 200))
    canvas.paste(face, (20, 40))  # big one on the left
    canvas.paste(face.resize((150, 165), Image.Resampling.LANCZOS), (400, 60))
    return np.asarray(canvas)


def test_two_faces_picks_largest(photo):
    lm = detect(load_photo(_two_faces(photo)))
    assert lm.num_faces == 2
    assert lm.box[2] < 300 and lm.points[:, 0].max() < 300  # the left, larger face
    with pytest.raises(MultipleFaces, match="2 faces found"):
        detect(load_photo(_two_faces(photo)), refuse_multiple=True)


def test_tiny_face_is_too_small(photo):
    # Face ~30 px: the detector still sees it, and it is refused as too small.
    small = Image.fromarray(photo.image).resize((150, 150), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (256, 256), (200, 200, 200))
    canvas.paste(small, (50, 50))
    with pytest.raises(FaceTooSmall, match=r"the face is \d+x\d+ px, need at least 64 px") as e:
        detect(load_photo(np.asarray(canvas)))
    w = int(str(e.value).split("face is ")[1].split("x")[0])
    assert 20 <= w <= 40
    # Much smaller, the detector sees nothing: that is NoFaceFound.
    speck = Image.fromarray(photo.image).resize((40, 40), Image.Resampling.LANCZOS)
    canvas.paste(speck, (100, 100))
    canvas.paste((200, 200, 200), (50, 50, 200, 100))  # hide the 30 px face
    canvas.paste((200, 200, 200), (50, 50, 100, 200))
    with pytest.raises((NoFaceFound, FaceTooSmall)):
        detect(load_photo(np.asarray(canvas)))


def _small_on_canvas(photo, scale: float, angle: float = 0.0) -> np.ndarray:
    """The astronaut scaled by ``scale`` (turned ``angle`` degrees) on a 1200x900 grey-blue canvas."""
    face = Image.fromarray(photo.image).rotate(angle).resize((round(512 * scale),) * 2, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (1200, 900), (120, 140, 160))
    canvas.paste(face, (300, 200))
    return np.asarray(canvas)


def _largest(image):
    return max(detect_mod._detections(image), key=lambda d: (d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))


def test_small_face_keypoints_are_detected_again_on_a_crop(photo):
    """A 90 px face in a 1200 px photo: the whole photo's keypoints sit 0.1 of the face off the
    (right) mesh; detected again on a crop of the face, they agree with it, moved as one."""
    image = _small_on_canvas(photo, 0.8)
    box, _, keypoints = _largest(image)
    side = max(box[2] - box[0], box[3] - box[1])
    assert 70 <= side <= 110
    points = detect_mod._mesh_in_crop(image, box)
    again = detect_mod._keypoints_in_crop(image, box)
    assert points is not None and again is not None and again.shape == (6, 2)
    whole = detect_mod._mesh_keypoint_gap(points, box, keypoints)
    crop = detect_mod._mesh_keypoint_gap(points, box, again)
    assert crop < 0.05 and crop < 0.5 * whole, (whole, crop)
    assert detect_mod._moved_not_rearranged(keypoints, again, side)
    lm = detect(load_photo(image))
    assert _inside(lm.points[[R_IRIS, L_IRIS, NOSE_TIP]], _grown(lm.box, 0.0)).all()


def test_keypoints_from_a_crop_may_move_but_not_rearrange():
    a = np.array([[40.0, 40], [60, 40], [50, 55], [50, 65], [30, 45], [70, 45]])
    side = 50.0
    assert detect_mod._moved_not_rearranged(a, a + [3.0, 9.0], side)  # shifted by 0.19 of the side
    assert not detect_mod._moved_not_rearranged(a, a + [0.0, 14.0], side)  # too far
    turned = a.copy()
    turned[:4] = 2 * a[:4].mean(0) - a[:4]  # upside down about the same centre
    assert not detect_mod._moved_not_rearranged(a, turned, side)
    grown = a.copy()
    grown[:4] = a[:4].mean(0) + 2.0 * (a[:4] - a[:4].mean(0))  # eyes to mouth twice as far
    assert not detect_mod._moved_not_rearranged(a, grown, side)


def test_upside_down_face_is_still_refused_after_the_crop_check(photo):
    """Turned 180 degrees, the face mesh gives an upright-looking face that the crop's keypoints agree
    with; they are rearranged from the whole photo's, so detect still refuses it (detect_upright turns it)."""
    from avatarsdk.errors import FaceOrientation

    image = np.asarray(Image.fromarray(photo.image).rotate(180, expand=True, fillcolor=(255,) * 3))
    with pytest.raises(FaceOrientation, match="contradict the face detector"):
        detect(load_photo(image))


def test_min_face_px_option(photo):
    with pytest.raises(FaceTooSmall, match="need at least 300 px"):
        detect(photo, min_face_px=300)


def test_large_photo_is_detected_downscaled_and_mapped_back(photo, lm):
    k = 2200 / 512  # above DETECT_MAX_SIDE
    big = load_photo(np.asarray(Image.fromarray(photo.image).resize((2200, 2200), Image.Resampling.BICUBIC)))
    lb = detect(big)
    assert lb.person_mask.shape == (2200, 2200)
    expect = (lm.points[:, :2] + 0.5) * k - 0.5  # pixel centres at integers in both
    err = np.linalg.norm(lb.points[:, :2] - expect, axis=1)
    face = (lb.box[2] - lb.box[0])
    assert np.median(err) < 0.02 * face and err.max() < 0.08 * face
    np.testing.assert_allclose(np.array(lb.box), (np.array(lm.box) + 0.5) * k - 0.5, atol=0.03 * face)


def test_stderr_stays_quiet(photo, monkeypatch, capfd):
    """Fresh graphs (construction is what prints most) leave nothing on fd 2."""
    monkeypatch.setattr(detect_mod, "_GRAPHS", detect_mod._Graphs())
    try:
        detect(photo)
    finally:
        detect_mod._GRAPHS.close()
    captured = capfd.readouterr()
    assert captured.err == ""


def test_close_then_detect_again(photo, lm):
    detect_mod.close()
    again = detect(photo)
    np.testing.assert_allclose(again.points, lm.points, atol=1e-3)


def test_missing_mediapipe_is_config_error(photo, monkeypatch):
    monkeypatch.setattr(detect_mod, "_GRAPHS", detect_mod._Graphs())
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    with pytest.raises(ConfigError, match="make setup"):
        detect(photo)


# ---------------------------------------------------------------------------
# skin mask
# ---------------------------------------------------------------------------

def _at(mask, point, r=0):
    x, y = np.round(point[:2]).astype(int)
    return mask[y - r: y + r + 1, x - r: x + r + 1]


def test_skin_mask(photo, lm):
    m = skin_mask(photo, lm)
    assert m.shape == photo.size and m.dtype == bool
    assert 0.4 < m.sum() / ((lm.box[2] - lm.box[0]) * (lm.box[3] - lm.box[1])) < 1.0
    ys, xs = np.nonzero(m)
    gx0, gy0, gx1, gy1 = _grown(lm.box, 0.1)
    assert xs.min() >= gx0 and xs.max() <= gx1 and ys.min() >= gy0 and ys.max() <= gy1
    for i in (R_IRIS, L_IRIS, R_EYE_OUT, L_EYE_OUT, UPPER_LIP, LOWER_LIP, 0, 17, R_BROW, L_BROW):
        assert not _at(m, lm.points[i], 1).any(), i
    for i in (R_CHEEK, L_CHEEK, 151, 6):  # cheeks, forehead, nose bridge
        assert _at(m, lm.points[i], 2).all(), i
    assert not (m & (lm.person_mask <= 0.5)).any()


# ---------------------------------------------------------------------------
# mediapipe -> ICT correspondence
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def cmap():
    return load_correspondence()


def test_correspondence_table(cmap, model):
    tris = model.topology.triangles
    assert cmap.triangle.shape == (468,) and cmap.triangle.dtype == np.int32
    assert cmap.bary.shape == (468, 3) and cmap.bary.dtype == np.float32
    assert (cmap.triangle >= 0).all() and (cmap.triangle < len(tris)).all()
    assert (tris[cmap.triangle] < PARTS["face"][1]).all()  # only the face part
    assert (cmap.bary >= -1e-6).all()
    np.testing.assert_allclose(cmap.bary.sum(1), 1.0, atol=1e-5)
    assert len(cmap.contour) == 36 == len(set(cmap.contour.tolist())) and cmap.contour[0] == 10
    assert set(cmap.contour.tolist()) >= {10, 152, 234, 454}
    assert (cmap.weight[cmap.contour] == 0).all()
    inner = np.setdiff1d(np.arange(468), cmap.contour)
    assert (cmap.weight[inner] >= 0.1).all() and (cmap.weight <= 1).all()
    assert (cmap.procrustes_weight > 0).sum() == 33
    assert cmap.residual.max() < 0.003  # metres
    assert cmap.meta["tarball_sha256"] and "@mediapipe/face_mesh" in cmap.meta["source"]
    assert load_correspondence() is cmap  # cached


def test_points_on_neutral_match_ict_landmarks(cmap, model):
    p = points_on_mesh(model.neutral.astype(np.float64), cmap)
    assert p.shape == (468, 3) and p.dtype == np.float64
    lm68 = model.neutral[list(LANDMARKS68)]
    d_mm = 1000 * np.linalg.norm(p[list(MP68)] - lm68, axis=1)
    assert d_mm[30] < 2.0  # nose tip
    assert d_mm[[36, 39, 42, 45]].max() < 3.0  # eye corners
    assert d_mm[[48, 54]].max() < 2.0  # mouth corners
    assert d_mm[17:].max() < 6.0  # all but the jaw line
    # Mirror symmetry: the subject's right eye corner mirrors the left one.
    mirror = np.array([-1.0, 1.0, 1.0])
    for r, l_ in ((R_EYE_OUT, L_EYE_OUT), (R_EYE_IN, L_EYE_IN), (61, 291), (R_CHEEK, L_CHEEK)):
        assert np.linalg.norm(p[r] * mirror - p[l_]) < 1e-3
    assert p[R_EYE_OUT, 0] < 0 < p[L_EYE_OUT, 0]  # +X is the avatar's own left


def test_detected_landmarks_fit_the_ict_points_rigidly(cmap, model, lm):
    """A proper rotation (no mirror) maps the ICT points onto the astronaut's landmarks."""
    src = points_on_mesh(model.neutral.astype(np.float64), cmap)
    dst = lm.points[:468].astype(np.float64) * np.array([1.0, -1.0, -1.0])  # image -> +Y up, +Z to camera
    w = cmap.weight.astype(np.float64)
    mu_s, mu_d = (w @ src) / w.sum(), (w @ dst) / w.sum()
    a, b = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd((b * w[:, None]).T @ a)
    assert np.linalg.det(u @ vt) > 0  # no reflection needed
    r = u @ vt
    scale = s.sum() / (w * (a**2).sum(1)).sum()
    res = np.linalg.norm(scale * a @ r.T - b, axis=1)
    face = lm.box[2] - lm.box[0]
    assert np.median(res[w > 0]) < 0.04 * face


def test_points_on_mesh_torch_batch_and_grad(cmap, model):
    v = torch.tensor(model.neutral, dtype=torch.float64)
    batch = torch.stack([v, v + torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)]).requires_grad_(True)
    p = points_on_mesh(batch, cmap)
    assert p.shape == (2, 468, 3) and p.dtype == torch.float64
    np.testing.assert_allclose(p[0].detach().numpy(), points_on_mesh(model.neutral.astype(np.float64), cmap))
    np.testing.assert_allclose((p[1] - p[0]).detach().numpy()[:, 1], 0.01)
    w = torch.randn(2, 468, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad((p * w).sum(), batch)
    # Reference gradient: each point scatters bary * w onto its triangle's corners.
    ref = np.zeros((2,) + model.neutral.shape)
    corners = model.topology.triangles[cmap.triangle]
    for j in range(3):
        np.add.at(ref, (slice(None), corners[:, j]), cmap.bary[None, :, j, None] * w.numpy())
    np.testing.assert_allclose(g.numpy(), ref, atol=1e-6)


def test_points_on_mesh_gradcheck_tiny():
    tiny = MediapipeMap(
        triangle=np.array([0, 1, 1], np.int32),
        bary=np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8]], np.float32),
        contour=np.zeros(0, np.int32), weight=np.ones(3, np.float32),
        procrustes_weight=np.zeros(3, np.float32), residual=np.zeros(3, np.float32),
    )
    tris = np.array([[0, 1, 2], [1, 3, 2]])
    v = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: points_on_mesh(x, tiny, tris), (v,))


def test_points_on_mesh_bad_input(cmap):
    tris = np.array([[0, 1, 2]] * (int(cmap.triangle.max()) + 1))
    with pytest.raises(InputError, match="expected"):
        points_on_mesh(np.zeros((10, 3)), cmap, np.asarray(load_ict().topology.triangles))
    with pytest.raises(InputError, match="expected"):
        points_on_mesh(np.zeros((3, 2)), cmap, tris)
    with pytest.raises(InputError, match="expected"):
        points_on_mesh(torch.zeros(3, 3, dtype=torch.int64), cmap, tris)
