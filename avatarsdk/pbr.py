"""PBR maps of the skin: tangent-space normal map, roughness by region, baked ambient occlusion.

Three maps in the unified head UV of the ``skin`` material, stored in
``Avatar.textures`` next to the albedo under the keys :data:`NORMAL_KEY` and
:data:`ORM_KEY` (the exporters put them into the material):

* ``skin_normal``: tangent-space normal map (glTF convention: +X along +u, +Y
  towards the top of the image, i.e. along -v, +Z out of the surface; the
  tangent frame the exporter writes follows the same UVs). It carries skin
  micro-relief the 26k-vertex mesh cannot hold: pores, fine creases on the
  forehead and a slight lumpiness. The relief is procedural, a function of 3D
  position on the generic head (so it is seamless across UV seams) seeded by
  the identity (same avatar, same relief; the strengths of pores and creases
  are drawn from that seed). It is *procedural* rather than read from the
  photo because a single phone photo resolves neither pores (< 1 px) nor
  creases separably from albedo: after de-lighting, any residual in the photo
  is already baked into the albedo, and turning it into relief would also turn
  freckles, brows and make-up into bumps. See the README for what it does to
  the shading-normal error on the synthetic benchmark.
* ``skin_orm``: glTF's packed occlusion-roughness-metallic texture: R =
  ambient occlusion baked from the avatar's own geometry (hemisphere
  visibility per vertex from depth maps rendered along 32 directions, then
  interpolated over the UV charts), G = roughness by facial region (lips, the
  oily T-zone, cheeks, scalp and neck, wet eye and mouth sockets), B =
  metallic, 0.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from scipy import ndimage

from avatarsdk.errors import InputError
from avatarsdk.render import rasterize
from avatarsdk.render.shading import vertex_normals
from avatarsdk.paint import _head, _noise, texel_fields
from avatarsdk.datatypes import Topology

__all__ = ["NORMAL_KEY", "ORM_KEY", "ROUGHNESS", "ambient_occlusion", "bake_vertex_field", "decode_normals",
           "encode_normals", "normal_map", "roughness_map", "skin_maps"]

NORMAL_KEY = "skin_normal"
ORM_KEY = "skin_orm"

# Roughness by region (perceptual roughness, glTF). Measured skin gloss (Weyrich
# et al. 2006, "Analysis of human faces using a measurement-based skin
# reflectance model": Torrance-Sparrow m ~ 0.3-0.45 over the face, lowest on
# the forehead and nose) mapped to glTF's roughness; lips and wet tissue shinier.
ROUGHNESS: dict[str, float] = {
    "cheek": 0.58,  # default face skin
    "t_zone": 0.45,  # forehead, nose, chin: oilier
    "lips": 0.38,
    "scalp": 0.75,  # back of the head and neck: under hair, matte
    "wet": 0.15,  # lid margins, eye and mouth sockets
}

_AO_DIRECTIONS = 32
_AO_RESOLUTION = 160  # depth map side; ~2 mm per pixel over a 0.3 m head (bias below matches)
_AO_BIAS = 0.002  # metres: a vertex within 2 mm of the depth map's surface sees that direction
_OCCLUDERS = ("skin", "eyes", "teeth")  # lashes and tear film are see-through


def _check_size(size) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 64 or size & (size - 1):
        raise InputError(f"map size must be a power of two >= 64, got {size!r}")


def _fibonacci_sphere(n: int) -> np.ndarray:
    """[n, 3] near-uniform unit directions (golden-angle spiral)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = i * np.pi * (3 - np.sqrt(5))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def ambient_occlusion(vertices: np.ndarray, topology: Topology, *, directions: int = _AO_DIRECTIONS,
                      resolution: int = _AO_RESOLUTION) -> np.ndarray:
    """Cosine-weighted hemisphere visibility of every vertex against the head itself.

    For each of ``directions`` near-uniform directions d the skin, eye and teeth
    triangles are rasterised orthographically along d (batched calls of
    :func:`avatarsdk.render.rasterize`: a depth map, i.e. a shadow map); a
    vertex sees d when its depth is within ``_AO_BIAS`` of the map's at its
    pixel. AO = sum_d max(0, n.d) vis_d / sum_d max(0, n.d), n the smooth
    vertex normal. This is ray casting with one ray per direction shared by all
    vertices, which the rasteriser vectorises; :func:`_ao_reference` casts the
    same rays one by one against every triangle (the test oracle).

    Args:
        vertices: [V, 3] float positions in metres.
        topology: the head topology.
        directions: number of sample directions over the sphere.
        resolution: depth map side in pixels.

    Returns:
        [V] float32 in [0, 1]: 1 fully open, 0 fully occluded.
    """
    v = torch.as_tensor(np.asarray(vertices, np.float64))
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] != topology.num_vertices or not torch.isfinite(v).all():
        raise InputError(f"vertices must be finite [{topology.num_vertices}, 3], got {tuple(v.shape)}")
    tris = topology.triangles.astype(np.int64)
    occ = np.isin(topology.tri_material, [topology.materials.index(m) for m in _OCCLUDERS if m in topology.materials])
    faces = torch.from_numpy(tris[occ])
    normals = vertex_normals(v[None].float(), torch.from_numpy(tris))[0].double()
    dirs = torch.from_numpy(_fibonacci_sphere(directions))  # [D, 3]
    centre = v.mean(0)
    radius = float((v - centre).norm(dim=1).max()) * 1.02
    # Orthonormal frame per direction: rows (a, b, d).
    helper = torch.where((dirs[:, 1:2].abs() < 0.9), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64),
                         torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    a = torch.linalg.cross(helper, dirs)
    a = a / a.norm(dim=1, keepdim=True)
    b = torch.linalg.cross(dirs, a)
    p = (v - centre)[None]  # [1, V, 3]
    x = (p * a[:, None]).sum(-1) / radius
    y = (p * b[:, None]).sum(-1) / radius
    # Depth: nearer to the light (larger p.d) is smaller z.
    z = -(p * dirs[:, None]).sum(-1) / radius
    clip = torch.stack([x, y, z, torch.ones_like(x)], -1)  # [D, V, 4]
    vis = torch.zeros(directions, v.shape[0], dtype=torch.float64)
    for s in range(0, directions, 8):
        depth = rasterize(clip[s:s + 8], faces, (resolution, resolution)).depth  # [c, R, R], +inf on background
        vis[s:s + 8] = _visible(depth, x[s:s + 8], y[s:s + 8], z[s:s + 8], resolution, radius)
    cosw = (normals @ dirs.T).clamp_min(0).T  # [D, V]
    ao = (cosw * vis).sum(0) / cosw.sum(0).clamp_min(1e-9)
    return ao.clamp(0, 1).float().numpy()


def _visible(depth: torch.Tensor, x, y, z, resolution: int, radius: float) -> torch.Tensor:
    """[D, V] 1 where a vertex's depth is within the bias of the depth map's at its pixel.

    The map's value is the farthest over the pixel and its 4-neighbours, so a
    vertex on a silhouette is not shadowed by its own neighbourhood.
    """
    col = ((x + 1) * 0.5 * resolution).floor().long().clamp(0, resolution - 1)
    row = ((1 - y) * 0.5 * resolution).floor().long().clamp(0, resolution - 1)  # NDC y = +1 is the top row
    padded = torch.nn.functional.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    ref = torch.stack([padded[:, 1:-1, 1:-1], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1],
                       padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]]).amax(0)
    at = torch.gather(ref.reshape(ref.shape[0], -1), 1, row * resolution + col)
    return (z <= at + _AO_BIAS / radius).double()


def _ao_reference(vertices: np.ndarray, triangles: np.ndarray, normals: np.ndarray, directions: np.ndarray,
                  points: np.ndarray, offset: float = _AO_BIAS) -> np.ndarray:
    """Slow oracle: cast a ray from each point (lifted ``offset`` along its normal) per direction
    against every triangle (Moller-Trumbore) and return the cosine-weighted visible fraction."""
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    e1, e2 = b - a, c - a
    out = np.zeros(len(points))
    for k, (o, n) in enumerate(zip(points, normals)):
        o = o + offset * n
        num = den = 0.0
        for d in directions:
            w = max(0.0, float(n @ d))
            if w == 0:
                continue
            pv = np.cross(d, e2)
            det = (e1 * pv).sum(1)
            ok = np.abs(det) > 1e-12
            inv = np.where(ok, 1 / np.where(ok, det, 1), 0)
            tv = o - a
            u = (tv * pv).sum(1) * inv
            qv = np.cross(tv, e1)
            vv = (qv @ d) * inv
            t = (e2 * qv).sum(1) * inv
            hit = ok & (u >= 0) & (vv >= 0) & (u + vv <= 1) & (t > 1e-6)
            num += w * (not hit.any())
            den += w
        out[k] = num / max(den, 1e-12)
    return out


def bake_vertex_field(per_vertex: np.ndarray, size: int) -> np.ndarray:
    """Interpolate a per-vertex field [V] over the skin charts of the unified head UV.

    Uses the cached texel atlas of :func:`avatarsdk.paint.texel_fields` (each
    texel's triangle and barycentrics), so it costs one gather; texels off the
    charts take the value of the nearest chart texel.

    Returns:
        [size, size] float32.
    """
    _check_size(size)
    t = texel_fields(size)
    f = np.asarray(per_vertex, np.float64)
    out = np.zeros(size * size, np.float32)
    out[t.index] = (f[t.tri_v] * t.bary).sum(1)
    empty = np.ones(size * size, bool)
    empty[t.index] = False
    out[empty] = out[t.fill[empty]]
    return out.reshape(size, size)


def roughness_map(size: int) -> np.ndarray:
    """[size, size] float32 roughness by facial region of the unified head UV (see :data:`ROUGHNESS`)."""
    _check_size(size)
    t = texel_fields(size)
    f = t.fields
    r = np.full(len(t.index), ROUGHNESS["cheek"], np.float64)
    tz = np.clip(f["forehead"] * 1.6 + f["nose"] * 1.8 + f["chin"] * 1.2, 0, 1)
    r = r + (ROUGHNESS["t_zone"] - r) * tz
    lips = f["lips"]
    r = r + (ROUGHNESS["lips"] - r) * lips
    # Scalp: the back chart (less its socket islands) and the top of the face chart.
    scalp = (~t.face).astype(np.float64) * (1 - f["mouth_socket"]) * (1 - f["eye_socket"])
    brow_y = float(_head_brow_y())
    scalp = np.maximum(scalp, np.clip((t.pos[:, 1] - brow_y - 0.055) / 0.015, 0, 1) * t.face)
    r = r + (ROUGHNESS["scalp"] - r) * scalp
    wet = np.clip(np.maximum(f["mouth_socket"], f["eye_socket"]), 0, 1)
    margin = np.clip(1 - (f["d_eye"] - 0.0005) / 0.0025, 0, 1) * t.face  # lid margins: within ~2 mm of the opening
    wet = np.maximum(wet, margin)
    r = r + (ROUGHNESS["wet"] - r) * wet
    out = np.full(size * size, ROUGHNESS["cheek"], np.float32)
    out[t.index] = r
    empty = np.ones(size * size, bool)
    empty[t.index] = False
    out[empty] = out[t.fill[empty]]
    return out.reshape(size, size)


def _head_brow_y() -> float:
    return float(_head().lm[[19, 24], 1].mean())


def normal_map(size: int, seed: int, *, strength: float = 1.0) -> np.ndarray:
    """[size, size, 3] float32 tangent-space unit normals of procedural skin relief.

    Height h (mm) at each texel's generic-head position: pores (3D noise of
    ~0.5 mm cells, strongest on the nose and cheeks), forehead creases (noise
    stretched along x) and low lumps.
    The normal is (-dh/dx_t, -dh/dy_t, 1) normalised, x_t along +u and y_t
    along -v, with the derivatives taken on the texel grid and divided by the
    local texel size in mm (continuous across chart seams).

    Args:
        size: map side (power of two >= 64).
        seed: seeds the relief (use the identity's seed for a stable result).
        strength: scales the relief height.
    """
    _check_size(size)
    t = texel_fields(size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9B2]))
    f = t.fields
    pos = t.pos
    # Pores: below ~2 texels they alias; fade them out instead.
    mm = np.maximum(t.mm_per_texel, 1e-3)
    pore_cell = 0.00045
    pores = _noise(pos, pore_cell, 1, rng)[:, 0]
    pores = np.minimum(pores, 0.8) * np.clip(2 * pore_cell * 1000 / mm / 2 - 0.5, 0, 1)
    pore_w = 0.6 + 0.8 * np.clip(f["nose"] + f["cheek"], 0, 1)
    h = 0.03 * pores * pore_w * rng.uniform(0.7, 1.3)
    # Forehead creases: horizontal (stretched along x).
    crease = _noise(pos, 0.003, 1, rng, stretch=np.array([0.15, 1.0, 0.6]))[:, 0]
    h += 0.06 * rng.uniform(0.3, 1.2) * np.clip(f["forehead"] * 1.5, 0, 1) * crease
    # Low lumps (a few mm across) over the face chart.
    lump = _noise(pos, 0.006, 1, rng)[:, 0]
    h += 0.08 * lump * t.face
    h *= strength
    grid = np.zeros(size * size)
    grid[t.index] = h
    covered = np.zeros(size * size, bool)
    covered[t.index] = True
    grid = grid.reshape(size, size)
    # Derivatives in mm per mm of surface: central differences on the texel grid.
    dcol = ndimage.correlate1d(grid, [-0.5, 0, 0.5], axis=1, mode="nearest")
    drow = ndimage.correlate1d(grid, [-0.5, 0, 0.5], axis=0, mode="nearest")
    mm_grid = np.ones(size * size)
    mm_grid[t.index] = mm
    mm_grid = mm_grid.reshape(size, size)
    # Only trust differences whose 3 taps are all on a chart.
    cov = covered.reshape(size, size)
    okc = cov & np.roll(cov, 1, 1) & np.roll(cov, -1, 1)
    okr = cov & np.roll(cov, 1, 0) & np.roll(cov, -1, 0)
    gx = np.where(okc, dcol / mm_grid, 0.0)
    gy = np.where(okr, -drow / mm_grid, 0.0)  # y_t points to the top of the image: -row
    n = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return n.astype(np.float32)


def encode_normals(n: np.ndarray) -> np.ndarray:
    """[H, W, 3] unit normals -> uint8 (x, y, z) * 0.5 + 0.5 (glTF normalTexture encoding)."""
    return np.ascontiguousarray(np.round((np.clip(n, -1, 1) * 0.5 + 0.5) * 255).astype(np.uint8))


def decode_normals(img: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] normal map -> float32 unit normals."""
    n = np.asarray(img[..., :3], np.float32) / 255.0 * 2 - 1
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


_AO_CACHE: dict[bytes, np.ndarray] = {}  # (vertices, topology, quality) digest -> per-vertex AO, a few entries


def _ao_quality(size: int) -> tuple[int, int]:
    """(directions, depth map side) for a texture of side ``size``: small textures get a cheap bake."""
    return (_AO_DIRECTIONS, _AO_RESOLUTION) if size >= 512 else (16, 96)


def skin_maps(vertices: np.ndarray, topology: Topology, *, size: int = 1024, seed: int | None = None,
              occlusion_from: np.ndarray | None = None) -> dict:
    """The skin's normal and occlusion-roughness-metallic textures for an avatar.

    Args:
        vertices: [V, 3] neutral positions in metres (AO is baked from them).
        topology: the head topology.
        size: side of the normal map (the albedo's); the ORM map is half of it
            from 512 up: occlusion and roughness are smooth at that scale.
        seed: seeds the relief; None derives it from the vertices (same identity, same relief).
        occlusion_from: [V, 3] vertices to bake the occlusion from instead of ``vertices``.
            Generated NPC heads pass the generic neutral head: its bake is done once per
            process (a few seconds) and reused, where a per-head bake would triple a
            batch's CPU time; photo avatars bake their own head.

    Returns:
        ``{NORMAL_KEY: [size, size, 3] uint8, ORM_KEY: [size/2 (or size below 512), ..., 3] uint8}`` (linear values).

    Raises:
        InputError: bad size or vertices.
    """
    _check_size(size)
    v = np.ascontiguousarray(vertices, np.float32)
    digest = hashlib.sha256(v.tobytes()).digest()
    if seed is None:
        seed = int.from_bytes(digest[:4], "little")
    source = v if occlusion_from is None else np.ascontiguousarray(occlusion_from, np.float32)
    if source.shape != v.shape:
        raise InputError(f"occlusion_from must have the vertices' shape {v.shape}, got {source.shape}")
    dirs, res = _ao_quality(size)
    key = hashlib.sha256(hashlib.sha256(source.tobytes()).digest() + topology.triangles.tobytes()
                         + bytes([dirs, res % 256]) + int(size).to_bytes(4, "little")).digest()
    if key not in _AO_CACHE:  # the packed ORM texture of one AO source and size
        if len(_AO_CACHE) >= 8:
            _AO_CACHE.pop(next(iter(_AO_CACHE)))
        ao_v = ambient_occlusion(source, topology, directions=dirs, resolution=res)
        orm = np.stack([bake_vertex_field(ao_v, size), roughness_map(size), np.zeros((size, size), np.float32)], -1)
        if size >= 512:  # occlusion and roughness are smooth: half the side is plenty (2x2 box filter)
            orm = orm.reshape(size // 2, 2, size // 2, 2, 3).mean((1, 3))
        _AO_CACHE[key] = np.ascontiguousarray(np.round(np.clip(orm, 0, 1) * 255).astype(np.uint8))
    return {
        NORMAL_KEY: encode_normals(normal_map(size, seed)),
        ORM_KEY: _AO_CACHE[key].copy(),
    }
