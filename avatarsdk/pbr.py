"""PBR maps of the skin: tangent-space normal map, roughness by region, baked ambient occlusion.

Three maps in the unified head UV of the ``skin`` material, stored in
``Avatar.textures`` next to the albedo under the keys :data:`NORMAL_KEY` and
:data:`ORM_KEY` (the exporters put them into the material):

* ``skin_normal``: tangent-space normal map (glTF convention: +X along +u, +Y
  towards the top of the image, i.e. along -v, +Z out of the surface; the
  tangent frame the exporter writes follows the same UVs). Two layers: relief
  read from the photo's shading residual (:func:`photo_relief`, fit mode only:
  the de-lit albedo still holds the shading of relief the mesh lacks; a
  regularised height field explains it, see there for how albedo is kept
  out), and procedural skin micro-relief the 26k-vertex mesh cannot hold and a
  phone photo does not resolve (pores, fine forehead creases; low lumps only
  without a photo relief), a function of 3D position on the generic head (so
  it is seamless across UV seams) seeded by the identity. See the README for
  what each does to the shading-normal error on the synthetic benchmark.
* ``skin_orm``: glTF's packed occlusion-roughness-metallic texture: R =
  ambient occlusion baked from the avatar's own geometry (hemisphere
  visibility per vertex from depth maps rendered along 32 directions, then
  interpolated over the UV charts), G = roughness by facial region (lips, the
  oily T-zone, cheeks, scalp and neck, wet eye and mouth sockets), B =
  metallic, 0.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy import ndimage
from scipy.sparse.linalg import splu

from avatarsdk.cache import cached_arrays, code_digest
from avatarsdk.errors import InputError
from avatarsdk.render import rasterize
from avatarsdk.render.shading import sh_shading, vertex_normals
from avatarsdk.paint import LUMA, _head, _noise, texel_fields
from avatarsdk.datatypes import Topology

__all__ = ["MICRO_WITH_RELIEF", "NORMAL_KEY", "ORM_KEY", "ROUGHNESS", "ReliefOptions", "ambient_occlusion",
           "bake_vertex_field", "decode_normals", "encode_normals", "normal_map", "photo_relief", "relief_normals",
           "roughness_map", "shading_gradient", "skin_maps", "skin_normal"]

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


def normal_map(size: int, seed: int, *, strength: float = 1.0, lumps: bool = True) -> np.ndarray:
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
        lumps: include the low lumps (off when the relief read from the photo covers that band).
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
    lump = _noise(pos, 0.006, 1, rng)[:, 0]  # drawn either way: same pores and creases with or without
    if lumps:
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
    # (-gx, -gy, 1) / |(-gx, -gy, 1)|: the sums and quotients np.linalg.norm and the division of the
    # stacked vectors make, in the same order (bit-identical), without the [H, W, 3] float64 temporaries.
    length = np.sqrt(gx * gx + gy * gy + 1.0)
    n = np.empty((*gx.shape, 3), np.float32)
    n[..., 0] = -gx / length
    n[..., 1] = -gy / length
    n[..., 2] = 1.0 / length
    return n


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
              occlusion_from: np.ndarray | None = None, relief: np.ndarray | None = None) -> dict:
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
        relief: [G, G, 2] tangent-space slopes read from the photo (:func:`photo_relief`), added
            to the normal map; None: the procedural layer alone.

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

        def orm_map() -> dict[str, np.ndarray]:
            ao_v = ambient_occlusion(source, topology, directions=dirs, resolution=res)
            orm = np.stack([bake_vertex_field(ao_v, size), roughness_map(size), np.zeros((size, size), np.float32)], -1)
            if size >= 512:  # occlusion and roughness are smooth: half the side is plenty (2x2 box filter)
                orm = orm.reshape(size // 2, 2, size // 2, 2, 3).mean((1, 3))
            return {"orm": np.ascontiguousarray(np.round(np.clip(orm, 0, 1) * 255).astype(np.uint8))}

        if occlusion_from is None:  # a head of its own: baked for it
            _AO_CACHE[key] = orm_map()["orm"]
        else:  # the generic head every NPC shares: also kept in the disk cache (a few CPU-s per process)
            _AO_CACHE[key] = cached_arrays("skin-orm", {"key": key.hex(), "code": code_digest(
                "avatarsdk.pbr", "avatarsdk.paint", "avatarsdk.render.raster", "avatarsdk.render.shading")},
                orm_map)["orm"]
    return {
        NORMAL_KEY: skin_normal(size, seed, relief),
        ORM_KEY: _AO_CACHE[key].copy(),
    }


MICRO_WITH_RELIEF = 0.5
"""Height of the procedural pores and creases under a photo relief, relative to :func:`normal_map`'s.

They are invented (the photo does not resolve them), so every tilt they add is error against the
real skin's normals; on the fidelity benchmark (whose ground truth has none) the full layer cost
0.07 degrees of mean angle on the real fit and 0.2 on the oracle fit, half of it about a quarter
of that (errors add in quadrature), and at half height the pores still show in renders."""


def skin_normal(size: int, seed: int, relief: np.ndarray | None = None) -> np.ndarray:
    """The exported skin normal map (uint8): the photo's relief (if any) plus the procedural micro layer
    (at :data:`MICRO_WITH_RELIEF` of its height when there is a relief).

    Args:
        size: map side.
        seed: seeds the micro layer (:func:`normal_map`).
        relief: [G, G, 2] slopes from :func:`photo_relief`, or None (procedural only).
    """
    if relief is None:
        return encode_normals(normal_map(size, seed))
    # The photo's relief replaces the procedural lumps (same band); pores and creases stay, at
    # MICRO_WITH_RELIEF of their height: invented detail adds error wherever the real skin differs.
    return encode_normals(relief_normals(relief, size,
                                         micro=normal_map(size, seed, lumps=False, strength=MICRO_WITH_RELIEF)))


# ---------------------------------------------------------------------------
# Relief read from the photo (shape from shading of the de-lit residual)
# ---------------------------------------------------------------------------

RELIEF_GRID = 256
"""Side of the UV grid the photo relief is solved on (about 1.5 mm per texel on the face)."""


@dataclass(frozen=True)
class ReliefOptions:
    """Knobs of :func:`photo_relief` (defaults tuned on benchmark seeds 100-107; the tilt cap on 200-203).

    Attributes:
        grid: side of the UV grid of the solve.
        tone_mm: scale (Gaussian sigma, mm on the face) of the albedo's own tone variation,
            removed from the de-lit residual before it is read as shading.
        outlier: residual log-luminance beyond which a texel is albedo (brows, moles, make-up), not relief.
        smooth: weight of the thin-plate term (curvature of the height, per texel^2).
        slope: weight of the membrane term that pulls unobserved slopes to zero.
        max_tilt_deg: the tilt a texel's relief may add at most (the bumps a single photo's shading
            reliably shows are a few degrees; larger estimates come from albedo edges the chromaticity
            does not explain, such as stubble, and were the worst errors on the benchmark).
        rounds: alternations between the albedo's tone and the relief.
        fine_mm: scale (Gaussian sigma, mm) below which the residual is albedo detail (blurred away).
        chroma: remove the part of the residual its chromaticity predicts (albedo, see :func:`photo_relief`).
        chroma_tau: texels whose band-passed chromaticity moves by more than this (log units) weigh less
            (exp(-(|dc| / tau)^2)): albedo edges.
        gain: shrinkage of the solved slopes (the residual is mostly albedo on real skin; halving the
            estimate lowered the error on the tuning seeds, a Wiener-like shrinkage).
    """

    grid: int = RELIEF_GRID
    tone_mm: float = 30.0
    outlier: float = 0.3
    smooth: float = 0.3
    slope: float = 0.005
    max_tilt_deg: float = 4.0
    rounds: int = 3
    fine_mm: float = 4.0
    chroma: bool = True
    chroma_tau: float = 0.0
    gain: float = 0.5


def _grid_diff(valid: np.ndarray):
    """Sparse central-difference operators along columns (x) and rows (y) over the valid texels of a grid.

    Differences use the texels on both sides where both are valid, one side where only one is,
    and none (a zero row) where neither. Returns (Dx, Dy, Laplacian, index grid).
    """
    idx = np.full(valid.shape, -1, np.int64)
    idx[valid] = np.arange(int(valid.sum()))
    n = int(valid.sum())
    ops = []
    for axis in (1, 0):
        rows, cols, vals = [], [], []
        fwd = np.zeros_like(valid)
        bwd = np.zeros_like(valid)
        if axis == 1:
            fwd[:, :-1] = valid[:, :-1] & valid[:, 1:]
            bwd[:, 1:] = valid[:, 1:] & valid[:, :-1]
            nf = np.roll(idx, -1, 1)
            nb = np.roll(idx, 1, 1)
        else:
            fwd[:-1] = valid[:-1] & valid[1:]
            bwd[1:] = valid[1:] & valid[:-1]
            nf = np.roll(idx, -1, 0)
            nb = np.roll(idx, 1, 0)
        both = fwd & bwd
        only_f = fwd & ~bwd
        only_b = bwd & ~fwd
        for m, pairs in ((both, ((nf, 0.5), (nb, -0.5))), (only_f, ((nf, 1.0), (idx, -1.0))),
                         (only_b, ((idx, 1.0), (nb, -1.0)))):
            r = idx[m]
            for src, w in pairs:
                rows.append(r)
                cols.append(src[m])
                vals.append(np.full(len(r), w))
        ops.append(sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)))
    # Graph Laplacian of the 4-neighbour valid grid (Neumann at the border).
    e = []
    for a, b in ((idx[:, :-1], idx[:, 1:]), (idx[:-1], idx[1:])):
        m = (a >= 0) & (b >= 0)
        e.append(np.stack([a[m], b[m]], 1))
    e = np.concatenate(e)
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    adj = (adj + adj.T).tocsr()
    lap = sp.diags(np.asarray(adj.sum(1)).ravel()) - adj
    return ops[0], ops[1], lap.tocsr(), idx


def _weighted_blur(x: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised Gaussian convolution: blur(x w) / blur(w) (x where the weights vanish)."""
    num = ndimage.gaussian_filter(x * w, sigma, mode="constant")
    den = ndimage.gaussian_filter(w, sigma, mode="constant")
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), x)


def shading_gradient(normals: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminance of SH shading at unit normals and its gradient with respect to the normal.

    Returns:
        ([N] shading luminance, [N, 3] d shading / d normal).
    """
    n = torch.tensor(np.asarray(normals, np.float64), requires_grad=True)
    s = sh_shading(n, torch.as_tensor(np.asarray(light, np.float64))) @ torch.from_numpy(LUMA.astype(np.float64))
    s.sum().backward()
    return s.detach().numpy(), n.grad.numpy()


def _relief_system(vertices, topology, light, albedo, confidence, o: ReliefOptions) -> dict:
    """The per-texel terms of :func:`photo_relief`'s least squares (see there)."""
    _check_size(o.grid)
    alb = np.asarray(albedo, np.float64)
    conf = np.asarray(confidence, np.float64)
    size = alb.shape[0] if alb.ndim == 3 else 0
    if alb.shape != (size, size, 3) or conf.shape != (size, size) or size < 64 or size & (size - 1):
        raise InputError(f"albedo [S, S, 3] and confidence [S, S] with S a power of two >= 64 expected, "
                         f"got {alb.shape} and {conf.shape}")
    v = np.asarray(vertices, np.float64)
    if v.shape != (topology.num_vertices, 3) or not np.isfinite(v).all():
        raise InputError(f"vertices must be finite [{topology.num_vertices}, 3], got {v.shape}")
    g = min(o.grid, size)
    f = size // g
    # Log luminance and log chromaticity on the grid (confidence-weighted box filter).
    wsum = conf.reshape(g, f, g, f).sum((1, 3))
    chans = (alb * conf[..., None]).reshape(g, f, g, f, 3).sum((1, 3)) / np.maximum(wsum, 1e-9)[..., None]
    ybar = chans @ LUMA.astype(np.float64)
    w = wsum / (f * f)
    t = texel_fields(g)
    face = np.zeros(g * g, bool)
    face[t.index[t.face]] = True
    face = face.reshape(g, g)
    region = np.zeros(g * g)
    region[t.index] = t.fields["region"]
    w = w * (region.reshape(g, g) > 0.5) * face * (ybar > 1e-3) * (chans.min(-1) > 1e-3)
    logy = np.log(np.maximum(ybar, 1e-3))
    logc = np.log(np.maximum(chans, 1e-3))
    chroma = np.stack([logc[..., 0] - logc[..., 1], logc[..., 2] - logc[..., 1]], -1)
    mm = float(np.median(t.mm_per_texel[t.face & (t.fields["region"] > 0.5)]))
    sigma = o.tone_mm / mm
    keep = w > 0.05
    for _ in range(2):  # the tone without the outliers, then the outliers against that tone
        tone = _weighted_blur(logy, w * keep, sigma)
        keep = (w > 0.05) & ~ndimage.binary_dilation(np.abs(logy - tone) > o.outlier, iterations=2)
    w = w * keep
    seen = w > 0.05
    # Detail finer than the relief's band is albedo (freckles, pores, stubble): blur it away.
    fine = o.fine_mm / mm
    logy = _weighted_blur(logy, w, fine)
    chroma = np.stack([_weighted_blur(chroma[..., i], w, fine) for i in range(2)], -1)
    # Unknowns: face-chart texels within ~a bump's width of an observed one (the relief fades out there).
    valid = face & ndimage.binary_dilation(seen, iterations=max(1, round(8.0 / mm)))
    # Geometry on the grid: position, normal, Jacobian of position over the grid (per texel).
    nrm_v = vertex_normals(torch.from_numpy(v), torch.from_numpy(topology.triangles.astype(np.int64))).numpy()
    p = np.zeros((g * g, 3))
    n = np.zeros((g * g, 3))
    n[:, 2] = 1.0
    p[t.index] = (v[t.tri_v] * t.bary[..., None]).sum(1)
    n[t.index] = (nrm_v[t.tri_v] * t.bary[..., None]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    dx, dy, lap, idx = _grid_diff(valid)
    flat = np.nonzero(valid.ravel())[0]  # flat texel of each unknown (idx numbers them in this order)
    pv, nv = p[flat], n[flat]
    px, py = dx @ pv, dy @ pv  # metres per texel step along +u (columns) and +v (rows)
    gxx, gxy, gyy = (px * px).sum(1), (px * py).sum(1), (py * py).sum(1)
    det = gxx * gyy - gxy * gxy
    ok = det > 1e-16
    inv = np.where(ok, 1 / np.where(ok, det, 1), 0.0)
    s0, grad = shading_gradient(nv, light)
    grad = grad - (grad * nv).sum(1, keepdims=True) * nv
    jg = np.stack([(px * grad).sum(1), (py * grad).sum(1)], 1) / np.maximum(s0, 0.05)[:, None]
    # c = G^-1 J^T g / S: the log-luminance residual is -c . (dh/dx, dh/dy), h in metres.
    cx = inv * (gyy * jg[:, 0] - gxy * jg[:, 1])
    cy = inv * (-gxy * jg[:, 0] + gxx * jg[:, 1])
    wv = w.ravel()[flat] * ok * (s0 > 0.05)
    return {"g": g, "flat": flat, "dx": dx, "dy": dy, "lap": lap, "cx": cx, "cy": cy, "w": wv, "w_grid": w,
            "logy": logy, "chroma": chroma, "sigma": sigma, "px": px, "py": py, "n": nv, "inv": inv, "gxx": gxx, "gxy": gxy,
            "gyy": gyy, "seen": seen}


def photo_relief(vertices: np.ndarray, topology: Topology, light: np.ndarray, albedo: np.ndarray,
                 confidence: np.ndarray, *, options: ReliefOptions = ReliefOptions()) -> np.ndarray:
    """Tangent-space slopes of the skin relief that explain the shading left in a de-lit albedo.

    The unwrap (:func:`avatarsdk.albedo.unwrap`) divides the photo by the SH
    shading of the fitted mesh, so where the real surface bulges or dents
    beyond the mesh, the residual shading stays in the de-lit albedo: log Y =
    log a + (g . dn) / S, with Y its luminance, a the true albedo, S the
    fitted shading, g its gradient with respect to the normal and dn the
    normal's deviation. Over the face chart on a coarse UV grid, a height
    field h (the surface displaced along its normal) with dn = -grad_s h (the
    surface gradient, through each texel's Jacobian of position over UV) is
    solved in least squares against the residual, with a thin-plate and a
    small membrane term (a sparse linear system):

    * the albedo's own tone (cheek redness, a tan) varies slowly: a weighted
      Gaussian of ``tone_mm`` is removed from log Y first; the residual is
      read as shading only at scales below that;
    * texels whose residual exceeds ``outlier`` (brows, moles, make-up,
      hair strands: albedo edges no mm-scale relief can make) are dropped,
      and so is everything the unwrap gave no confidence (unseen, grazing,
      occluded by the parse, lips, eyelids);
    * the relief fades to flat away from the observed texels and its tilt
      is clamped at ``max_tilt_deg``.

    One light direction constrains mainly the slope along the light's
    gradient; the regularisation fills the rest, so the relief is a partial,
    conservative recovery. Pores and fine creases (< 1 px) are not resolved.

    Args:
        vertices: [V, 3] the fitted (posed) mesh the albedo was de-lit with, metres.
        topology: the head topology.
        light: [9, 3] SH light of the fit (any overall scale).
        albedo: [S, S, 3] linear de-lit albedo in the unified head UV (before completion).
        confidence: [S, S] unwrap confidence in [0, 1].
        options: :class:`ReliefOptions`.

    Returns:
        [G, G, 2] float32 tangent-space slopes (x along +u, y along -v; the
        normal is (x, y, 1) normalised), G = ``options.grid`` (or S if smaller); zero off the face.

    Raises:
        InputError: mismatched shapes.
    """
    o = options
    q = _relief_system(vertices, topology, light, albedo, confidence, o)
    g, flat, dx, dy, lap, cx, cy, wv = (q[k] for k in ("g", "flat", "dx", "dy", "lap", "cx", "cy", "w"))
    px, py, nv, inv, gxx, gxy, gyy = (q[k] for k in ("px", "py", "n", "inv", "gxx", "gxy", "gyy"))
    # Skin's albedo varies in colour as it varies in lightness (melanin, blood), shading under a
    # near-white light does not: the part of the residual that the residual chromaticity predicts
    # (one linear fit over the face) is albedo too.
    logy, wg, sigma = q["logy"], q["w_grid"], q["sigma"]
    chroma = np.stack([(c - _weighted_blur(c, wg, sigma)).ravel()[flat] for c in q["chroma"].transpose(2, 0, 1)], 1)
    if o.chroma_tau > 0:  # where the colour changes fast, so does the albedo: trust those texels less
        wv = wv * np.exp(-((np.linalg.norm(chroma, axis=1) / o.chroma_tau) ** 2))
    scale = 1e-3  # solve for h in mm
    a = (sp.diags(cx * scale) @ dx + sp.diags(cy * scale) @ dy).tocsr()
    m = a.T @ sp.diags(wv) @ a + o.smooth * (lap.T @ lap) + o.slope * (dx.T @ dx + dy.T @ dy)
    lu = splu((m + 1e-6 * sp.identity(len(flat))).tocsc())
    # The albedo's tone and the relief, alternately: the tone is the smooth part of what the relief
    # does not explain (so the relief's own low frequencies are not taken for tone).
    sw = np.sqrt(wv)
    h = np.zeros(len(flat))
    explained = np.zeros(g * g)
    for _ in range(o.rounds):
        r = (logy - _weighted_blur(logy + explained.reshape(g, g), wg, sigma)).ravel()[flat]
        if o.chroma:
            coef = np.linalg.lstsq(chroma * sw[:, None], (r + a @ h) * sw, rcond=None)[0]
            r = r - chroma @ coef
        h = lu.solve(-(a.T @ (wv * r)))
        explained[flat] = a @ h
    # Normal deviation dn = -J G^-1 grad h, in the tangent frame the exporter writes (T along +u, B along -v).
    hx, hy = dx @ h * scale, dy @ h * scale
    gu = inv * (gyy * hx - gxy * hy)
    gv = inv * (-gxy * hx + gxx * hy)
    dn = -(px * gu[:, None] + py * gv[:, None])
    tan = px - (px * nv).sum(1, keepdims=True) * nv
    tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-12)
    bit = np.cross(nv, tan)
    bit *= np.where((bit * -py).sum(1) < 0, -1.0, 1.0)[:, None]
    slopes = o.gain * np.stack([(dn * tan).sum(1), (dn * bit).sum(1)], 1)
    # Fade to flat away from what the photo showed; clamp the tilt.
    seen = ndimage.gaussian_filter(q["seen"].astype(np.float64), 2.0)
    fade = np.clip(seen.ravel()[flat] * 2, 0, 1)
    slopes *= fade[:, None]
    mag = np.linalg.norm(slopes, axis=1, keepdims=True)
    cap = math.tan(math.radians(o.max_tilt_deg))
    slopes *= np.minimum(1.0, cap / np.maximum(mag, 1e-12))
    out = np.zeros((g * g, 2))
    out[flat] = slopes
    return out.reshape(g, g, 2).astype(np.float32)


def relief_normals(slopes: np.ndarray, size: int, *, micro: np.ndarray | None = None) -> np.ndarray:
    """[size, size, 3] unit tangent normals from grid slopes (bilinear up to ``size``), plus a micro layer.

    Args:
        slopes: [G, G, 2] from :func:`photo_relief`.
        size: output side.
        micro: [size, size, 3] unit tangent normals (e.g. :func:`normal_map`) whose slopes are added.
    """
    _check_size(size)
    s = torch.from_numpy(np.ascontiguousarray(slopes, np.float32)).permute(2, 0, 1)[None]
    s = torch.nn.functional.interpolate(s, size=(size, size), mode="bilinear", align_corners=False)[0]
    s = s.permute(1, 2, 0).numpy().astype(np.float64)
    if micro is not None:
        m = np.asarray(micro, np.float64)
        s = s + m[..., :2] / np.maximum(m[..., 2:3], 0.2)
    n = np.concatenate([s, np.ones((size, size, 1))], -1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
