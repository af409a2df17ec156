"""Fidelity benchmark on synthetic photos with exact ground truth (the paper's Sec. 4).

The paper measures geometry on 20 FaceScape scans (mean point-to-mesh distance,
Table 1) and albedo as the mean L1 between the recovered texture and the ground
truth over inputs augmented with lighting changes (Table 2: lower and less
sensitive to the lighting is better). FaceScape and NoW are not available here,
so the ground truth is synthesised:

* **Heads**: an ICT identity (100 coefficients ~ N(0, 1), clipped at 2.5) plus
  a smooth displacement *outside the identity span*: four Gaussian bumps along
  the surface normal (sigma 12-25 mm) with their projection onto the 100
  identity shapes removed and rescaled to 0.8-1.6 mm RMS over the face
  region, so a method confined to the linear model has an error floor. The
  field is a function of 3D position applied to every vertex, so teeth, eyes
  and lashes move with the skin around them.
* **Albedo**: :func:`avatarsdk.paint.procedural_albedo` (tone over the whole
  Fitzpatrick range, brows, lips, stubble, freckles, hair...).
* **Expression**: ARKit blendshapes of the identity (``FaceModel.arkit_blendshapes``):
  ``smile``, ``jaw_open``, ``brows_up`` (intensity 75-100%).
* **Light**: second-order SH (the renderer's convention) built from directional
  lights fixed to the camera, see :data:`LIGHTS`.
* **Camera**: a phone photo cropped to the head: 0.5-1 m away, focal length
  so the head fills 50-62% of the height, principal point off centre by up to
  3%, head yaw up to 45 degrees, pitch up to 10, roll up to 5.
* **Occluders** (``run(occluders=...)``; ``avatarsdk bench fidelity`` takes all three): each
  identity is also photographed neutral with a lock of hair strands across the forehead and
  down one cheek, a skin-coloured hand over the chin and mouth, and glasses frames, drawn over
  the rendered photo by :func:`avatarsdk.scene.occlude`, whose exact coverage is the case's
  ``occluder_mask``.
* **Photo**: every material rendered like :mod:`avatarsdk.preview` (skin,
  eyes, teeth, translucent lashes and tear film; default eye/teeth textures),
  Lambert with SH shading, 2x2 supersampled, 1024 px square by default (a
  face ~400 px tall, like a phone portrait cropped to the head), over a procedural background
  (gradient + blurred shapes + noise), with mild sensor noise.

Metrics (per method, on cases where it did not raise an ``AvatarError``):

* ``geom_mm``: mean distance in mm from the GT neutral face-region vertices
  (:func:`avatarsdk.paint.face_region_vertices`, ~4,000 vertices: inside the
  jaw line, below the forehead hairline, no ears, eyes, nostrils or mouth
  opening) to the reconstructed neutral surface (its face-part triangles),
  after a RIGID Procrustes alignment of the reconstruction onto the GT on
  those same corresponding vertices (same topology, no ICP). Closest points
  are exact point-to-triangle distances over the 16 triangles with the
  nearest centroids. ``geom_sim_mm`` is the same after a similarity
  alignment (also scale), since a single photo fixes scale only weakly.
* ``albedo_l1``: mean |reconstructed - GT| of sRGB values in [0, 1] over the
  texels of :func:`avatarsdk.paint.face_region_mask` at 256 x 256 (both maps
  box-filtered to 256 first). sRGB rather than linear so errors on dark skin
  are not compressed toward zero. ``albedo_l1`` averages over identities the
  mean over the lights (neutral inputs); ``albedo_l1_light_std`` averages the
  standard deviation over the lights: the paper's lighting sensitivity.
* ``albedo_l1_occluded`` / ``albedo_l1_clear`` (occluded inputs): the same L1 over the
  face-region texels the photo shows (:func:`texel_pixels`: on the GT head as photographed,
  facing the camera, not hidden), split by whether the occluder covers more than
  :data:`OCCLUDED_ALPHA` of their pixel (:func:`occluded_texels`); ``occluded_ratio`` is their
  quotient (1.0: what an occluder hides is recovered as well as what the photo shows).
* ``lip_l1_<expression>`` / ``lip_l1_<expression>_neutral``: L1 over the lip texels
  (:func:`avatarsdk.albedo.lip_region`) from the expressive inputs and from the neutral inputs of
  the same identity and light; ``lip_ratio_<expression>`` their quotient.
* ``neutralisation``: (sum of ``geom_mm`` from expressive inputs) / (sum of
  ``geom_mm`` from the neutral inputs of the same identity, light and pose),
  over pairs where both succeeded. 1.0 means the expression was removed
  completely; a method that keeps the expression scores above 1.

Methods are plain callables ``photo [H, W, 3] uint8 -> Reconstruction``; see
:func:`run`, :func:`generic_head` and :func:`avatarsdk.bench.methods.benchmark_methods`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree

from avatarsdk import __version__
from avatarsdk.colour import linear_to_srgb as _linear_to_srgb
from avatarsdk.detect import detect
from avatarsdk.errors import AvatarError, InputError
from avatarsdk.files import atomic_write_bytes, png_bytes
from avatarsdk.materials import IRIS_COLOURS, default_textures
from avatarsdk.nn.identity import embed_photo
from avatarsdk.photo import load_photo
from avatarsdk.render import interpolate, rasterize, transform_points
from avatarsdk.render.camera import Camera, gl_matrices
from avatarsdk.render.shading import vertex_normals
from avatarsdk.rigs import PARTS, load_ict
from avatarsdk.rigs.ict import NUM_VERTICES
from avatarsdk.rigs.mediapipe_map import load_correspondence, points_on_mesh
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.scene import (LIGHTS, OCCLUDERS, detail, framed_camera, light_sh, occlude, portrait_camera,
                             random_background, render_photo)
from avatarsdk.albedo import lip_region
from avatarsdk.uvmap import rasterize_uv
from avatarsdk.paint import face_region_mask, face_region_vertices, mean_albedo_srgb, paint_albedo, sample_skin_params

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "DEFAULT_LIGHTS",
    "EVAL_SIZE",
    "EXPRESSIONS",
    "LIGHTS",
    "Camera",
    "Case",
    "Reconstruction",
    "OCCLUDED_ALPHA",
    "albedo_l1",
    "albedo_l1_in",
    "generic_head",
    "geometry_error",
    "light_sh",
    "main",
    "make_case",
    "identity_similarity",
    "neutralisation_ratio",
    "photo_embedding",
    "portrait_camera",
    "point_to_surface",
    "procrustes",
    "occluded_texels",
    "render_photo",
    "run",
    "run_cli",
    "texel_pixels",
    "to_markdown",
]

EVAL_SIZE = 256
"""Texture resolution at which albedo L1 is measured."""

DEFAULT_LIGHTS: tuple[str, ...] = ("soft", "side", "coloured", "top", "dim")
"""The five lights every identity is photographed under in :func:`run`."""

EXPRESSIONS: dict[str, dict[str, float]] = {
    "smile": {"mouthSmileLeft": 0.85, "mouthSmileRight": 0.85, "cheekSquintLeft": 0.45, "cheekSquintRight": 0.45,
              "eyeSquintLeft": 0.25, "eyeSquintRight": 0.25, "mouthUpperUpLeft": 0.15, "mouthUpperUpRight": 0.15,
              "jawOpen": 0.06},
    "jaw_open": {"jawOpen": 0.55, "mouthLowerDownLeft": 0.25, "mouthLowerDownRight": 0.25, "browInnerUp": 0.15},
    "brows_up": {"browInnerUp": 0.9, "browOuterUpLeft": 0.8, "browOuterUpRight": 0.8, "eyeWideLeft": 0.35,
                 "eyeWideRight": 0.35},
}
"""ARKit blendshape weights of the named expressions (scaled by 0.75-1.0 per case)."""



# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------

def _camera_dict(camera: Camera) -> dict:
    """A case camera as the benchmark's JSON writes it."""
    return {"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy, "R": camera.rotation.tolist(),
            "t": camera.translation.tolist(), "width": camera.width, "height": camera.height}


@dataclass(frozen=True, eq=False)
class Case:
    """One synthetic photo and everything that made it.

    Attributes:
        seed: the case seed (identity, albedo, pose, background all follow from it).
        photo: [H, W, 3] uint8 sRGB input photo.
        skin_mask: [H, W] bool, pixels where skin is the visible surface.
        vertices_neutral: [V, 3] float32 GT neutral head, metres (ICT topology).
        vertices_posed: [V, 3] float32 the head as photographed (neutral +
            expression), same frame; the pose is in ``camera``.
        albedo: [S, S, 3] uint8 sRGB GT albedo in the unified head UV.
        camera: the camera (:class:`avatarsdk.render.camera.Camera`, OpenCV; world = the GT vertex frame).
        light: light name (a key of :data:`LIGHTS`).
        light_sh: [9, 3] float32 world-frame SH coefficients in the convention
            of :mod:`avatarsdk.render.shading` (shading = sh_shading(n, light_sh)).
        expression: expression name or None for neutral.
        expression_weights: ARKit name -> weight actually applied.
        yaw_deg, pitch_deg, roll_deg: head rotation relative to the camera
            (yaw > 0 turns the face toward the image's right, the avatar's
            left; pitch > 0 tilts the face down).
        identity: [100] float32 ICT identity coefficients.
        detail_rms_mm: RMS over the face region of the displacement outside
            the identity span.
        skin: the :class:`avatarsdk.paint.SkinParams` of the albedo.
        occluder: None or the kind drawn over the photo (:data:`avatarsdk.scene.OCCLUDERS`).
        occluder_mask: [H, W] float32 coverage of the occluder in [0, 1] (zeros without one):
            the ground truth of which pixels it hides.
    """

    seed: int
    photo: np.ndarray
    skin_mask: np.ndarray
    vertices_neutral: np.ndarray
    vertices_posed: np.ndarray
    albedo: np.ndarray
    camera: Camera
    light: str
    light_sh: np.ndarray
    expression: str | None
    expression_weights: dict[str, float]
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    identity: np.ndarray
    detail_rms_mm: float
    skin: object
    occluder: str | None = None
    occluder_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.occluder_mask is None:
            object.__setattr__(self, "occluder_mask", np.zeros(self.photo.shape[:2], np.float32))
        for a in (self.photo, self.skin_mask, self.vertices_neutral, self.vertices_posed, self.albedo,
                  self.light_sh, self.identity, self.occluder_mask):
            a.setflags(write=False)

    def meta(self) -> dict:
        """JSON-serialisable description (no arrays but the camera and light)."""
        return {"seed": self.seed, "light": self.light, "expression": self.expression,
                "expression_weights": self.expression_weights, "yaw_deg": self.yaw_deg,
                "pitch_deg": self.pitch_deg, "roll_deg": self.roll_deg, "occluder": self.occluder,
                "occluded_fraction": float(self.occluder_mask.mean()), "camera": _camera_dict(self.camera),
                "light_sh": self.light_sh.tolist(), "detail_rms_mm": self.detail_rms_mm,
                "skin": {k: v for k, v in vars(self.skin).items()}}


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """What a method returns for one photo.

    Attributes:
        vertices: [V, 3] float metres on the ICT topology, NEUTRAL expression, in
            any rigid frame (the metric aligns it).
        albedo: [H, W, 3] uint8 sRGB de-lit albedo in the unified head UV
            (any square size; resampled for the metric), or None when the
            method does not estimate one (albedo metrics are then blank).
    """

    vertices: np.ndarray
    albedo: np.ndarray | None = None

    def __post_init__(self) -> None:
        v = np.asarray(self.vertices)
        if v.shape != (NUM_VERTICES, 3) or not np.isfinite(v).all():
            raise InputError(f"reconstruction vertices must be finite [{NUM_VERTICES}, 3], got {v.shape}")
        if self.albedo is not None:
            a = np.asarray(self.albedo)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] != a.shape[1]:
                raise InputError(f"reconstruction albedo must be square uint8 [S, S, 3], got {a.dtype} {a.shape}")

    @classmethod
    def from_avatar(cls, avatar) -> Reconstruction:
        """Take the neutral vertices and skin albedo of an :class:`avatarsdk.datatypes.Avatar`."""
        return cls(vertices=np.asarray(avatar.vertices), albedo=np.asarray(avatar.textures["skin"])[..., :3])


# ---------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Subject:
    """What a case seed fixes whatever the light, expression and pose (cached)."""

    identity: np.ndarray  # [100] float32
    neutral: np.ndarray  # [V, 3] float32
    detail_rms_mm: float
    skin: object  # SkinParams
    textures: dict  # material -> uint8 image ("skin" is the GT albedo)


@functools.lru_cache(maxsize=2)
def _subject(seed: int, albedo_size: int) -> _Subject:
    rs = _case_streams(seed)
    model = load_ict()
    coeffs = np.clip(rs["identity"].standard_normal(model.identity_basis.shape[0]), -2.5, 2.5)
    base = model.morph(coeffs)
    displacement, detail_rms = detail(base, rs["detail"])
    skin = sample_skin_params(rs["skin"])
    eyes = rs["eyes"]
    iris = IRIS_COLOURS[int(eyes.integers(len(IRIS_COLOURS)))]
    textures = {"skin": paint_albedo(skin, size=albedo_size),
                **default_textures(iris_rgb=iris, seed=int(eyes.integers(2**31 - 1)))}
    out = _Subject(identity=coeffs.astype(np.float32), neutral=(base + displacement).astype(np.float32),
                   detail_rms_mm=float(detail_rms), skin=skin, textures=textures)
    for a in (out.identity, out.neutral, *textures.values()):
        a.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1)
def _shapes(seed: int, albedo_size: int) -> np.ndarray:
    """[52, V, 3] ARKit blendshapes of a subject (eye rotations about its own eyes)."""
    shapes = load_ict().arkit_blendshapes(_subject(seed, albedo_size).neutral)
    shapes.setflags(write=False)
    return shapes


def _case_streams(seed: int) -> dict[str, np.random.Generator]:
    names = ("identity", "detail", "skin", "pose", "background", "expression", "noise", "eyes", "occluder")
    seqs = np.random.SeedSequence([int(seed), 0xFACE]).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, seqs)}


def make_case(
    seed: int,
    *,
    expression: str | None = None,
    light: str = "soft",
    yaw_deg: float | None = None,
    pitch_deg: float | None = None,
    roll_deg: float | None = None,
    size: int = 512,
    albedo_size: int = 512,
    supersample: int = 2,
    occluder: str | None = None,
) -> Case:
    """Synthesise one photo with exact ground truth.

    Identity, detail, albedo, camera distance/framing, background and the
    default pose follow from ``seed`` only, so one seed under several lights and
    expressions is the same person photographed the same way.

    Args:
        seed: non-negative int.
        expression: None (neutral) or a key of :data:`EXPRESSIONS`.
        light: a key of :data:`LIGHTS`.
        yaw_deg: head yaw in [-60, 60] (default: uniform in [-45, 45] from the seed).
        pitch_deg: head pitch in [-30, 30] (default: uniform in [-10, 10]).
        roll_deg: head roll in [-30, 30] (default: uniform in [-5, 5]).
        size: photo side in pixels, in [64, 2048].
        albedo_size: GT albedo side (power of two).
        supersample: antialiasing samples per pixel side (1-4).
        occluder: None, or a kind of :data:`avatarsdk.scene.OCCLUDERS` drawn over the rendered
            photo (:func:`avatarsdk.scene.occlude`, its shape and colour from the seed); its coverage
            is the case's ``occluder_mask``.

    Returns:
        The :class:`Case`.

    Raises:
        InputError: bad arguments.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if expression is not None and expression not in EXPRESSIONS:
        raise InputError(f"unknown expression {expression!r}; known: {', '.join(EXPRESSIONS)} or None")
    if light not in LIGHTS:
        raise InputError(f"unknown light {light!r}; known: {', '.join(LIGHTS)}")
    if not isinstance(size, (int, np.integer)) or not 64 <= size <= 2048:
        raise InputError(f"size must be an int in [64, 2048], got {size!r}")
    if supersample not in (1, 2, 3, 4):
        raise InputError(f"supersample must be 1..4, got {supersample!r}")
    if occluder is not None and occluder not in OCCLUDERS:
        raise InputError(f"unknown occluder {occluder!r}; known: {', '.join(OCCLUDERS)} or None")
    rs = _case_streams(int(seed))
    subject = _subject(int(seed), int(albedo_size))
    neutral = subject.neutral

    pose = rs["pose"]
    yaw_s, pitch_s, roll_s = pose.uniform(-45, 45), pose.uniform(-10, 10), pose.uniform(-5, 5)
    dist = pose.uniform(0.5, 1.0)
    frac = pose.uniform(0.50, 0.62)
    off = pose.uniform(-0.03, 0.03, 2)
    yaw = float(yaw_s if yaw_deg is None else yaw_deg)
    pitch = float(pitch_s if pitch_deg is None else pitch_deg)
    roll = float(roll_s if roll_deg is None else roll_deg)
    for name, val, lim in (("yaw_deg", yaw, 60), ("pitch_deg", pitch, 30), ("roll_deg", roll, 30)):
        if not math.isfinite(val) or abs(val) > lim:
            raise InputError(f"{name} must be in [-{lim}, {lim}], got {val}")

    weights: dict[str, float] = {}
    posed = neutral
    scale = rs["expression"].uniform(0.75, 1.0)
    if expression is not None:
        weights = {k: round(float(w * scale), 4) for k, w in EXPRESSIONS[expression].items()}
        shapes = _shapes(int(seed), int(albedo_size))
        delta = sum(w * shapes[ARKIT_NAMES.index(k)] for k, w in weights.items())
        posed = (neutral + delta).astype(np.float32)

    cam = framed_camera(yaw, pitch, roll, dist, frac, off, size)
    sh = light_sh(light, cam.rotation)

    bg = random_background(rs["background"], size)
    linear, skin_cov = render_photo(posed, subject.textures, cam, sh, background=bg, supersample=supersample)
    occ_mask = np.zeros(linear.shape[:2], np.float32)
    if occluder is not None:
        skin = subject.skin
        linear, occ_mask = occlude(linear, occluder, posed, cam, sh, rs["occluder"], skin_srgb=tuple(skin.tone),
                                   hair_srgb=tuple(skin.hair_colour))
        skin_cov = skin_cov * (1 - occ_mask)
    noise = rs["noise"].normal(0.0, 1.0 / 255.0, linear.shape).astype(np.float32)
    srgb = _linear_to_srgb(torch.from_numpy(linear)).numpy() + noise
    photo = np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)
    return Case(seed=int(seed), photo=photo, skin_mask=skin_cov > 0.5, vertices_neutral=neutral,
                vertices_posed=posed, albedo=subject.textures["skin"], camera=cam, light=light, light_sh=sh,
                expression=expression, expression_weights=weights, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
                identity=subject.identity, detail_rms_mm=subject.detail_rms_mm, skin=subject.skin,
                occluder=occluder, occluder_mask=occ_mask)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def procrustes(source: np.ndarray, target: np.ndarray, *, scale: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares rigid (or similarity) transform taking ``source`` onto ``target`` (Umeyama 1991).

    Args:
        source: [N, 3] points; target: [N, 3] corresponding points.
        scale: also fit a uniform scale.

    Returns:
        (s, R [3, 3], t [3]) with ``target ~ s * source @ R.T + t``; s = 1 when rigid.
    """
    src = np.asarray(source, np.float64)
    dst = np.asarray(target, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(a.T @ b)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    r = vt.T @ d @ u.T
    s = float((sig * np.diag(d)).sum() / (a**2).sum()) if scale else 1.0
    return s, r, md - s * r @ ms


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest points on triangles (a, b, c) to points p, all [M, 3] (Ericson, Real-Time Collision Detection 5.1.5)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 / (va + vb + vc)
        out = a + ab * (vb * denom)[:, None] + ac * (vc * denom)[:, None]  # inside the face
        w_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        w_ac = d2 / (d2 - d6)
        v_ab = d1 / (d1 - d3)
    # Later assignments win: Ericson's tests in reverse order of precedence.
    regions = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), lambda: b + (c - b) * w_bc[:, None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), lambda: a + ac * w_ac[:, None]),
        ((d6 >= 0) & (d5 <= d6), lambda: c),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), lambda: a + ab * v_ab[:, None]),
        ((d3 >= 0) & (d4 <= d3), lambda: b),
        ((d1 <= 0) & (d2 <= 0), lambda: a),
    ]
    for sel, value in regions:
        if sel.any():
            out = np.where(sel[:, None], value(), out)
    return out


def point_to_surface(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, *, k: int = 16) -> np.ndarray:
    """Distance from each point to a triangle mesh surface.

    Exact point-to-triangle distances over the ``k`` triangles whose centroids
    are nearest (exact whenever the closest triangle is among them, which holds
    for meshes of small, regular triangles like ICT's face).

    Args:
        points: [P, 3] float metres.
        vertices: [V, 3] float; triangles: [F, 3] int.
        k: candidate triangles per point.

    Returns:
        [P] float64 distances (same units).
    """
    v = np.asarray(vertices, np.float64)
    tri = np.asarray(triangles, np.int64)
    p = np.asarray(points, np.float64)
    k = min(k, len(tri))
    _, cand = cKDTree(v[tri].mean(1)).query(p, k=k)
    cand = cand.reshape(len(p), k)
    a, b, c = (v[tri[cand.ravel(), i]] for i in range(3))
    q = _closest_on_triangles(np.repeat(p, k, axis=0), a, b, c)
    d = np.linalg.norm(q - np.repeat(p, k, axis=0), axis=1).reshape(len(p), k)
    return d.min(1)


@functools.lru_cache(maxsize=1)
def _face_surface() -> tuple[np.ndarray, np.ndarray]:
    """(GT region vertex ids, skin triangles of the face part) for the geometry metric."""
    topo = load_ict().topology
    skin = topo.tri_material == topo.materials.index("skin")
    tris = topo.triangles[skin & (topo.triangles < PARTS["face"][1]).all(1)]
    return face_region_vertices(), tris.astype(np.int64)


def geometry_error(gt_vertices: np.ndarray, rec_vertices: np.ndarray, *, align: str = "rigid") -> float:
    """Mean point-to-surface distance in mm from the GT face region to a reconstruction.

    The reconstruction is first aligned onto the GT by Procrustes on the
    corresponding face-region vertices; then each GT face-region vertex is
    measured to the reconstruction's face surface (skin triangles of ICT's
    face part). The alignment absorbs whatever a rigid motion can: e.g. a
    uniform 1 mm offset along the normals measures ~0.5 mm after "rigid" (the
    face shifts back toward the GT) and 1 mm with "none".

    Args:
        gt_vertices: [V, 3] GT neutral vertices, metres (ICT topology).
        rec_vertices: [V, 3] reconstructed neutral vertices, metres.
        align: "rigid" (rotation + translation, the paper's protocol),
            "similarity" (also a uniform scale) or "none" (same frame assumed).

    Returns:
        Mean distance in millimetres.

    Raises:
        InputError: unknown ``align``.
    """
    if align not in ("rigid", "similarity", "none"):
        raise InputError(f"align must be 'rigid', 'similarity' or 'none', got {align!r}")
    region, tris = _face_surface()
    gt = np.asarray(gt_vertices, np.float64)
    rec = np.asarray(rec_vertices, np.float64)
    if align != "none":
        s, r, t = procrustes(rec[region], gt[region], scale=align == "similarity")
        rec = s * rec @ r.T + t
    return float(point_to_surface(gt[region], rec, tris).mean() * 1000.0)


def _to_eval(albedo: np.ndarray) -> np.ndarray:
    a = np.asarray(albedo)
    if a.shape[0] != EVAL_SIZE:
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a[..., :3])).resize((EVAL_SIZE, EVAL_SIZE), Image.BOX))
    return a[..., :3].astype(np.float64) / 255.0


@functools.lru_cache(maxsize=1)
def _eval_mask() -> np.ndarray:
    return face_region_mask(EVAL_SIZE)


def albedo_l1(gt_albedo: np.ndarray, rec_albedo: np.ndarray) -> float:
    """Mean absolute sRGB difference in [0, 1] over the face region texels.

    Args:
        gt_albedo, rec_albedo: [S, S, 3] uint8 sRGB in the unified head UV
            (any square sizes; box-filtered to :data:`EVAL_SIZE`).

    Returns:
        L1 averaged over region texels and channels.
    """
    m = _eval_mask()
    return float(np.abs(_to_eval(gt_albedo) - _to_eval(rec_albedo))[m].mean())


OCCLUDED_ALPHA = 0.05
"""A texel counts as occluded when the occluder covers more than this fraction of its photo pixel."""


def texel_pixels(vertices: np.ndarray, camera: Camera, size: int = EVAL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Where each skin texel of a head lands in its photo, and whether the photo shows it.

    Args:
        vertices: [V, 3] the head as photographed (ICT topology, world frame).
        camera: the photo's camera.
        size: texture side.

    Returns:
        ([size, size, 2] float64 photo pixel (x, y) of each texel, [size, size] bool seen: the texel
        lies on a skin triangle, faces the camera and no other surface of the head is in front of it).
    """
    topo = load_ict().topology
    skin = np.nonzero(topo.tri_material == topo.materials.index("skin"))[0]
    verts = torch.from_numpy(np.asarray(vertices, np.float64))
    all_tris = torch.from_numpy(topo.triangles.astype(np.int64))
    normals = vertex_normals(verts, all_tris)
    tris = all_tris[skin]
    corners = torch.cat([verts[tris], normals[tris]], -1)[None]
    attrs, covered = rasterize_uv(corners, torch.from_numpy(topo.corner_uv[skin].copy()), size, extrapolate=0.0)
    pos = attrs[0, ..., :3].reshape(-1, 3).numpy()
    nrm = attrs[0, ..., 3:].reshape(-1, 3).numpy()
    pc = pos @ camera.rotation.T + camera.translation
    z = np.maximum(pc[:, 2], 1e-4)
    x = camera.fx * pc[:, 0] / z + camera.cx
    y = camera.fy * pc[:, 1] / z + camera.cy
    facing = ((nrm @ camera.rotation.T) * -pc).sum(1) > 0
    h, w = camera.height, camera.width
    frags = rasterize(transform_points(verts.float(), gl_matrices(camera, (h, w))), all_tris, (h, w))
    cam_z = (verts.float() @ torch.from_numpy(camera.rotation).float().T + torch.from_numpy(camera.translation).float())
    zbuf = interpolate(cam_z[:, 2:3], frags, all_tris)[0, ..., 0].numpy()
    zbuf = np.where(frags.mask[0].numpy(), zbuf, np.inf)
    px, py = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    seen = inside & facing & covered[0].reshape(-1).numpy()
    seen &= z <= zbuf[py.clip(0, h - 1), px.clip(0, w - 1)] + 0.003
    return np.stack([x, y], -1).reshape(size, size, 2), seen.reshape(size, size)


def occluded_texels(case: Case, size: int = EVAL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The face-region texels a case's photo shows, split by its occluder's ground-truth coverage.

    Returns:
        ([size, size] bool occluded: seen texels whose pixel the occluder covers by more than
        :data:`OCCLUDED_ALPHA`; [size, size] bool clear: the other seen texels), both inside
        :func:`avatarsdk.paint.face_region_mask`.
    """
    xy, seen = texel_pixels(case.vertices_posed, case.camera, size)
    cover = map_coordinates(np.asarray(case.occluder_mask, np.float32), [xy[..., 1], xy[..., 0]], order=1,
                            mode="constant", cval=0.0)
    region = face_region_mask(size) & seen
    occ = region & (cover > OCCLUDED_ALPHA)
    return occ, region & ~occ


@functools.lru_cache(maxsize=1)
def _lip_mask() -> np.ndarray:
    return lip_region(load_ict(), EVAL_SIZE).numpy().astype(bool)


def albedo_l1_in(gt_albedo: np.ndarray, rec_albedo: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean absolute sRGB difference over the texels of ``mask`` ([EVAL_SIZE, EVAL_SIZE] bool); None if empty."""
    if not mask.any():
        return None
    return float(np.abs(_to_eval(gt_albedo) - _to_eval(rec_albedo))[mask].mean())


def neutralisation_ratio(expressive_mm: Sequence[float], neutral_mm: Sequence[float]) -> float:
    """Sum of expressive-input errors over the sum of the paired neutral-input errors (1.0 = fully neutralised)."""
    e = np.asarray(expressive_mm, np.float64)
    n = np.asarray(neutral_mm, np.float64)
    ok = np.isfinite(e) & np.isfinite(n)
    if not ok.any() or n[ok].sum() <= 0:
        return float("nan")
    return float(e[ok].sum() / n[ok].sum())


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------

Method = Callable[[np.ndarray], Reconstruction]


@functools.lru_cache(maxsize=1)
def _generic_head_reconstruction() -> Reconstruction:
    colour = np.round(np.asarray(mean_albedo_srgb()) * 255).astype(np.uint8)
    return Reconstruction(vertices=load_ict().neutral.copy(), albedo=np.broadcast_to(colour, (64, 64, 3)).copy())


def generic_head(photo: np.ndarray) -> Reconstruction:
    """Method that ignores the photo: the generic ICT neutral and the procedural model's mean tone.

    Useful as a floor and to test the runner; its albedo spread over lights is
    0 and its neutralisation ratio 1 by construction, so the benchmark's
    baselines (:func:`avatarsdk.bench.methods.benchmark_methods`) use a mean face
    coloured from the photo instead.
    """
    return _generic_head_reconstruction()


BASELINES: dict[str, Method] = {"generic_head": generic_head}
"""Methods that need no fitting."""


# ---------------------------------------------------------------------------
# Identity similarity
# ---------------------------------------------------------------------------

def photo_embedding(photo: np.ndarray) -> np.ndarray | None:
    """dlib embedding [128] of the largest face in a photo (None when no face is found)."""
    p = load_photo(photo)
    try:
        lm = detect(p)
    except AvatarError:
        return None
    return embed_photo(p, lm)


def identity_similarity(photo_emb: np.ndarray, rec: Reconstruction) -> float:
    """Cosine between a photo's dlib embedding and that of the reconstruction's frontal render.

    The reconstruction is rendered with every material (its skin albedo, the
    default eyes and teeth) under the ``soft`` light from :func:`portrait_camera`;
    the chip is cut at dlib's 5 points projected from the ICT surface through the
    mediapipe correspondence (same topology for every method, no detection on
    the render). Methods without an albedo are rendered with a mid skin tone.

    Args:
        photo_emb: [128] embedding of the input photo (:func:`photo_embedding`).
        rec: the reconstruction.

    Returns:
        Cosine similarity in [-1, 1] (higher: the avatar looks more like the photo to dlib).
    """
    cam = portrait_camera()
    skin = rec.albedo if rec.albedo is not None else np.full((64, 64, 3), 180, np.uint8)
    textures = {"skin": np.asarray(skin)[..., :3], **default_textures()}
    lin, _ = render_photo(np.asarray(rec.vertices, np.float32), textures, cam, light_sh("soft", cam.rotation),
                          background=np.full((cam.height, cam.width, 3), 0.2, np.float32), supersample=1)
    img = (np.asarray(_linear_to_srgb(torch.from_numpy(lin))) * 255 + 0.5).astype(np.uint8)
    pts3 = points_on_mesh(np.asarray(rec.vertices, np.float64), load_correspondence())
    pts = np.zeros((478, 2))
    pts[:468] = cam.project(pts3)
    emb = embed_photo(img, pts)
    a, b = np.asarray(photo_emb, np.float64), np.asarray(emb, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


# ---------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------

def _morph(identity: np.ndarray) -> np.ndarray:
    return load_ict().morph(identity)


def _golden_yaw(i: int, max_yaw: float = 45.0) -> float:
    """Well-spread yaws in [-max_yaw, max_yaw] for any number of identities."""
    return float(max_yaw * (2.0 * ((0.5 + i * 0.6180339887498949) % 1.0) - 1.0))


def identity_case(seed: int, i: int) -> tuple[int, float]:
    """(case seed, yaw in degrees) of identity ``i`` of the benchmark run with ``seed`` (:func:`run`)."""
    return int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0] & 0x7FFFFFFF), _golden_yaw(i)


def _nanmean(x) -> float:
    x = np.asarray([v for v in x if v is not None], np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")


def _occlusion_summary(ok: list[dict]) -> dict:
    """Albedo L1 on occluded vs clear texels of the occluded inputs (overall and per occluder)."""
    out: dict = {}
    occluded = [r for r in ok if r.get("occluder")]
    for kind in [None, *sorted({r["occluder"] for r in occluded})]:
        rs = [r for r in occluded if kind is None or r["occluder"] == kind]
        occ = _nanmean(r["albedo_l1_occluded"] for r in rs)
        clear = _nanmean(r["albedo_l1_clear"] for r in rs)
        key = "" if kind is None else f"_{kind}"
        out[f"albedo_l1_occluded{key}"] = occ
        out[f"albedo_l1_clear{key}"] = clear
        out[f"occluded_ratio{key}"] = _ratio(occ, clear)
        if kind is None:
            out["albedo_l1_occluded_inputs"] = _nanmean(r["albedo_l1"] for r in rs)
            out["occluded_cases"] = len(rs)
    return out


def _lip_summary(ok: list[dict]) -> dict:
    """Lip-region albedo L1 of each expression's inputs vs the neutral inputs of the same identity and light."""
    out: dict = {}
    plain = [r for r in ok if not r.get("occluder")]
    neutral = {(r["identity"], r["light"]): r["lip_l1"] for r in plain if r["expression"] is None}
    for expr in sorted({r["expression"] for r in plain if r["expression"] is not None}):
        pairs = [(r["lip_l1"], neutral.get((r["identity"], r["light"]))) for r in plain if r["expression"] == expr]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        e, n = _nanmean(a for a, _ in pairs), _nanmean(b for _, b in pairs)
        out[f"lip_l1_{expr}"] = e
        out[f"lip_l1_{expr}_neutral"] = n
        out[f"lip_ratio_{expr}"] = _ratio(e, n)
    return out


def _summary(records: list[dict]) -> dict:
    ok = [r for r in records if r["ok"]]
    plain = [r for r in ok if not r.get("occluder")]  # the inputs without occluders (the original protocol)
    neutral = [r for r in plain if r["expression"] is None]
    expressive = [r for r in plain if r["expression"] is not None]
    pairs = {}
    for r in plain:
        pairs.setdefault((r["identity"], r["light"]), {})[r["expression"] is None] = r["geom_mm"]
    paired = [(p[False], p[True]) for p in pairs.values() if True in p and False in p]
    per_id_mean, per_id_std = [], []
    for ident in sorted({r["identity"] for r in neutral}):
        vals = [r["albedo_l1"] for r in neutral if r["identity"] == ident and r["albedo_l1"] is not None]
        if vals:
            per_id_mean.append(float(np.mean(vals)))
            per_id_std.append(float(np.std(vals)) if len(vals) > 1 else float("nan"))
    return {
        "geom_mm": _nanmean(r["geom_mm"] for r in neutral),
        "geom_sim_mm": _nanmean(r["geom_sim_mm"] for r in neutral),
        "geom_expr_mm": _nanmean(r["geom_mm"] for r in expressive),
        "neutralisation": neutralisation_ratio([a for a, _ in paired], [b for _, b in paired]),
        "albedo_l1": _nanmean(per_id_mean),
        "albedo_l1_light_std": _nanmean(per_id_std),
        "albedo_l1_expr": _nanmean(r["albedo_l1"] for r in expressive),
        "identity_cos": _nanmean(r.get("identity_cos") for r in neutral),
        **_occlusion_summary(ok),
        **_lip_summary(ok),
        "cases": len(records),
        "failures": len(records) - len(ok),
        "seconds_per_case": _nanmean(r["seconds"] for r in records),
    }


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def run(
    methods: Mapping[str, Method],
    *,
    n: int = 20,
    seed: int = 0,
    size: int = 1024,
    lights: Sequence[str] = DEFAULT_LIGHTS,
    photo_dir: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    albedo_size: int = 512,
    supersample: int = 2,
    identity: bool = False,
    occluders: Sequence[str] = (),
    config: Mapping | None = None,
) -> dict:
    """Run methods on n identities x lights x (neutral, expressive) synthetic photos, plus occluded ones.

    Identity i (case seed derived from ``seed`` and i) gets yaw from a
    golden-ratio sequence over [-45, 45] degrees, a random pitch/roll, and the
    expression ``smile``, ``jaw_open``, ``brows_up`` in turn; it is photographed
    under every light, once neutral and once with its expression (same pose),
    and, neutral, once with each occluder of ``occluders`` drawn over the photo
    (:func:`avatarsdk.scene.occlude`; the k-th occluder under light ``(i + k) mod len(lights)``),
    so there are ``n * (len(lights) * 2 + len(occluders))`` cases. Each case is generated
    once and given to every method.

    Args:
        methods: name -> callable(photo [H, W, 3] uint8) -> :class:`Reconstruction`.
            An :class:`~avatarsdk.errors.AvatarError` raised by a method counts
            as a failure of that case (recorded, left out of the means); any
            other exception propagates.
        n: number of identities (>= 1).
        seed: benchmark seed.
        size: photo side in pixels.
        lights: light names (keys of :data:`LIGHTS`).
        photo_dir: if given, every photo is written there as PNG plus ``cases.json``.
        progress: optional callback(done, total, label) after each case.
        albedo_size, supersample: passed to :func:`make_case` (smaller is faster).
        identity: also measure ``identity_cos`` (:func:`identity_similarity`,
            ~0.3 s per method and case).
        occluders: kinds of :data:`avatarsdk.scene.OCCLUDERS` photographed per identity (default none;
            ``avatarsdk bench fidelity`` and :func:`main` take all three).
        config: extra entries for the result's ``config`` (e.g. the parser the methods used).

    Returns:
        JSON-serialisable dict: ``config``, ``methods[name]["summary"]`` (see the
        module docstring for the metrics) and ``methods[name]["cases"]`` (one
        record per case: identity, light, expression, occluder, pose, ok/error, geom_mm,
        geom_sim_mm, albedo_l1, albedo_l1_occluded / albedo_l1_clear (occluded inputs: texels whose
        pixel the occluder hides / the other seen texels, :func:`occluded_texels`), lip_l1 (the lip
        texels, :func:`avatarsdk.albedo.lip_region`), seconds).

    Raises:
        InputError: bad arguments.
    """
    if not methods:
        raise InputError("no methods to benchmark")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    unknown = [name for name in lights if name not in LIGHTS]
    if unknown or not lights:
        raise InputError(f"unknown or no lights {unknown}; known: {', '.join(LIGHTS)}")
    unknown_occ = [k for k in occluders if k not in OCCLUDERS]
    if unknown_occ:
        raise InputError(f"unknown occluders {unknown_occ}; known: {', '.join(OCCLUDERS)}")
    expr_cycle = tuple(EXPRESSIONS)
    total = n * (len(lights) * 2 + len(occluders))
    records: dict[str, list[dict]] = {name: [] for name in methods}
    case_meta, gen_times, floors = [], [], []
    done = 0
    for i in range(n):
        case_seed, yaw = identity_case(seed, i)
        expression = expr_cycle[i % len(expr_cycle)]
        plan = [(light, expr, None) for light in lights for expr in (None, expression)]
        plan += [(lights[(i + k) % len(lights)], None, kind) for k, kind in enumerate(occluders)]
        for light, expr, kind in plan:
            t0 = time.perf_counter()
            case = make_case(case_seed, expression=expr, light=light, yaw_deg=yaw, size=size,
                             albedo_size=albedo_size, supersample=supersample, occluder=kind)
            gen_times.append(time.perf_counter() - t0)
            case_id = f"{i:03d}_{light}_{expr or 'neutral'}" + (f"_{kind}" if kind else "")
            if photo_dir is not None:
                atomic_write_bytes(Path(photo_dir) / f"{case_id}.png", png_bytes(case.photo))
                if kind:
                    mask = np.round(case.occluder_mask * 255).astype(np.uint8)
                    atomic_write_bytes(Path(photo_dir) / f"{case_id}_mask.png", png_bytes(mask))
            case_meta.append({"id": case_id, "identity": i, **case.meta()})
            emb = photo_embedding(case.photo) if identity else None
            occ_texels = occluded_texels(case) if kind else None
            if len(floors) <= i:
                # Error of the GT's own identity coefficients (no detail): the floor of a linear-model fit.
                floors.append(geometry_error(case.vertices_neutral, _morph(case.identity)))
            for name, method in methods.items():
                rec = {"case": case_id, "identity": i, "light": light, "expression": expr, "occluder": kind,
                       "yaw_deg": round(case.yaw_deg, 2), "pitch_deg": round(case.pitch_deg, 2),
                       "ok": True, "error": None, "geom_mm": None, "geom_sim_mm": None, "albedo_l1": None,
                       "albedo_l1_occluded": None, "albedo_l1_clear": None, "lip_l1": None, "identity_cos": None}
                if occ_texels is not None:
                    rec["occluded_texels"] = int(occ_texels[0].sum())
                t1 = time.perf_counter()
                try:
                    out = method(case.photo)
                    if not isinstance(out, Reconstruction):
                        raise TypeError(f"method {name!r} returned {type(out).__name__}, not Reconstruction")
                except AvatarError as e:
                    rec.update(ok=False, error=f"{type(e).__name__}: {e}")
                    log.info("%s failed on %s: %s", name, case_id, rec["error"])
                    out = None
                rec["seconds"] = round(time.perf_counter() - t1, 3)
                if out is not None:
                    rec["geom_mm"] = geometry_error(case.vertices_neutral, out.vertices)
                    rec["geom_sim_mm"] = geometry_error(case.vertices_neutral, out.vertices, align="similarity")
                    if out.albedo is not None:
                        rec["albedo_l1"] = albedo_l1(case.albedo, out.albedo)
                        rec["lip_l1"] = albedo_l1_in(case.albedo, out.albedo, _lip_mask())
                        if occ_texels is not None:
                            rec["albedo_l1_occluded"] = albedo_l1_in(case.albedo, out.albedo, occ_texels[0])
                            rec["albedo_l1_clear"] = albedo_l1_in(case.albedo, out.albedo, occ_texels[1])
                    if emb is not None:
                        rec["identity_cos"] = identity_similarity(emb, out)
                records[name].append(rec)
            done += 1
            if progress is not None:
                progress(done, total, case_id)
    if photo_dir is not None:
        atomic_write_bytes(Path(photo_dir) / "cases.json", json.dumps(_json_safe(case_meta), indent=1).encode())
    result = {
        "benchmark": "fidelity",
        "format": 2,
        "sdk_version": __version__,
        "config": {"n": n, "seed": seed, "size": size, "albedo_size": albedo_size, "supersample": supersample,
                   "lights": list(lights), "expressions": list(expr_cycle),
                   "cases": total, "eval_size": EVAL_SIZE, "alignment": "rigid Procrustes on face-region vertices",
                   "albedo_space": "sRGB [0, 1]", "case_seconds": _nanmean(gen_times),
                   "pca_floor_mm": _nanmean(floors), "identity": bool(identity), "occluders": list(occluders),
                   "occluded_alpha": OCCLUDED_ALPHA, **dict(config or {})},
        "methods": {name: {"summary": _summary(recs), "cases": recs} for name, recs in records.items()},
    }
    return _json_safe(result)


def _fmt(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def to_markdown(result: Mapping) -> str:
    """Render a :func:`run` result as a Markdown report with one table row per method."""
    cfg = result["config"]
    lines = [
        "# Fidelity benchmark (synthetic ground truth)",
        "",
        f"{cfg['n']} identities x {len(cfg['lights'])} lights ({', '.join(cfg['lights'])}) x "
        f"(neutral, expressive) + {len(cfg.get('occluders', []))} occluded per identity = {cfg['cases']} photos of "
        f"{cfg['size']} px, seed {cfg['seed']}" + (f"; parser {', '.join(cfg['parser'])}" if cfg.get("parser") else "")
        + (", permissive mode" if cfg.get("permissive") else "") + ".",
        "",
        "| method | geom mm (rigid) | geom mm (sim.) | geom mm (expr. input) | neutralisation | albedo L1 | "
        "albedo L1 std over lights | failures | s / case |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with_id = bool(cfg.get("identity"))
    if with_id:
        lines[-2] = lines[-2].replace("| failures |", "| identity cos | failures |")
        lines[-1] += "---:|"
    for name, m in result["methods"].items():
        s = m["summary"]
        ident = f"{_fmt(s.get('identity_cos'))} | " if with_id else ""
        lines.append(f"| {name} | {_fmt(s['geom_mm'])} | {_fmt(s['geom_sim_mm'])} | {_fmt(s['geom_expr_mm'])} | "
                     f"{_fmt(s['neutralisation'])} | {_fmt(s['albedo_l1'], 4)} | {_fmt(s['albedo_l1_light_std'], 4)} | "
                     f"{ident}{s['failures']}/{s['cases']} | {_fmt(s['seconds_per_case'], 2)} |")
    if cfg.get("occluders"):
        lines += [
            "",
            f"Occluded inputs ({', '.join(cfg['occluders'])} drawn over neutral photos; albedo L1 over the "
            "face-region texels the photo shows, split by the occluder's ground-truth coverage of their pixel):",
            "",
            "| method | occluded texels | clear texels | ratio | " + " | ".join(
                f"{k}: occl. / clear" for k in cfg["occluders"]) + " | all texels of occluded inputs |",
            "|---|---:|---:|---:|" + "---:|" * len(cfg["occluders"]) + "---:|",
        ]
        for name, m in result["methods"].items():
            s = m["summary"]
            per = " | ".join(f"{_fmt(s.get(f'albedo_l1_occluded_{k}'), 4)} / {_fmt(s.get(f'albedo_l1_clear_{k}'), 4)}"
                             for k in cfg["occluders"])
            lines.append(f"| {name} | {_fmt(s.get('albedo_l1_occluded'), 4)} | {_fmt(s.get('albedo_l1_clear'), 4)} | "
                         f"{_fmt(s.get('occluded_ratio'), 2)} | {per} | {_fmt(s.get('albedo_l1_occluded_inputs'), 4)} |")
    exprs = [e for e in cfg.get("expressions", []) if any(f"lip_l1_{e}" in m["summary"]
                                                         for m in result["methods"].values())]
    if exprs:
        lines += [
            "",
            "Lip-region albedo L1 (texels inside the lips' outline) from expressive inputs vs the neutral inputs "
            "of the same identities and lights:",
            "",
            "| method | " + " | ".join(f"{e}: expr. / neutral (ratio)" for e in exprs) + " |",
            "|---|" + "---:|" * len(exprs),
        ]
        for name, m in result["methods"].items():
            s = m["summary"]
            lines.append(f"| {name} | " + " | ".join(
                f"{_fmt(s.get(f'lip_l1_{e}'), 4)} / {_fmt(s.get(f'lip_l1_{e}_neutral'), 4)} "
                f"({_fmt(s.get(f'lip_ratio_{e}'), 2)})" for e in exprs) + " |")
    lines += [
        "",
        "- geom: mean distance (mm) from the GT neutral face-region vertices to the reconstructed neutral face "
        "surface after a rigid (sim.: similarity) Procrustes alignment on the same vertices; neutral inputs "
        "(expr. input: from the expressive photos).",
        "- neutralisation: geom error from expressive inputs / from the neutral inputs of the same identity, "
        "light and pose (1.0 = expression fully removed).",
        "- albedo L1: mean |sRGB difference| in [0, 1] over the face-region texels at "
        f"{cfg['eval_size']}², averaged over lights (inputs without occluders); std: its spread over the lights "
        "(lower = less sensitive).",
        f"- floor of a linear (ICT identity) model: {_fmt(cfg.get('pca_floor_mm'))} mm, the geom error of the GT's "
        "own identity coefficients without the detail displacement outside their span.",
        f"- case generation: {_fmt(cfg.get('case_seconds'), 2)} s per photo.",
        *(["- identity cos: cosine of the dlib embeddings of the photo and of a frontal render of the "
           "reconstruction (soft light), neutral inputs; higher is more alike."] if with_id else []),
        "",
    ]
    return "\n".join(lines)


def run_cli(
    n: int,
    seed: int,
    out_dir: str | Path,
    *,
    size: int = 1024,
    lights: Sequence[str] = DEFAULT_LIGHTS,
    methods: Mapping[str, Method] | None = None,
    photos: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    albedo_size: int = 512,
    supersample: int = 2,
    identity: bool = False,
    occluders: Sequence[str] = (),
    config: Mapping | None = None,
) -> dict:
    """Run the benchmark and write ``fidelity.json`` and ``fidelity.md`` (atomically) to ``out_dir``.

    Args:
        n, seed, size, lights, progress, albedo_size, supersample, identity, occluders, config: as in :func:`run`.
        out_dir: output folder (created).
        methods: default :data:`BASELINES`.
        photos: also write the photos and ``cases.json`` to ``out_dir/photos``.

    Returns:
        The :func:`run` result.
    """
    out = Path(out_dir)
    result = run(dict(methods or BASELINES), n=n, seed=seed, size=size, lights=lights,
                 photo_dir=out / "photos" if photos else None, progress=progress, albedo_size=albedo_size,
                 supersample=supersample, identity=identity, occluders=occluders, config=config)
    atomic_write_bytes(out / "fidelity.json", json.dumps(result, indent=1).encode())
    atomic_write_bytes(out / "fidelity.md", to_markdown(result).encode())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``benchmarks/fidelity.py``): run the baselines, write the reports, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="identities")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=512, help="photo size in pixels")
    ap.add_argument("--lights", default=",".join(DEFAULT_LIGHTS), help="comma-separated light names")
    ap.add_argument("--out", default="out/bench", help="output folder")
    ap.add_argument("--photos", action="store_true", help="also write the photos")
    ap.add_argument("--occluders", default=",".join(OCCLUDERS), help="comma-separated occluders ('none': no "
                    "occluded photos)")
    args = ap.parse_args(argv)
    occ = () if args.occluders in ("", "none") else tuple(args.occluders.split(","))
    result = run_cli(args.n, args.seed, args.out, size=args.size, lights=tuple(args.lights.split(",")),
                     photos=args.photos, occluders=occ)
    print(to_markdown(result))
    return 0

