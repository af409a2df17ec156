"""The synthetic photo studio: lights, framing, backgrounds, detail and the photo renderer.

What the fidelity benchmark (:mod:`avatarsdk.bench.fidelity`), the training
data (:mod:`avatarsdk.train`) and the inversion renders (:mod:`avatarsdk.invert`)
share to photograph an ICT head the same way:

* **Lights**: named second-order SH lights fixed to the camera (:data:`LIGHTS`,
  :func:`light_sh`, the convention of :mod:`avatarsdk.render.shading`).
* **Framing**: a phone photo cropped to the head (:func:`framed_camera`: 0.5-1 m
  away, the head :data:`HEAD_HEIGHT` filling a given fraction of the image,
  turned about :data:`PIVOT`, the camera aimed at :data:`LOOK_AT`); a frontal
  :func:`portrait_camera`.
* **Background**: gradient, blurred blobs and grain (:func:`random_background`, no photos).
* **Detail**: smooth displacement outside the ICT identity span (:func:`detail`).
* **Photo**: every material rendered Lambert with SH shading (:func:`render_photo`).
* **Occluders**: hair strands, a hand, glasses frames drawn over the photo with their exact
  coverage (:func:`occlude`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw

from avatarsdk.colour import srgb_to_linear as _srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.render.camera import Camera, gl_matrices
from avatarsdk.render.head import Material, render_layers
from avatarsdk.render.shading import sh_shading, vertex_normals
from avatarsdk.rigs import load_ict
from avatarsdk.rigs.mediapipe_map import load_correspondence, points_on_mesh
from avatarsdk.paint import face_region_vertices

__all__ = [
    "HEAD_HEIGHT",
    "IDENTITY_RENDER_SIZE",
    "LIGHTS",
    "LOOK_AT",
    "OCCLUDERS",
    "PIVOT",
    "detail",
    "framed_camera",
    "head_rotation",
    "light_sh",
    "occlude",
    "portrait_camera",
    "random_background",
    "render_photo",
]

LIGHTS: dict[str, dict] = {
    # Directions in the camera frame (x right, y up, z from the face toward the
    # camera); each light's RGB is its peak contribution to the shading factor.
    "soft": {"ambient": (0.50, 0.50, 0.50), "lights": [((-0.4, 0.45, 1.0), (0.55, 0.55, 0.55))]},
    "side": {"ambient": (0.10, 0.10, 0.10), "lights": [((1.0, 0.15, 0.25), (1.15, 1.12, 1.08))]},
    "coloured": {"ambient": (0.16, 0.18, 0.26), "lights": [((-0.8, 0.3, 0.6), (0.85, 0.62, 0.38)),
                                                           ((0.8, 0.1, 0.6), (0.22, 0.34, 0.65))]},
    "top": {"ambient": (0.18, 0.18, 0.18), "lights": [((0.0, 1.0, 0.3), (1.05, 1.05, 1.0))]},
    "dim": {"ambient": (0.16, 0.16, 0.17), "lights": [((0.3, 0.3, 1.0), (0.22, 0.21, 0.20))]},
    "flash": {"ambient": (0.12, 0.12, 0.12), "lights": [((0.0, 0.05, 1.0), (1.25, 1.25, 1.25))]},
}
"""Named lights: soft front, harsh side, warm/cool coloured, top, dim (underexposed), on-camera flash."""

HEAD_HEIGHT = 0.22  # chin to crown of the ICT head, metres (framing)
PIVOT = np.array([0.0, 0.01, 0.0])  # head rotation centre, metres
LOOK_AT = np.array([0.0, 0.03, 0.04])  # what the camera centres on


def _sh_dir(d: np.ndarray) -> np.ndarray:
    """The 9 real orthonormal SH functions at unit direction d, in the renderer's order."""
    x, y, z = d
    return np.array([0.282095, 0.488603 * y, 0.488603 * z, 0.488603 * x, 1.092548 * x * y, 1.092548 * y * z,
                     0.315392 * (3 * z * z - 1), 1.092548 * x * z, 0.546274 * (x * x - y * y)])


def light_sh(name: str, camera_rotation: np.ndarray | None = None) -> np.ndarray:
    """World-frame SH coefficients of a named light.

    A directional light of peak strength I from unit direction d (radiance
    ``I pi delta(w - d)``) has coefficients ``pi I Y00 Y_k(d)`` in the
    convention of :mod:`avatarsdk.render.shading`, whose shading is then the
    order-2 clamped cosine ``I (1/4 + cos/2 + 5/16 P2(cos))`` (1.06 I facing
    the light); ambient adds to coefficient 0.

    Args:
        name: a key of :data:`LIGHTS`.
        camera_rotation: [3, 3] OpenCV world-to-camera rotation; the lights are
            fixed to the camera. None: camera looking along -Z (world = camera frame).

    Returns:
        [9, 3] float32.

    Raises:
        InputError: unknown light.
    """
    if name not in LIGHTS:
        raise InputError(f"unknown light {name!r}; known: {', '.join(LIGHTS)}")
    spec = LIGHTS[name]
    # Camera frame (x right, y up, z toward the camera) = OpenGL camera axes.
    r_gl = np.diag([1.0, -1.0, -1.0]) @ (np.diag([1.0, -1.0, -1.0]) if camera_rotation is None else camera_rotation)
    out = np.zeros((9, 3))
    out[0] += np.asarray(spec["ambient"], np.float64)
    for d, rgb in spec["lights"]:
        d = np.asarray(d, np.float64)
        d = r_gl.T @ (d / np.linalg.norm(d))
        out += math.pi * 0.282095 * _sh_dir(d)[:, None] * np.asarray(rgb, np.float64)[None]
    return out.astype(np.float32)


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head rotation R = Rz(roll) Rx(pitch) Ry(yaw), degrees."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float32 linear background: gradient, blurred blobs, grain (no photos)."""
    n = 48
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1)
    c0, c1 = rng.uniform(0.02, 0.55, 3), rng.uniform(0.02, 0.55, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)[..., None]
    img = (1 - t) * c0 + t * c1
    for _ in range(rng.integers(3, 8)):
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        rx, ry = rng.uniform(0.06, 0.35, 2)
        a = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** rng.uniform(1.0, 3.0))
        img = img * (1 - 0.8 * a[..., None]) + 0.8 * a[..., None] * rng.uniform(0.01, 0.7, 3)
    big = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(size, size),
                                          mode="bicubic", align_corners=True)[0].permute(1, 2, 0).numpy()
    grain = rng.standard_normal((size // 4, size // 4, 1)).repeat(4, 0).repeat(4, 1)
    return np.clip(big * (1 + 0.04 * grain), 0.003, 1).astype(np.float32)


def framed_camera(yaw: float, pitch: float, roll: float, distance: float, fraction: float,
                  shift: np.ndarray, size: int) -> Camera:
    """The camera of a square photo of the head turned by (yaw, pitch, roll).

    The head turns about :data:`PIVOT`; the camera, ``distance`` metres in
    front of :data:`LOOK_AT`, has the focal length that makes :data:`HEAD_HEIGHT`
    fill ``fraction`` of the image height, and its principal point moved by
    ``shift`` (fractions of the size) from the image centre.

    Args:
        yaw, pitch, roll: head rotation in degrees (:func:`head_rotation`).
        distance: camera distance, metres.
        fraction: head height over image height.
        shift: [2] principal point offset (x, y) as fractions of ``size``.
        size: image side in pixels.

    Returns:
        The :class:`~avatarsdk.render.camera.Camera` (world = the head's vertex frame).
    """
    focal = fraction * size * distance / HEAD_HEIGHT
    r_head = head_rotation(yaw, pitch, roll)
    r_front = np.diag([1.0, -1.0, -1.0])
    centre = LOOK_AT + np.array([0.0, 0.0, distance])
    rot = r_front @ r_head
    trans = r_front @ (PIVOT - r_head @ PIVOT - centre)
    return Camera(fx=float(focal), fy=float(focal), cx=float((size - 1) / 2 + shift[0] * size),
                  cy=float((size - 1) / 2 + shift[1] * size), width=int(size), height=int(size),
                  rotation=rot, translation=trans)


_WET = (0.92, 0.92, 0.92, 0.03)  # the exporter's eye_wet style: a nearly clear film
_BLENDED = ("eyelashes", "eye_wet")


def _photo_material(name: str, tex: torch.Tensor | None) -> Material:
    """The photo look of an ICT material: the tear film nearly clear, textured ones their texture, others grey."""
    mode = "BLEND" if name in _BLENDED else "OPAQUE"
    if name == "eye_wet":
        return Material(colour=_WET, alpha_mode=mode)
    if tex is not None:
        return Material(texture=tex, alpha_mode=mode)
    return Material(colour=(0.5, 0.5, 0.5, 1.0), alpha_mode=mode)


def render_photo(
    vertices: np.ndarray,
    textures: Mapping[str, np.ndarray],
    camera: Camera,
    sh: np.ndarray,
    *,
    background: np.ndarray | None = None,
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Render an ICT head (all materials) as a photo: Lambert with SH shading.

    Materials as in :mod:`avatarsdk.preview`: skin, eyes and teeth textured and
    opaque; lashes (RGBA texture) and the tear film (nearly clear) alpha-blended
    over the opaque surface in front of them. Normals are flipped toward the
    camera (the lash cards are double-sided).

    Args:
        vertices: [V, 3] float metres (ICT topology), world frame.
        textures: "skin" [S, S, 3] uint8 sRGB albedo (unified head UV) and
            "eyes", "teeth", "eyelashes" as from
            :func:`avatarsdk.materials.default_textures`.
        camera: OpenCV camera; the image is (camera.height, camera.width).
        sh: [9, 3] world-frame SH coefficients (:func:`light_sh`).
        background: [H, W, 3] float linear background (default mid grey;
            :func:`random_background` paints a random one).
        supersample: render at this many samples per pixel side, box-filtered.

    Returns:
        ([H, W, 3] float32 linear image, [H, W] float32 skin coverage in [0, 1]).
    """
    topo = load_ict().topology
    ss = int(supersample)
    h, w = camera.height * ss, camera.width * ss
    tex = {k: torch.tensor(np.asarray(v), dtype=torch.float32) / 255.0 for k, v in textures.items()}
    materials = [_photo_material(name, tex.get(name)) for name in topo.materials]
    faces = torch.from_numpy(topo.triangles.astype(np.int64))
    if background is None:
        background = np.full((camera.height, camera.width, 3), 0.2, np.float32)
    bg = torch.tensor(np.asarray(background), dtype=torch.float32).repeat_interleave(ss, 0).repeat_interleave(ss, 1)
    with torch.no_grad():
        # Geometry projected in float64, rasterized and shaded in float32; opaque surfaces are closed
        # or seen from their front: their back faces are culled (2-3x faster).
        out = render_layers(torch.tensor(np.asarray(vertices), dtype=torch.float64), faces,
                            gl_matrices(camera, (h, w), near=0.05, far=10.0, dtype=torch.float64), bg,
                            corner_uv=torch.tensor(topo.corner_uv).reshape(-1, 2),
                            corner_faces=torch.arange(3 * len(faces)).view(-1, 3), materials=materials,
                            tri_material=torch.tensor(topo.tri_material, dtype=torch.int64),
                            light=torch.tensor(np.asarray(sh), dtype=torch.float32),
                            eye=torch.from_numpy(camera.centre).float(), cull_opaque=True,
                            coverage_of=topo.materials.index("skin"), dtype=torch.float32)
    img, skin_cov = out.image, out.coverage
    img = img.view(camera.height, ss, camera.width, ss, 3).mean((1, 3))
    skin_cov = skin_cov.view(camera.height, ss, camera.width, ss).mean((1, 3))
    return img.numpy(), skin_cov.numpy()


@functools.lru_cache(maxsize=1)
def _identity_span() -> np.ndarray:
    """[3V, 100] float32 orthonormal basis of the ICT identity span."""
    basis = load_ict().identity_basis.astype(np.float64)
    q, _ = np.linalg.qr(basis.reshape(basis.shape[0], -1).T)
    return q.astype(np.float32)


def detail(vertices: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Smooth displacement outside the identity span: ([V, 3] float32 metres, RMS mm over the face region)."""
    region = face_region_vertices()
    tris = load_ict().topology.triangles.astype(np.int64)
    n = vertex_normals(torch.from_numpy(vertices.astype(np.float64)), torch.from_numpy(tris)).numpy()
    v = vertices.astype(np.float64)
    d = np.zeros_like(v)
    for _ in range(4):
        c = region[rng.integers(len(region))]
        sigma = rng.uniform(0.012, 0.025)
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 3.5) * 1e-3
        d += amp * np.exp(-((v - v[c]) ** 2).sum(1) / (2 * sigma**2))[:, None] * n[c]
    q = _identity_span().astype(np.float64)
    flat = d.ravel()
    flat = flat - q @ (q.T @ flat)  # remove what the identity shapes can express
    d = flat.reshape(-1, 3)
    rms = float(np.sqrt((d[region] ** 2).sum(1).mean()))
    target = rng.uniform(0.8, 1.6) * 1e-3
    d *= target / max(rms, 1e-12)
    return d.astype(np.float32), target * 1000.0


IDENTITY_RENDER_SIZE = 384
"""Side of the frontal render whose dlib embedding :func:`avatarsdk.bench.fidelity.identity_similarity` compares."""


def portrait_camera(size: int = IDENTITY_RENDER_SIZE, distance: float = 0.6) -> Camera:
    """A frontal camera on the ICT head (face ~60% of the image height)."""
    rot = np.diag([1.0, -1.0, -1.0])  # OpenCV camera looking down -Z of the head frame
    centre = LOOK_AT + np.array([0.0, 0.0, distance])
    focal = 0.6 * size * distance / HEAD_HEIGHT
    return Camera(fx=focal, fy=focal, cx=(size - 1) / 2.0, cy=(size - 1) / 2.0, width=size, height=size,
                  rotation=rot, translation=-rot @ centre)


# ---------------------------------------------------------------------------
# Occluders: drawn over the rendered photo, with their exact coverage as ground truth
# ---------------------------------------------------------------------------

OCCLUDERS = ("hair", "hand", "glasses")
"""What :func:`occlude` draws: a lock of hair strands across the forehead and down one cheek, a
skin-coloured hand over the chin and mouth, glasses frames."""

_OCC_SS = 4  # coverage supersampling of the occluder masks

# Mediapipe face-mesh indices (subject's right = image left on a frontal photo).
_MP = {"forehead": 10, "mid_forehead": 151, "chin": 152, "upper_lip": 0, "lower_lip": 17, "mouth_r": 61,
       "mouth_l": 291, "nose_tip": 1, "subnasal": 2, "bridge": 168, "eye_r_out": 33, "eye_r_in": 133,
       "eye_l_out": 263, "eye_l_in": 362, "brow_r": 105, "brow_l": 334, "temple_r": 127, "temple_l": 356,
       "cheek_r": 50, "cheek_l": 280, "jaw_r": 172, "jaw_l": 397, "face_r": 234, "face_l": 454,
       "forehead_r": 67, "forehead_l": 297}


def _coverage(size: tuple[int, int], draw) -> np.ndarray:
    """[H, W] float32 coverage in [0, 1] of what ``draw(ImageDraw, scale)`` paints at 4x, box-filtered."""
    h, w = size
    img = Image.new("L", (w * _OCC_SS, h * _OCC_SS), 0)
    draw(ImageDraw.Draw(img), float(_OCC_SS))
    a = np.asarray(img, np.float32).reshape(h, _OCC_SS, w, _OCC_SS).mean((1, 3)) / 255.0
    return a


def _spline(points: np.ndarray, n: int = 12) -> np.ndarray:
    """Catmull-Rom curve through [K, 2] points (n samples per span)."""
    p = np.concatenate([points[:1] * 2 - points[1:2], points, points[-1:] * 2 - points[-2:-1]])
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    return np.concatenate([*out, points[-1:]])


def _line(d, pts: np.ndarray, width: float, scale: float, fill: int = 255) -> None:
    q = [(float(x) * scale + scale / 2, float(y) * scale + scale / 2) for x, y in pts]
    wpx = max(1, round(width * scale))
    d.line(q, fill=fill, width=wpx, joint="curve")
    for x, y in (q[0], q[-1]):  # round caps
        d.ellipse([x - wpx / 2, y - wpx / 2, x + wpx / 2, y + wpx / 2], fill=fill)


def _front_shading(sh: np.ndarray, camera: Camera, tilt: np.ndarray | None = None) -> np.ndarray:
    """[3] SH shading of a surface facing the camera (optionally tilted: a camera-frame offset of its normal)."""
    n_cam = np.array([0.0, 0.0, -1.0]) + (np.zeros(3) if tilt is None else np.asarray(tilt, np.float64))
    n_world = camera.rotation.T @ (n_cam / np.linalg.norm(n_cam))  # OpenCV camera -> world
    return sh_shading(torch.tensor(n_world, dtype=torch.float32)[None], torch.as_tensor(sh).float())[0].clamp_min(
        0.0).numpy()


def _composite(img: np.ndarray, cover: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """img over-painted with colour ([H, W, 3] or [3]) at coverage alpha; cover accumulates in place."""
    a = alpha[..., None]
    cover[...] = 1 - (1 - cover) * (1 - alpha)
    return img * (1 - a) + np.asarray(colour, np.float32) * a


def occlude(
    image: np.ndarray,
    kind: str,
    vertices: np.ndarray,
    camera: Camera,
    sh: np.ndarray,
    rng: np.random.Generator,
    *,
    skin_srgb: tuple[float, float, float] = (0.75, 0.55, 0.45),
    hair_srgb: tuple[float, float, float] = (0.18, 0.13, 0.09),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw an occluder over a rendered photo (a separate 2D step after :func:`render_photo`).

    The occluder is placed from the face-mesh points of the head as photographed
    (the mediapipe -> ICT correspondence projected through the camera) and lit
    with the photo's SH light as a surface facing the camera:

    * ``"hair"``: a lock of 40-70 strands (hair colour, 0.7-1.3x brightness each)
      from the hairline on one side, across the forehead and down the cheek on the
      side turned toward the camera, to the jaw.
    * ``"hand"``: a skin-coloured hand (the subject's tone, slightly darker and
      redder) whose palm sits under the chin and whose four fingers, shaded like
      cylinders, cover the chin and the mouth up to under the nose.
    * ``"glasses"``: frames 3-5 mm thick in dark or coloured plastic: two rims
      1.5 cm in front of the eyes, the bridge, and the temples toward the ears
      (projected in 3D; clear lenses).

    Args:
        image: [H, W, 3] float linear photo (as :func:`render_photo` returns).
        kind: one of :data:`OCCLUDERS`.
        vertices: [V, 3] the head as photographed (ICT topology, world frame).
        camera: the photo's camera.
        sh: [9, 3] world-frame SH light (:func:`light_sh`).
        rng: randomness of the shape and colour.
        skin_srgb: the subject's skin tone (the hand's colour).
        hair_srgb: the subject's hair colour (the lock's).

    Returns:
        ([H, W, 3] float32 linear photo with the occluder, [H, W] float32 occluder
        coverage in [0, 1]: the ground truth of what it hides).

    Raises:
        InputError: unknown kind.
    """
    if kind not in OCCLUDERS:
        raise InputError(f"unknown occluder {kind!r}; known: {', '.join(OCCLUDERS)}")
    h, w = image.shape[:2]
    pts3 = points_on_mesh(np.asarray(vertices, np.float64), load_correspondence())
    pts = camera.project(pts3)
    p = {k: pts[i] for k, i in _MP.items()}
    d = float(np.linalg.norm(p["eye_l_out"] - p["eye_r_out"]))  # outer eye corners: ~9 cm
    img = np.array(image, np.float32)
    cover = np.zeros((h, w), np.float32)
    to_lin = _srgb_to_linear
    if kind == "hair":
        # The side turned toward the camera shows more cheek: its face edge lies farther from the nose.
        right = np.linalg.norm(p["face_r"] - p["nose_tip"]) >= np.linalg.norm(p["face_l"] - p["nose_tip"])
        near, far = ("r", "l") if right else ("l", "r")
        up = p["forehead"] - p["chin"]
        up = up / max(float(np.linalg.norm(up)), 1e-6)
        path = np.stack([p[f"forehead_{far}"] + 0.05 * d * up,
                         0.5 * p["forehead"] + 0.5 * p["mid_forehead"],
                         0.5 * p[f"brow_{near}"] + 0.5 * p[f"forehead_{near}"],
                         0.6 * p[f"temple_{near}"] + 0.4 * p[f"brow_{near}"],
                         0.5 * p[f"cheek_{near}"] + 0.5 * p[f"face_{near}"],
                         0.6 * p[f"jaw_{near}"] + 0.4 * p[f"face_{near}"]])
        base = to_lin(torch.tensor(hair_srgb, dtype=torch.float32)).numpy() * _front_shading(sh, camera)
        for group in range(3):
            strands = []
            for _ in range(int(rng.integers(14, 24))):
                jitter = rng.normal(0.0, 0.07 * d, (len(path), 2)) + rng.normal(0.0, 0.05 * d, 2)
                keep = len(path) - int(rng.integers(0, 2))  # some strands end earlier
                strands.append((_spline(path[:keep] + jitter[:keep]), rng.uniform(0.008, 0.022) * d))

            def draw(dr, s, strands=strands):
                for curve, width in strands:
                    _line(dr, curve, width, s)
            alpha = _coverage((h, w), draw)
            img = _composite(img, cover, base * rng.uniform(0.7, 1.3), alpha)
    elif kind == "hand":
        tone = to_lin(torch.tensor(skin_srgb, dtype=torch.float32)).numpy() * np.array([0.95, 0.86, 0.84]) \
            * rng.uniform(0.85, 1.05)
        up = p["subnasal"] - p["chin"]
        length = float(np.linalg.norm(up))
        up = up / max(length, 1e-6)
        ang = np.radians(rng.uniform(-20, 20))
        up = np.array([np.cos(ang) * up[0] - np.sin(ang) * up[1], np.sin(ang) * up[0] + np.cos(ang) * up[1]])
        side = np.array([-up[1], up[0]])
        fw = 0.2 * d  # finger width
        palm_top = p["chin"] - 0.15 * length * up
        centre_x = (p["mouth_r"] + p["mouth_l"]) / 2 - p["chin"]
        palm_top = palm_top + side * float(centre_x @ side)
        tips = 0.85 * length  # fingertips just under the nose
        palm_c = palm_top - 0.45 * d * up

        def palm(dr, s):
            poly = [palm_top + side * 2.1 * fw + 0.1 * d * up, palm_top - side * 2.1 * fw + 0.1 * d * up,
                    palm_c - side * 2.0 * fw - 0.9 * d * up, palm_c + side * 2.0 * fw - 0.9 * d * up]
            dr.polygon([(float(x) * s + s / 2, float(y) * s + s / 2) for x, y in poly], fill=255)
        alpha = _coverage((h, w), palm)
        img = _composite(img, cover, tone * _front_shading(sh, camera, 0.2 * np.r_[0.0, 0.5, 0.0]), alpha)
        for k, off in enumerate((-1.5, -0.5, 0.5, 1.5)):
            base = palm_top + side * off * fw * 1.02
            tip = base + up * tips * (0.86, 1.0, 0.97, 0.8)[k] + side * rng.normal(0, 0.05 * fw)
            seg = np.stack([base, tip])
            # A cylinder's shading: darker at the sides (normal turned away), lighter on the ridge.
            for width, tilt in ((1.0, 0.9), (0.75, 0.5), (0.45, 0.15)):
                alpha = _coverage((h, w), lambda dr, s, seg=seg, width=width: _line(dr, seg, width * fw, s))
                img = _composite(img, cover, tone * _front_shading(sh, camera, np.r_[tilt * 0.6, -0.2, 0.0]), alpha)
    else:  # glasses
        fwd = np.array([0.0, 0.0, 1.0])  # the ICT head looks along +Z
        thick = rng.uniform(0.003, 0.005)
        colour = np.array([(0.03, 0.03, 0.03), (0.10, 0.05, 0.03), (0.35, 0.05, 0.05),
                           (0.05, 0.08, 0.25)][int(rng.integers(4))], np.float32)
        lens_w, lens_h = rng.uniform(0.024, 0.028), rng.uniform(0.017, 0.022)
        curves = []
        t = np.linspace(0, 2 * np.pi, 64)
        rims = {}
        for side_name in ("r", "l"):
            c3 = (pts3[_MP[f"eye_{side_name}_out"]] + pts3[_MP[f"eye_{side_name}_in"]]) / 2 + 0.015 * fwd
            c3 = c3 + np.array([0.0, -0.002, 0.0])
            ring = c3 + np.stack([lens_w * np.cos(t), lens_h * np.sin(t) * (1 - 0.15 * (np.sin(t) < 0)),
                                  np.zeros_like(t)], 1)
            rims[side_name] = ring
            curves.append(ring)
        away = {"r": np.sign(rims["r"][0, 0] - rims["l"][0, 0]), "l": np.sign(rims["l"][0, 0] - rims["r"][0, 0])}
        inner_r = rims["r"][np.argmin(rims["r"][:, 0] * away["r"])]
        inner_l = rims["l"][np.argmin(rims["l"][:, 0] * away["l"])]
        mid = (inner_r + inner_l) / 2 + np.array([0.0, 0.004, 0.004])
        curves.append(np.stack([inner_r, mid, inner_l]))
        # The temple on the side turned away from the camera is behind the head.
        turn = float(np.linalg.norm(p["face_r"] - p["nose_tip"]) - np.linalg.norm(p["face_l"] - p["nose_tip"]))
        for side_name in ("r", "l"):
            if abs(turn) > 0.1 * d and (turn > 0) != (side_name == "r"):
                continue
            outer = rims[side_name][np.argmax(rims[side_name][:, 0] * away[side_name])]
            ear = pts3[_MP[f"face_{side_name}"]] + np.array([0.0, 0.01, -0.01])
            curves.append(np.stack([outer, outer - 0.01 * fwd, ear]))
        depth = float(np.median((pts3 @ camera.rotation.T + camera.translation)[:, 2]))
        width_px = thick * camera.fx / depth

        def frames(dr, s):
            for c in curves:
                _line(dr, camera.project(c), width_px, s)
        alpha = _coverage((h, w), frames)
        img = _composite(img, cover, colour * _front_shading(sh, camera), alpha)
    return img.astype(np.float32), cover.astype(np.float32)
