"""Find the face in a photo: box, 478 dense landmarks and a person mask (mediapipe).

Three mediapipe 0.10.21 "legacy solutions" do the work (models ship in the wheel):

1. face detection, full-range model (``model_selection=1``; short-range as a
   fallback when it sees nothing): counts the faces and picks the largest box;
2. face mesh (``static_image_mode=True, refine_landmarks=True``) on a square crop
   around that box, so the mesh's own short-range detector sees one big,
   centred face whatever the photo's size; the mesh face that overlaps the box
   best is kept (the whole photo is tried if the crop gives nothing);
3. selfie segmentation (general model) for the person mask.

Photos whose longer side exceeds ``DETECT_MAX_SIDE`` are detected and segmented
on a downscaled copy; the mesh crop is always cut from the full-resolution photo;
all coordinates are returned in the photo's pixels.

The solution objects are built once per process, used under one lock (mediapipe
graphs are not thread-safe) and closed at exit or by :func:`close`. Mediapipe
does not survive ``fork()`` once it has run in the parent (the child aborts
with heap corruption in malloc, even after :func:`close`): process pools that
detect must use the ``spawn`` or ``forkserver`` start method (both checked).

Mediapipe's C++ code prints INFO/WARNING lines straight to the process's
stderr; while a mediapipe call runs, file descriptor 2 is pointed at a temp file
and what it caught is re-logged at DEBUG on this module's logger. Set
``AVATARSDK_MEDIAPIPE_STDERR=1`` to leave stderr alone.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from avatarsdk.errors import ConfigError, FaceOrientation, FaceTooSmall, MultipleFaces, NoFaceFound
from avatarsdk.datatypes import FACE_MESH_POINTS, LEFT_IRIS, NUM_LANDMARKS, RIGHT_IRIS, Landmarks, Photo

__all__ = ["detect", "skin_mask", "face_region", "sclera_pixels", "close", "DETECT_MAX_SIDE", "FACE_MESH_POINTS",
           "NUM_LANDMARKS", "LandmarkDetector"]

log = logging.getLogger(__name__)


@runtime_checkable
class LandmarkDetector(Protocol):
    """What the pipeline needs from a face detector: :func:`detect` is the one we ship.

    A detector returns :class:`~avatarsdk.datatypes.Landmarks` whose ``points`` are
    [NUM_LANDMARKS (478), 3] in mediapipe's face-mesh layout with iris
    (:data:`avatarsdk.datatypes.FACE_MESH_POINTS` surface points, then the two irises
    :data:`~avatarsdk.datatypes.RIGHT_IRIS` and :data:`~avatarsdk.datatypes.LEFT_IRIS`),
    in the photo's pixels; fitting, refinement, the identity crop and the ICT
    correspondence index into that layout. A detector for another layout must
    map its points onto this one (or bring its own correspondence in
    :mod:`avatarsdk.rigs.mediapipe_map`).
    """

    def __call__(self, photo: Photo, *, refuse_multiple: bool = False, min_face_px: int = 64) -> Landmarks:
        """Find the largest face; raise a :class:`~avatarsdk.errors.PhotoError` subclass when there is none."""
        ...

DETECT_MAX_SIDE = 1920
"""Longer side (pixels) above which detection and segmentation run on a downscaled copy."""

MIN_DETECTION_CONFIDENCE = 0.5
MESH_CROP_SCALE = 2.0  # crop side / face box side
MESH_CROP_SIZE = 512  # crop side in pixels given to the face mesh
KEYPOINT_CROP_SCALE = 3.0  # crop side / face box side, for detecting keypoints again (_keypoints_in_crop)
KEYPOINT_CROP_SIZE = 256
MESH_MAX_FACES = 3
MIN_MESH_IOU = 0.3  # a mesh face must overlap the detection box at least this much
ENV_STDERR = "AVATARSDK_MEDIAPIPE_STDERR"


# ---------------------------------------------------------------------------
# mediapipe plumbing
# ---------------------------------------------------------------------------

def _solutions():
    """Import mediapipe's solutions, or explain how to get them."""
    try:
        # local: mediapipe is heavy to import and only detection needs it
        from mediapipe.python.solutions import face_detection, face_mesh, selfie_segmentation
    except ImportError as e:
        raise ConfigError(
            f"mediapipe is not usable ({e}); face detection needs mediapipe==0.10.21: run `make setup` "
            "(it installs mediapipe with --no-deps next to the dependencies it imports)"
        ) from None
    return face_detection, face_mesh, selfie_segmentation


@contextlib.contextmanager
def _quiet_stderr():
    """Route what native code writes to fd 2 into this module's DEBUG log."""
    if os.environ.get(ENV_STDERR):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("mediapipe: %s", line)


class _Graphs:
    """Per-process cache of mediapipe solution objects, keyed by kind and options."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.objects: dict[tuple, object] = {}
        self.orphans: list[object] = []

    def get(self, key: tuple):
        if self.pid != os.getpid():
            # Forked: the parent's graphs and their threads are not ours. Keep the
            # objects referenced forever so their destructors never run here.
            self.orphans.extend(self.objects.values())
            self.objects = {}
            self.pid = os.getpid()
        obj = self.objects.get(key)
        if obj is None:
            face_detection, face_mesh, selfie_segmentation = _solutions()
            kind, opt = key
            with _quiet_stderr():
                if kind == "detection":
                    obj = face_detection.FaceDetection(
                        model_selection=opt, min_detection_confidence=MIN_DETECTION_CONFIDENCE)
                elif kind == "mesh":
                    obj = face_mesh.FaceMesh(
                        static_image_mode=True, refine_landmarks=True, max_num_faces=opt,
                        min_detection_confidence=MIN_DETECTION_CONFIDENCE)
                else:
                    obj = selfie_segmentation.SelfieSegmentation(model_selection=opt)
            self.objects[key] = obj
        return obj

    def process(self, key: tuple, image: np.ndarray):
        """Run one solution on a [H, W, 3] uint8 RGB image."""
        # One redirect around building and running: a new graph opens its calculators on a
        # worker thread after its constructor returns (TFLite then prints "INFO: Created
        # TensorFlow Lite XNNPACK delegate"), which process() waits for.
        with self.lock, _quiet_stderr():
            obj = self.get(key)
            return obj.process(np.ascontiguousarray(image))

    def close(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                for obj in self.objects.values():
                    with contextlib.suppress(Exception), _quiet_stderr():
                        obj.close()
            self.objects = {}


_GRAPHS = _Graphs()
atexit.register(_GRAPHS.close)


def close() -> None:
    """Release the cached mediapipe graphs (they are rebuilt on the next call)."""
    _GRAPHS.close()


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------

def _resize(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most ``max_side``; return (image, photo px per image px)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    return small, w / size[0]


def _detections(image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
    """Face boxes (x0, y0, x1, y1), scores and keypoints, full then short range model.

    Keypoints: [6, 2] float64 (right eye, left eye, nose tip, mouth centre, right
    ear, left ear; the subject's sides); everything in edge coordinates of ``image``.
    """
    h, w = image.shape[:2]
    for model in (1, 0):
        res = _GRAPHS.process(("detection", model), image)
        out = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            box = (b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h)
            kps = np.array([(k.x * w, k.y * h) for k in d.location_data.relative_keypoints], np.float64)
            out.append((box, float(d.score[0]), kps.reshape(-1, 2)))
        if out:
            return out
    return []


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mesh_faces(image: np.ndarray) -> list[np.ndarray]:
    """Face-mesh landmarks as [478, 3] arrays in edge coordinates of ``image`` (z in x's pixel units)."""
    h, w = image.shape[:2]
    res = _GRAPHS.process(("mesh", MESH_MAX_FACES), image)
    faces = []
    for lms in res.multi_face_landmarks or []:
        p = np.array([(lm.x, lm.y, lm.z) for lm in lms.landmark], np.float64)
        if p.shape[0] != NUM_LANDMARKS:
            continue
        faces.append(p * np.array([w, h, w]))  # mediapipe's z has the scale of x
    return faces


def _best_mesh(faces: list[np.ndarray], box) -> tuple[np.ndarray | None, float]:
    best, best_iou = None, 0.0
    for p in faces:
        mesh = p[:FACE_MESH_POINTS]
        mbox = (mesh[:, 0].min(), mesh[:, 1].min(), mesh[:, 0].max(), mesh[:, 1].max())
        iou = _iou(mbox, box)
        if iou > best_iou:
            best, best_iou = p, iou
    return best, best_iou


def _square_crop(image: np.ndarray, box, scale: float, size: int) -> tuple[np.ndarray, float, int, int]:
    """A square of ``scale`` box sides around ``box`` (black outside the photo), resized to ``size``.

    Returns (crop, photo pixels per crop pixel, x0, y0 of the square in the photo's edge coordinates).
    """
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(4, round(scale * max(box[2] - box[0], box[3] - box[1])))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    h, w = image.shape[:2]
    crop = np.zeros((side, side, 3), np.uint8)  # black outside the photo
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))
    return crop, side / size, x0, y0


def _mesh_in_crop(image: np.ndarray, box) -> np.ndarray | None:
    """Run the face mesh on a square crop around ``box`` (edge coordinates of ``image``).

    Returns [478, 3] landmarks in edge coordinates of ``image``, or None.
    """
    crop, k, x0, y0 = _square_crop(image, box, MESH_CROP_SCALE, MESH_CROP_SIZE)
    faces = [p * k + np.array([x0, y0, 0.0]) for p in _mesh_faces(crop)]
    best, iou = _best_mesh(faces, box)
    return best if iou >= MIN_MESH_IOU else None


KEYPOINT_SHIFT = 0.25
"""Most a keypoint set detected again on a crop may move, as a whole, from the whole photo's (box sides)."""

KEYPOINT_RESHAPE = 0.08
"""Most the crop's eyes, nose and mouth may move relative to each other from the whole photo's (box sides)."""


def _moved_not_rearranged(a: np.ndarray, b: np.ndarray, side: float) -> bool:
    """Whether keypoints ``b`` are ``a`` moved by up to :data:`KEYPOINT_SHIFT` of ``side``, with
    eyes, nose and mouth placed alike (mean residual after the shift up to :data:`KEYPOINT_RESHAPE`)."""
    d = b[:4] - a[:4]
    shift = d.mean(0)
    return bool(np.linalg.norm(shift) <= KEYPOINT_SHIFT * side
                and np.linalg.norm(d - shift, axis=1).mean() <= KEYPOINT_RESHAPE * side)


def _keypoints_in_crop(image: np.ndarray, box) -> np.ndarray | None:
    """The detector's keypoints for the face in ``box``, detected again on an enlarged crop around it.

    On the whole photo a small face (tens of pixels) fills a few cells of the detector's
    128-192 px input and its keypoints can sit a tenth of the face size off; on a crop of
    :data:`KEYPOINT_CROP_SCALE` face sizes the face fills the input. Returns [6, 2] keypoints in
    edge coordinates of ``image`` from the crop's detection that overlaps ``box`` most (at
    least :data:`MIN_MESH_IOU`), or None.

    Only where the keypoints are is taken from the crop, not how they are arranged: on the
    astronaut turned 180 degrees the detector's box holds part of the face, the face mesh puts
    an upright-looking face in it (0.41 of the box side from the detector's keypoints) and the
    crop's keypoints agree with that wrong mesh (0.13 off). So :func:`detect` uses them only when
    they are the whole photo's keypoints moved as one (:func:`_moved_not_rearranged`): there,
    they are rearranged (eyes to mouth 2.5 times as far); on the small face they were shifted
    by 0.17 of the box side, all four alike within 0.02.
    """
    crop, k, x0, y0 = _square_crop(image, box, KEYPOINT_CROP_SCALE, KEYPOINT_CROP_SIZE)
    best, best_iou = None, MIN_MESH_IOU
    for b, _, kp in _detections(crop):
        b = (b[0] * k + x0, b[1] * k + y0, b[2] * k + x0, b[3] * k + y0)
        iou = _iou(b, box)
        if iou >= best_iou:
            best, best_iou = kp * k + np.array([x0, y0]), iou
    return best


def detect(photo: Photo, *, refuse_multiple: bool = False, min_face_px: int = 64) -> Landmarks:
    """Find the largest face in a photo and its 478 dense landmarks and person mask.

    Args:
        photo: from :func:`avatarsdk.photo.load_photo`.
        refuse_multiple: raise ``MultipleFaces`` when the detector sees more than
            one face (by default the largest is used and ``num_faces`` says how
            many there were). Every detection with confidence >= 0.5 counts,
            whatever its size.
        min_face_px: smallest accepted face: the shorter side of the detector's
            box, in photo pixels.

    Returns:
        Landmarks: ``points`` [478, 3] float32 (x, y in photo pixels, pixel
        centres at integers; z relative depth in the same pixel units, smaller is
        nearer), ``box`` (x0, y0, x1, y1) in the same pixel coordinates (clipped
        to the photo), ``score``, ``num_faces``, ``person_mask`` [H, W] float32.

    Raises:
        NoFaceFound: the detector finds no face, or the face mesh finds none where
            it did.
        MultipleFaces: several faces and ``refuse_multiple``.
        FaceTooSmall: the largest face's box is smaller than ``min_face_px``.
        ConfigError: mediapipe is not installed.
    """
    image = np.ascontiguousarray(photo.image)
    h, w = image.shape[:2]
    small, k = _resize(image, DETECT_MAX_SIDE)
    dets = _detections(small)
    if not dets:
        # The detector sees the photo letterboxed to 192x192: in corpus tests a face narrower
        # than 1/16-1/18 of the longer side was missed (scripts/make_bad_inputs.py).
        raise NoFaceFound(
            f"{photo.source}: no face found in the {w}x{h} photo (a face narrower than about 1/16 of the "
            f"longer side, here {max(w, h) // 16} px, can be missed: crop closer to the face)"
        )
    dets = [((b[0] * k, b[1] * k, b[2] * k, b[3] * k), s, kp * k) for b, s, kp in dets]
    if refuse_multiple and len(dets) > 1:
        raise MultipleFaces(f"{photo.source}: {len(dets)} faces found, expected one (refuse_multiple=True)")
    box, score, keypoints = max(dets, key=lambda d: (d[0][2] - d[0][0]) * (d[0][3] - d[0][1]))
    bw, bh = box[2] - box[0], box[3] - box[1]
    if min(bw, bh) < min_face_px:
        raise FaceTooSmall(
            f"{photo.source}: the face is {bw:.0f}x{bh:.0f} px, need at least {min_face_px} px "
            "(use a closer or higher-resolution photo)"
        )
    points = _mesh_in_crop(image, box)
    if points is None:  # e.g. a face cut by the photo edge: try the whole photo
        faces = [p * np.array([k, k, k]) for p in _mesh_faces(small)]
        points, iou = _best_mesh(faces, box)
        if iou < MIN_MESH_IOU:
            points = None
    if points is None:
        raise NoFaceFound(
            f"{photo.source}: a face was detected at box ({box[0]:.0f}, {box[1]:.0f}, {box[2]:.0f}, "
            f"{box[3]:.0f}) but the face mesh could not place landmarks on it"
        )
    if _mesh_keypoint_gap(points, box, keypoints) > MAX_MESH_KEYPOINT_GAP:
        # Before refusing, ask the detector again with the face filling its input (small faces),
        # for where the keypoints are, not how they are arranged (see _keypoints_in_crop).
        again = _keypoints_in_crop(image, box)
        if again is not None and _moved_not_rearranged(keypoints, again, max(box[2] - box[0], box[3] - box[1])):
            keypoints = again
    _check_mesh_agrees(photo, points, box, keypoints)
    points = points - np.array([0.5, 0.5, 0.0])  # edge coordinates -> pixel centres at integers
    mask = _person_mask(small, (w, h))
    box_px = (
        float(np.clip(box[0] - 0.5, -0.5, w - 0.5)), float(np.clip(box[1] - 0.5, -0.5, h - 0.5)),
        float(np.clip(box[2] - 0.5, -0.5, w - 0.5)), float(np.clip(box[3] - 0.5, -0.5, h - 0.5)),
    )
    return Landmarks(
        points=np.ascontiguousarray(points, dtype=np.float32),
        box=box_px,
        score=score,
        num_faces=len(dets),
        person_mask=mask,
    )


# Face-mesh points at the detector's keypoints: right eye (iris centre), left eye, nose tip, mouth centre.
_MESH_AT_KEYPOINTS = ((468,), (473,), (1,), (13, 14))
MAX_MESH_KEYPOINT_GAP = 0.15
"""Largest mean distance, as a fraction of the box side, between the face mesh's eyes, nose
and mouth and the detector's keypoints for them (right meshes on the corpus and rolled faces: 0.015-0.09; wrong ones: 0.2 and more).
When the keypoints from the whole photo are further off than this, they are detected again on an
enlarged crop of the face (:func:`_keypoints_in_crop`) and the check uses those: a 69 px face in an
800 px photo had its whole-photo keypoints 0.15-0.18 of the face size from a right mesh, its crop's
keypoints 0.02-0.04. A wrong mesh (a face far from upright) is as far from the crop's keypoints."""


def _mesh_keypoint_gap(points: np.ndarray, box, keypoints: np.ndarray) -> float:
    """Mean distance between mesh and detector eyes, nose and mouth, over the box side."""
    mesh = np.stack([points[list(i), :2].mean(0) for i in _MESH_AT_KEYPOINTS])
    side = max(box[2] - box[0], box[3] - box[1], 1e-6)
    return float(np.linalg.norm(mesh - keypoints[:4], axis=1).mean() / side)


def _check_mesh_agrees(photo: Photo, points: np.ndarray, box, keypoints: np.ndarray) -> None:
    """Refuse landmarks that contradict the detector (the mesh assumes an upright face).

    On a face held far from upright (upside down: roll near 180 degrees) the face
    mesh still returns an upright-looking mesh, with the mouth where the eyes are;
    fitting it gives a ruined avatar. The detector's keypoints then disagree.

    Raises:
        FaceOrientation: mean gap over :data:`MAX_MESH_KEYPOINT_GAP` of the box side.
    """
    gap = _mesh_keypoint_gap(points, box, keypoints)
    if gap > MAX_MESH_KEYPOINT_GAP:
        raise FaceOrientation(
            f"{photo.source}: the face landmarks contradict the face detector (eyes, nose and mouth "
            f"{gap:.2f} of the face size apart, limit {MAX_MESH_KEYPOINT_GAP}): the face is probably "
            "rotated in the picture; turn the photo upright"
        )


def face_roll(landmarks: Landmarks) -> float:
    """Roll of the face in the photo, degrees: 0 upright, + turned clockwise, +-180 upside down.

    The angle of the line from the mouth centre up to the midpoint of the irises.
    """
    p = landmarks.points
    up = (p[468, :2] + p[473, :2]) / 2 - (p[13, :2] + p[14, :2]) / 2
    return float(np.degrees(np.arctan2(up[0], -up[1])))


UPRIGHT_ROLL_DEG = 30.0
"""A face within this roll of upright is taken as it is; otherwise every quarter turn is tried."""

MAX_ROLL_DEG = 60.0
"""Most roll left after the best quarter turn (the fit starts from an upright head)."""


def detect_upright(photo: Photo, *, refuse_multiple: bool = False,
                   min_face_px: int = 64) -> tuple[Photo, Landmarks, int]:
    """Turn the photo by quarter turns so that its face is upright, then :func:`detect`.

    The face mesh assumes an upright face: on a face far from upright (upside
    down, on its side) it returns wrong landmarks, which :func:`detect` refuses
    when they contradict the detector's keypoints, or an upright-looking mesh
    rolled by tens of degrees. So when the photo as given does not show a face
    within :data:`UPRIGHT_ROLL_DEG` of upright, the photo turned by 90, 180 and
    270 degrees is tried as well, and the turn whose landmarks agree with the
    detector and are the least rolled is kept. What roll is left (at most
    :data:`MAX_ROLL_DEG`) is the fit's camera roll.

    Args:
        photo, refuse_multiple, min_face_px: as for :func:`detect`.

    Returns:
        (the photo turned upright, its landmarks, quarter turns counter-clockwise
        applied: 0-3, as ``numpy.rot90``). A turned photo keeps ``source`` and
        ``sha256`` (of the file as given). Several faces (without
        ``refuse_multiple``) and a turn are each logged as one warning.

    Raises:
        FaceOrientation: no turn gives landmarks within :data:`MAX_ROLL_DEG` of upright.
        NoFaceFound, FaceTooSmall, MultipleFaces: as :func:`detect` on the photo as given.
    """
    found, errors_ = [], []
    for k in range(4):
        turned = photo if k == 0 else Photo(image=np.ascontiguousarray(np.rot90(photo.image, k)),
                                            source=photo.source, sha256=photo.sha256)
        try:
            lm = detect(turned, refuse_multiple=refuse_multiple, min_face_px=min_face_px)
        except (NoFaceFound, FaceOrientation, FaceTooSmall) as e:
            errors_.append(e)
            continue
        found.append((abs(face_roll(lm)), k, turned, lm))
        if k == 0 and found[0][0] <= UPRIGHT_ROLL_DEG:
            return photo, _warn_several(photo, lm), 0
    if not found:
        raise next((e for e in errors_ if isinstance(e, FaceOrientation)), errors_[0])
    roll, k, turned, lm = min(found, key=lambda f: f[:2])
    if roll > MAX_ROLL_DEG:
        raise FaceOrientation(f"{photo.source}: the face is rolled {roll:.0f} degrees from upright at best "
                              f"(limit {MAX_ROLL_DEG:.0f}); turn the photo upright")
    if k:
        log.warning("%s: the face is not upright in the photo; turned %d degrees counter-clockwise, it is "
                    "(roll %.0f degrees)", photo.source, 90 * k, roll)
    return turned, _warn_several(turned, lm), k


def _warn_several(photo: Photo, lm: Landmarks) -> Landmarks:
    if lm.num_faces > 1:
        log.warning("%s: %d faces found; using the largest, box (%.0f, %.0f, %.0f, %.0f) px (refuse_multiple / "
                    "--refuse-multiple refuses such photos)", photo.source, lm.num_faces, *lm.box)
    return lm


def _person_mask(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Selfie-segmentation person probability, [H, W] float32 in [0, 1] at ``size`` = (W, H)."""
    res = _GRAPHS.process(("selfie", 0), image)
    m = np.asarray(res.segmentation_mask, np.float32)
    if (m.shape[1], m.shape[0]) != size:
        m = np.asarray(Image.fromarray(m, "F").resize(size, Image.Resampling.BILINEAR), np.float32)
    return np.ascontiguousarray(np.clip(m, 0.0, 1.0), dtype=np.float32)


# ---------------------------------------------------------------------------
# Skin mask
# ---------------------------------------------------------------------------

def _chains(edges) -> list[list[int]]:
    """Split an undirected edge set into chains (closed loops repeat no vertex)."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    seen: set[int] = set()
    out = []
    # Open chains start at degree-1 vertices; what is left are loops.
    starts = sorted(v for v, n in adj.items() if len(n) == 1) + sorted(adj)
    for s in starts:
        if s in seen:
            continue
        chain, prev, cur = [s], None, s
        seen.add(s)
        while True:
            nxt = [v for v in adj[cur] if v != prev and v not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            chain.append(cur)
            seen.add(cur)
        out.append(chain)
    return out


def _polygon(edges) -> list[int]:
    """One polygon from a FACEMESH_* set: its loop, or two open lines joined end to end."""
    chains = _chains(edges)
    if len(chains) == 1:
        return chains[0]
    if len(chains) == 2:  # e.g. an eyebrow's upper and lower lines, both outer -> inner
        return chains[0] + chains[1][::-1]
    raise ValueError(f"expected one loop or two lines, got {len(chains)} chains")


@functools.lru_cache(maxsize=1)
def _face_polygons() -> tuple[list[int], list[list[int]]]:
    """(face oval loop, [excluded polygons: eyes, brows, outer lips]) as mediapipe indices."""
    _solutions()
    from mediapipe.python.solutions import face_mesh_connections as fmc  # local: heavy; only these layouts need it

    oval = _polygon(fmc.FACEMESH_FACE_OVAL)
    holes = [_polygon(s) for s in (fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE,
                                   fmc.FACEMESH_LEFT_EYEBROW, fmc.FACEMESH_RIGHT_EYEBROW)]
    # FACEMESH_LIPS holds the outer and the inner lip loops; filling both covers
    # the lips and, with the mouth open, the teeth between them.
    holes += _chains(fmc.FACEMESH_LIPS)
    return oval, holes


def _grow_px(landmarks: Landmarks, margin: float) -> int:
    x0, y0, x1, y1 = landmarks.box
    return max(1, round(margin * max(x1 - x0, y1 - y0)))


def _draw_grown(draw, xy: np.ndarray, polygons, grow: int, fill: int) -> None:
    """Fill each polygon grown by a disc of radius ``grow``: thick edges plus a disc at every vertex."""
    for poly in polygons:
        pts = [tuple(p) for p in xy[poly]]
        draw.polygon(pts, fill=fill)
        draw.line(pts + pts[:1], fill=fill, width=2 * grow + 1)
        for x, y in pts:
            draw.ellipse((x - grow, y - grow, x + grow, y + grow), fill=fill)


def skin_mask(photo: Photo, landmarks: Landmarks, *, margin: float = 0.03) -> np.ndarray:
    """Pixels of visible facial skin: face oval minus eyes, brows and lips, on the person.

    The eye, brow and lip polygons are grown by ``margin`` times the face box
    size, which keeps lashes, lid creases and lip edges out; the result is
    intersected with ``person_mask > 0.5`` (drops background inside the oval).

    Args:
        photo: the photo the landmarks were found in.
        landmarks: from :func:`detect`.
        margin: growth of the excluded regions, as a fraction of the box size.

    Returns:
        [H, W] bool, True on skin.
    """
    h, w = photo.size
    oval, holes = _face_polygons()
    xy = landmarks.points[:, :2].astype(np.float64)  # ImageDraw also puts pixel centres at integers
    face = Image.new("1", (w, h), 0)
    ImageDraw.Draw(face).polygon([tuple(p) for p in xy[oval]], fill=1)
    cut = Image.new("1", (w, h), 0)
    _draw_grown(ImageDraw.Draw(cut), xy, holes, _grow_px(landmarks, margin), 1)
    mask = np.asarray(face, bool) & ~np.asarray(cut, bool)
    return mask & (landmarks.person_mask > 0.5)


def _area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def face_region(photo: Photo, landmarks: Landmarks, *, margin: float = 0.015) -> np.ndarray:
    """Where the photo shows the face surface, for unwrapping the albedo.

    The face oval on the person, minus the eye openings and the mouth opening
    (the inner lip loop: teeth and tongue are not skin), each grown by
    ``margin`` times the face box size; edges softened by a small blur.

    Returns:
        [H, W] float32 in [0, 1].
    """
    _solutions()
    from mediapipe.python.solutions import face_mesh_connections as fmc  # local: heavy; only these layouts need it

    h, w = photo.size
    oval, _ = _face_polygons()
    xy = landmarks.points[:, :2].astype(np.float64)
    lips = sorted(_chains(fmc.FACEMESH_LIPS), key=lambda c: _area(xy[c]))
    holes = [_polygon(fmc.FACEMESH_LEFT_EYE), _polygon(fmc.FACEMESH_RIGHT_EYE), lips[0]]
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon([tuple(p) for p in xy[oval]], fill=255)
    _draw_grown(draw, xy, holes, _grow_px(landmarks, margin), 0)
    radius = max(1.0, 0.005 * max(h, w))
    soft = np.asarray(img.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(radius)), np.float32)
    return soft / 255.0 * np.clip((landmarks.person_mask - 0.3) / 0.4, 0.0, 1.0)


# Refined face-mesh iris points: centre then four on the rim, per eye.
_IRIS = {"left": LEFT_IRIS, "right": RIGHT_IRIS}


def sclera_pixels(photo: Photo, landmarks: Landmarks, *, margin: float = 0.006) -> dict[str, np.ndarray]:
    """Photo pixels of the whites of the eyes, per eye.

    Inside the eye-opening polygon shrunk by ``margin`` times the face box size
    (keeps lids and lashes out) and outside the iris circle grown by 10%
    (radius from the refined iris landmarks).

    Args:
        photo: the photo the landmarks were found in.
        landmarks: from :func:`detect` (478 points, iris included).
        margin: shrink of the eye opening, as a fraction of the box size.

    Returns:
        {"left": [N, 3] uint8, "right": [M, 3] uint8} sRGB pixels (the subject's
        left and right eye; N or M may be 0 for a closed or hidden eye).
    """
    _solutions()
    from mediapipe.python.solutions import face_mesh_connections as fmc  # local: heavy; only these layouts need it

    h, w = photo.size
    xy = landmarks.points[:, :2].astype(np.float64)
    grow = _grow_px(landmarks, margin)
    yy, xx = np.mgrid[0:h, 0:w]
    out = {}
    for side, edges in (("left", fmc.FACEMESH_LEFT_EYE), ("right", fmc.FACEMESH_RIGHT_EYE)):
        opening = Image.new("1", (w, h), 0)
        ImageDraw.Draw(opening).polygon([tuple(p) for p in xy[_polygon(edges)]], fill=1)
        lids = Image.new("1", (w, h), 0)
        draw = ImageDraw.Draw(lids)
        pts = [tuple(p) for p in xy[_polygon(edges)]]
        draw.line(pts + pts[:1], fill=1, width=2 * grow + 1)
        mask = np.asarray(opening, bool) & ~np.asarray(lids, bool)
        centre, rim = _IRIS[side]
        radius = float(np.linalg.norm(xy[list(rim)] - xy[centre], axis=1).mean())
        mask &= (xx - xy[centre, 0]) ** 2 + (yy - xy[centre, 1]) ** 2 > (1.1 * radius) ** 2
        out[side] = photo.image[mask]
    return out
