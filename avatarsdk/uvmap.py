"""Mesh <-> UV position map, the paper's geometry representation.

A head becomes a ``size x size x 3`` map of xyz offsets from the generic ICT
neutral in the unified head UV (``Topology.head_uv``: ICT's face chart packed
large beside its back-of-head chart, see :mod:`avatarsdk.rigs.model`). The map
is made by rasterising the skin triangles in UV space and interpolating the
offsets of their corners; a few texels of gutter are filled around each chart
so bilinear samples at chart borders stay clean. The mesh comes back by sampling
the map at each skin vertex's UV; vertices off the map (teeth, gums, eyes,
lashes) follow the skin through ICT's identity basis fitted to the skin offsets.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk.errors import InputError
from avatarsdk.render import rasterize, texture
from avatarsdk.rigs.model import blend_shapes
from avatarsdk.datatypes import Topology
from avatarsdk.cache import cached_arrays, code_digest


def _skin_triangles(topology: Topology) -> np.ndarray:
    return np.nonzero(topology.tri_material == topology.materials.index("skin"))[0]


def dilate(values: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Fill uncovered texels next to covered ones with the mean of their covered neighbours.

    Args:
        values: [B, H, W, C] float map.
        mask: [B, H, W] bool coverage.
        iterations: gutter width in texels.

    Returns:
        [B, H, W, C] map, equal to ``values`` on ``mask``.
    """
    v = values.permute(0, 3, 1, 2) * mask[:, None]
    m = mask[:, None].to(values.dtype)
    for _ in range(iterations):
        s = F.avg_pool2d(v, 3, 1, 1, count_include_pad=False)
        c = F.avg_pool2d(m, 3, 1, 1, count_include_pad=False)
        fill = (m == 0) & (c > 0)
        v = torch.where(fill, s / c.clamp_min(1e-12), v)
        m = torch.where(fill, torch.ones_like(m), m)
    return v.permute(0, 2, 3, 1)


def rasterize_uv(
    corner_values: torch.Tensor, corner_uv: torch.Tensor, size: int, *, extrapolate: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise per-corner values of UV triangles into a texture.

    Texels just outside the charts (within ``extrapolate`` texels of a
    triangle) get that triangle's linear function extended past its edge, so
    bilinear samples at vertices on a chart border are exact for fields that
    are linear per triangle.

    Args:
        corner_values: [B, F, 3, C] float value at each triangle corner.
        corner_uv: [F, 3, 2] float UV of each corner in [0, 1]^2 (v down).
        size: texture height and width.
        extrapolate: gutter (in texels) filled by linear extrapolation.

    Returns:
        ([B, size, size, C] values, zero where nothing was drawn; [B, size, size]
        bool mask of texels covered by a triangle proper).
    """
    uv = corner_uv.to(torch.float64)
    hit, mask, t_hit, bary_hit = _texel_triangles(uv, int(size), float(extrapolate))
    # Interpolate on the drawn texels only (the others stay zero).
    vals = corner_values.new_zeros((corner_values.shape[0], size, size, corner_values.shape[-1]))
    vals[:, hit] = (bary_hit.to(corner_values.dtype)[..., None] * corner_values[:, t_hit]).sum(-2)
    return vals, mask.clone().expand(corner_values.shape[0], -1, -1)


_TEXEL_MEMO: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _texel_triangles(uv: torch.Tensor, size: int, extrapolate: float) -> tuple[torch.Tensor, ...]:
    """(hit [size, size] bool: texels drawn, inside [size, size] bool: texels inside a triangle
    proper, [n] int64 triangle of each drawn texel, [n, 3] float64 affine barycentrics of
    each drawn texel's centre w.r.t. that triangle).

    The two UV rasterisations of :func:`rasterize_uv` depend on the UVs alone:
    remembered in the process and kept in the disk cache (:mod:`avatarsdk.cache`;
    ~0.5 s per call at 1024 px otherwise); the barycentrics are remembered in the
    process too (a ``create`` rasterises the same charts several times; ~0.15 s each at 1024 px).
    """
    uv = uv.detach().contiguous()
    digest = hashlib.sha256(uv.numpy().tobytes()).hexdigest()
    memo_key = (digest, tuple(uv.shape), size, extrapolate)
    if memo_key in _TEXEL_MEMO:
        return _TEXEL_MEMO[memo_key]
    num = uv.shape[0]
    faces = torch.arange(3 * num).view(num, 3)

    def draw(tri_uv: torch.Tensor):
        xy = tri_uv.reshape(-1, 2) * 2 - 1
        # rasterize() puts NDC y = +1 at the top row; v = 0 is the top row too.
        clip = torch.cat([xy[:, :1], -xy[:, 1:], torch.zeros_like(xy[:, :1]), torch.ones_like(xy[:, :1])], 1)
        return rasterize(clip[None], faces, (size, size)).tri_id[0]

    def compute() -> dict[str, np.ndarray]:
        inside = draw(uv)
        # Grow each triangle about its centroid so its inradius gains `extrapolate` texels.
        centre = uv.mean(1, keepdim=True)
        e = uv.roll(-1, 1) - uv
        area = 0.5 * (e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]).abs()
        inradius = 2 * area / e.norm(dim=-1).sum(1).clamp_min(1e-12)
        grow = (1 + extrapolate / size / inradius.clamp_min(1e-12)).clamp(max=3.0)
        grown = draw(centre + (uv - centre) * grow[:, None, None])
        mask = inside >= 0
        return {"tri": torch.where(mask, inside, grown).numpy().astype(np.int32), "mask": mask.numpy()}

    key = {"uv": digest, "shape": list(uv.shape), "size": size, "extrapolate": extrapolate,
           "code": code_digest("avatarsdk.uvmap", "avatarsdk.render.raster")}
    arrays = cached_arrays("uv-raster", key, compute)
    tri, mask = torch.from_numpy(arrays["tri"].astype(np.int64)), torch.from_numpy(arrays["mask"])
    hit = tri >= 0
    # Affine barycentrics of each texel centre w.r.t. its (original) triangle.
    t = tri.clamp_min(0)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([(xs + 0.5) / size, (ys + 0.5) / size], -1)
    a, b, c = uv[t, 0], uv[t, 1], uv[t, 2]
    det = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (c[..., 0] - a[..., 0]) * (b[..., 1] - a[..., 1])
    det = torch.where(det.abs() < 1e-18, torch.full_like(det, 1e-18), det)
    l1 = ((p[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (c[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1])) / det
    l2 = ((b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (p[..., 0] - a[..., 0]) * (b[..., 1] - a[..., 1])) / det
    out = (hit, mask, t[hit], torch.stack([1 - l1 - l2, l1, l2], -1)[hit])
    if len(_TEXEL_MEMO) >= 4:
        _TEXEL_MEMO.pop(next(iter(_TEXEL_MEMO)))
    _TEXEL_MEMO[memo_key] = out
    return out


def mesh_to_offset_map(
    vertices: torch.Tensor | np.ndarray,
    topology: Topology,
    mean: np.ndarray,
    size: int = 256,
    gutter: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise a head into its UV position map (offsets from ``mean``).

    Args:
        vertices: [B, V, 3] or [V, 3] float metres on the ICT topology.
        topology: the shared topology.
        mean: [V, 3] float32 generic neutral.
        size: map resolution (the paper uses 256).
        gutter: texels of dilation around the charts.

    Returns:
        ([B, size, size, 3] float32 offsets in metres, [B, size, size] bool mask).

    Raises:
        InputError: wrong vertex count.
    """
    v = torch.as_tensor(np.asarray(vertices) if not isinstance(vertices, torch.Tensor) else vertices,
                        dtype=torch.float32)
    v = v[None] if v.dim() == 2 else v
    if v.shape[1:] != (topology.num_vertices, 3):
        raise InputError(f"vertices: expected [B, {topology.num_vertices}, 3], got {tuple(v.shape)}")
    off = v - torch.as_tensor(mean, dtype=torch.float32)
    tris = _skin_triangles(topology)
    corners = off[:, torch.from_numpy(topology.triangles[tris]).long()]  # [B, F, 3, 3]
    vals, mask = rasterize_uv(corners, torch.from_numpy(topology.corner_uv[tris]), size)
    drawn = vals.abs().sum(-1) > 0
    return dilate(vals, mask | drawn, gutter), mask


def skin_vertex_ids(topology: Topology) -> np.ndarray:
    """Indices of the vertices that have a unified head UV (face, head, sockets)."""
    return np.nonzero(np.isfinite(topology.head_uv[:, 0]))[0]


def sample_at_vertices(maps: torch.Tensor, topology: Topology) -> torch.Tensor:
    """Bilinearly sample [B, H, W, C] maps at every skin vertex's head UV.

    Returns:
        [B, S, C] with S = len(skin_vertex_ids(topology)); differentiable w.r.t. ``maps``.
    """
    ids = skin_vertex_ids(topology)
    uv = torch.from_numpy(topology.head_uv[ids]).to(maps.dtype)
    return texture(maps, uv.view(1, -1, 1, 2).expand(maps.shape[0], -1, -1, -1))[:, :, 0]


def offset_map_to_mesh(
    offsets: torch.Tensor,
    topology: Topology,
    mean: np.ndarray,
    identity_basis: np.ndarray,
) -> torch.Tensor:
    """Turn a UV offset map back into full-head vertices.

    Skin vertices take the sampled offsets. The other parts (teeth, gums,
    tongue, eyes, lacrimal layers, lashes) take the offsets of ICT's identity
    basis fitted to the skin offsets by least squares, so they move with the
    face that holds them.

    Args:
        offsets: [B, H, W, 3] float offset map in metres.
        topology: shared topology.
        mean: [V, 3] generic neutral.
        identity_basis: [K, V, 3] ICT identity deltas.

    Returns:
        [B, V, 3] float32 vertices in metres; differentiable w.r.t. ``offsets``.
    """
    ids = torch.from_numpy(skin_vertex_ids(topology)).long()
    skin = sample_at_vertices(offsets, topology)  # [B, S, 3]
    basis, pinv = _basis_pinv(topology, identity_basis, offsets.dtype)  # [K, V, 3], [K, S*3]
    # coeffs = argmin_c |A c - skin|^2 with A = basis[:, ids] as [S*3, K] (full column rank): A^+ skin.
    coeffs = torch.einsum("kn,bn->bk", pinv, skin.reshape(skin.shape[0], -1))
    full = blend_shapes(coeffs, basis)
    full = full.index_copy(1, ids, skin)
    return full + torch.as_tensor(mean, dtype=offsets.dtype)


_PINV: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Topology -> {key: (basis array, basis, pinv)}


def _basis_pinv(topology: Topology, identity_basis: np.ndarray, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(basis [K, V, 3], pseudo-inverse [K, S*3] of its skin rows) in ``dtype``, computed once per basis.

    The least-squares fit of :func:`offset_map_to_mesh` has the same matrix for
    every head; its pseudo-inverse turns each fit into a matrix product (equal
    to ``torch.linalg.lstsq`` to float rounding, ~1e-13 relative in float64).
    """
    memo = _PINV.setdefault(topology, {})
    key = (id(identity_basis), dtype)
    hit = memo.get(key)
    if hit is None or hit[0] is not identity_basis:
        ids = torch.from_numpy(skin_vertex_ids(topology)).long()
        basis = torch.from_numpy(np.asarray(identity_basis)).to(dtype)
        a = basis[:, ids].reshape(basis.shape[0], -1).T.double()  # [S*3, K]
        hit = (identity_basis, basis, torch.linalg.pinv(a).to(dtype))
        memo[key] = hit
    return hit[1], hit[2]
