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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch

from avatarsdk.colour import srgb_to_linear as _srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.render import rasterize, texture, transform_points
from avatarsdk.render.camera import Camera, gl_matrices
from avatarsdk.render.shading import sh_shading, vertex_normals
from avatarsdk.rigs import load_ict
from avatarsdk.paint import face_region_vertices

__all__ = [
    "HEAD_HEIGHT",
    "IDENTITY_RENDER_SIZE",
    "LIGHTS",
    "LOOK_AT",
    "PIVOT",
    "detail",
    "framed_camera",
    "head_rotation",
    "light_sh",
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
    matrix = gl_matrices(camera, (h, w), near=0.05, far=10.0, dtype=torch.float64)
    pos = torch.tensor(np.asarray(vertices), dtype=torch.float64)
    faces = torch.from_numpy(topo.triangles.astype(np.int64))
    clip = transform_points(pos, matrix).float()
    normals = vertex_normals(pos.float(), faces)
    cuv = torch.tensor(topo.corner_uv)
    mat = torch.tensor(topo.tri_material, dtype=torch.int64)
    names = topo.materials
    tex = {k: torch.tensor(np.asarray(v), dtype=torch.float32) / 255.0 for k, v in textures.items()}
    cam_centre = torch.from_numpy(camera.centre).float()
    sh_t = torch.tensor(np.asarray(sh), dtype=torch.float32)

    if background is None:
        background = np.full((camera.height, camera.width, 3), 0.2, np.float32)
    img = torch.tensor(np.asarray(background), dtype=torch.float32).repeat_interleave(ss, 0).repeat_interleave(ss, 1)
    img = img.clone()
    skin_cov = torch.zeros(h, w)
    blend_names = ("eyelashes", "eye_wet")
    is_blend = torch.tensor([n in blend_names for n in names])[mat]
    opaque_depth = torch.full((h, w), float("inf"))
    with torch.no_grad():
        for layer_blend in (False, True):
            sel = torch.nonzero(is_blend == layer_blend).squeeze(1)
            if len(sel) == 0:
                continue
            # Opaque surfaces are closed or seen from their front: cull back faces (2-3x faster).
            frags = rasterize(clip, faces[sel], (h, w), cull_backfaces=not layer_blend)
            tid = frags.tri_id[0]
            mask = tid >= 0
            if layer_blend:
                mask &= frags.depth[0] < opaque_depth
            else:
                opaque_depth = torch.where(mask, frags.depth[0], opaque_depth)
            if not mask.any():
                continue
            gt = sel[tid[mask]]
            bary = frags.bary[0][mask]
            uv = (bary.unsqueeze(-1) * cuv[gt]).sum(1)
            n = (bary.unsqueeze(-1) * normals[faces[gt]]).sum(1)
            n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            p = (bary.unsqueeze(-1) * pos.float()[faces[gt]]).sum(1)
            n = torch.where(((n * (cam_centre - p)).sum(-1, keepdim=True) < 0), -n, n)
            m = mat[gt]
            rgba = torch.ones(len(gt), 4)
            for i, name in enumerate(names):
                hit = m == i
                if not hit.any():
                    continue
                if name == "eye_wet":
                    rgba[hit] = torch.tensor(_WET)
                elif name in tex:
                    s = texture(tex[name], uv[hit].view(1, -1, 1, 2))[0, :, 0]
                    rgba[hit, :3] = _srgb_to_linear(s[:, :3])
                    rgba[hit, 3] = s[:, 3] if s.shape[1] == 4 else 1.0
                else:
                    rgba[hit, :3] = 0.5
            colour = rgba[:, :3] * sh_shading(n, sh_t).clamp_min(0.0)
            alpha = rgba[:, 3:4] if layer_blend else torch.ones(len(gt), 1)
            img[mask] = img[mask] * (1 - alpha) + colour * alpha
            if not layer_blend:
                skin_cov[mask] = (m == names.index("skin")).float()
            else:
                skin_cov[mask] = skin_cov[mask] * (1 - alpha[:, 0])
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
