"""Differentiable triangle rasterizer in plain PyTorch.

Why hand-written: pytorch3d and nvdiffrast cannot be installed where the SDK
runs (CPU-only torch, no GPU, no way to build their compiled extensions), so
fitting uses this small rasterizer instead. Its oracle is the slow
pure-Python loop rasterizer ``reference_rasterize`` in
``tests/test_render.py``: the tests compare triangle ids exactly, and
barycentrics, depth and gradients numerically, against it.

The interface follows nvdiffrast (``rasterize`` -> ``interpolate`` ->
``texture``, clip-space input, OpenGL conventions), so a CUDA backend can
slot in behind the same functions later.

Conventions (shared by every function here and by ``camera.py``):

* ``clip_verts`` are homogeneous OpenGL clip coordinates: a point is visible
  when ``-w <= x, y, z <= w`` and ``w > 0``.
* Image row 0 is the TOP of the image (NDC y = +1), column 0 the left
  (NDC x = -1). The centre of pixel (row ``r``, column ``c``) is at
  NDC ``x = (c + 0.5) / W * 2 - 1``, ``y = 1 - (r + 0.5) / H * 2``.
* A pixel is covered when its centre lies inside or on the edge of a triangle.
  The fragment with the smallest NDC depth ``z / w`` wins; depths are compared
  after quantisation to 32 bits over [-1, 1] (resolution 4.7e-10, or float32
  resolution for float32 input), and ties go to the smaller triangle id.
* Fragments with ``z / w`` outside [-1, 1] are discarded (the near/far planes
  of OpenGL). Triangles with any vertex at ``w <= 0`` are dropped whole: there
  is no near-plane clipping, so keep geometry in front of the camera.
* Zero-area (degenerate) triangles never cover a pixel.

Speed: visibility is found without autograd by expanding every triangle's
pixel bounding box into (triangle, pixel) candidates row by row (two
``repeat_interleave``), evaluating the edge functions as planes, and resolving
the z-buffer with one ``scatter_reduce(amin)`` per chunk on an int64 key
``quantised_depth << 31 | triangle_id``. Candidates are processed in chunks
of at most ``_CHUNK`` (split by triangles, then by bbox rows), so a triangle
covering the whole image costs time, not memory. Only then are the barycentrics of the
winning triangle recomputed with differentiable ops, so gradients reach the
vertex positions through ``Fragments.bary`` (interior gradients only, like
nvdiffrast without antialiasing; silhouettes do not move by gradient).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avatarsdk.errors import InputError

__all__ = ["Fragments", "rasterize", "interpolate", "texture"]

_CHUNK = 1 << 20
"""Most (triangle, pixel) candidates evaluated at once (about 100 MB)."""

_ID_BITS = 31
_ID_MASK = (1 << _ID_BITS) - 1
_Q_SCALE = 2147483647.5  # maps z in [-1, 1] onto [0, 2**32 - 1]
_Q_MAX = (1 << 32) - 1  # float32 rounds z = 1 up to 2**32, which would overflow the key
_EMPTY = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Fragments:
    """What ``rasterize`` found at each pixel.

    Attributes:
        tri_id: [B, H, W] int64 index into ``faces`` of the visible triangle,
            -1 on background.
        bary: [B, H, W, 3] float perspective-correct barycentric coordinates of
            the pixel centre w.r.t. the visible triangle's vertices (same order
            as in ``faces``), summing to 1; zeros on background.
            Differentiable w.r.t. the clip-space vertex positions.
        depth: [B, H, W] float NDC depth ``z / w`` in [-1, 1] (smaller is
            nearer), +inf on background. Differentiable like ``bary``.
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool, True where a triangle covers the pixel."""
        return self.tri_id >= 0


def rasterize(
    clip_verts: torch.Tensor,
    faces: torch.Tensor,
    size: tuple[int, int],
    *,
    cull_backfaces: bool = False,
) -> Fragments:
    """Find the nearest triangle at every pixel centre and its barycentrics.

    Args:
        clip_verts: [B, V, 4] float32 or float64 homogeneous OpenGL clip-space
            vertex positions (e.g. from ``camera.transform_points``).
        faces: [F, 3] int32 or int64 vertex indices in [0, V).
        size: (H, W) image height and width in pixels, both >= 1.
        cull_backfaces: drop triangles whose vertices run clockwise on screen
            (OpenGL: counter-clockwise in NDC, y up, is front-facing).

    Returns:
        Fragments with ``tri_id`` [B, H, W] int64, ``bary`` [B, H, W, 3] and
        ``depth`` [B, H, W] in the dtype of ``clip_verts``.

    Raises:
        InputError: on wrong shapes, dtypes, sizes or out-of-range indices,
            or more than 2**31 - 1 faces.
    """
    _check_clip(clip_verts)
    faces = _check_faces(faces, clip_verts.shape[1])
    height, width = _check_size(size)
    if faces.shape[0] > _ID_MASK:
        raise InputError(f"at most {_ID_MASK} faces can be rasterized, got {faces.shape[0]}")
    batch = clip_verts.shape[0]

    with torch.no_grad():
        zbuf = _visibility(clip_verts.detach(), faces, height, width, cull_backfaces)
    pix = (zbuf != _EMPTY).nonzero().squeeze(1)
    tri = zbuf.index_select(0, pix) & _ID_MASK
    bary, depth = _barycentrics(clip_verts, faces, tri, pix, height, width)

    n = batch * height * width
    tri_id = torch.full((n,), -1, dtype=torch.int64, device=clip_verts.device)
    tri_id.index_copy_(0, pix, tri)
    bary_img = clip_verts.new_zeros(n, 3).index_copy(0, pix, bary)
    depth_img = clip_verts.new_full((n,), float("inf")).index_copy(0, pix, depth)
    return Fragments(
        tri_id=tri_id.view(batch, height, width),
        bary=bary_img.view(batch, height, width, 3),
        depth=depth_img.view(batch, height, width),
    )


def interpolate(attrs: torch.Tensor, frags: Fragments, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate per-vertex attributes at every pixel.

    Args:
        attrs: [B, V, C] or [V, C] float per-vertex attributes (colours, UVs,
            normals, ...); [V, C] and B = 1 are shared by the whole batch.
        frags: output of ``rasterize`` with batch size B.
        faces: [F, 3] int32 or int64 indices into ``attrs``, one row per face
            given to ``rasterize`` (usually the same tensor; an index set of
            its own, e.g. per-corner UVs split at seams, works as in
            nvdiffrast).

    Returns:
        [B, H, W, C] attributes weighted by ``frags.bary``, zero on background.
        Differentiable w.r.t. ``attrs`` and, through ``frags.bary``, the
        vertex positions.

    Raises:
        InputError: on wrong shapes or dtypes, a batch size mismatch, or
            fragments showing faces that ``faces`` does not have.
    """
    if not isinstance(attrs, torch.Tensor) or not attrs.is_floating_point():
        raise InputError(f"attrs must be a floating-point tensor, got {_describe(attrs)}")
    if attrs.dim() not in (2, 3):
        raise InputError(f"attrs must be [B, V, C] or [V, C], got shape {tuple(attrs.shape)}")
    faces = _check_faces(faces, attrs.shape[-2])
    batch, height, width = frags.tri_id.shape
    if attrs.dim() == 3 and attrs.shape[0] not in (1, batch):
        raise InputError(f"attrs batch {attrs.shape[0]} does not match fragments batch {batch}")
    nverts, channels = attrs.shape[-2:]
    # Work on covered pixels only; index_select's backward (index_add) is cheap.
    pix = frags.tri_id.reshape(-1).ge(0).nonzero().squeeze(1)
    tri = frags.tri_id.reshape(-1).index_select(0, pix)
    if tri.numel() and int(tri.max()) >= faces.shape[0]:
        raise InputError(f"fragments show face {int(tri.max())} but faces has only {faces.shape[0]} rows")
    vid = faces.index_select(0, tri)  # [P, 3]
    if attrs.dim() == 3 and attrs.shape[0] > 1:
        vid = vid + (pix // (height * width) * nverts)[:, None]
    corner = attrs.reshape(-1, channels).index_select(0, vid.reshape(-1)).view(-1, 3, channels)
    bary = frags.bary.reshape(-1, 3).index_select(0, pix).to(attrs.dtype)
    values = (bary.unsqueeze(-1) * corner).sum(1)
    out = attrs.new_zeros(batch * height * width, channels).index_copy(0, pix, values)
    return out.view(batch, height, width, channels)


def texture(tex: torch.Tensor, uv: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Sample a texture at per-pixel UV coordinates.

    Args:
        tex: [B, Ht, Wt, C] or [Ht, Wt, C] float texture, row 0 at the top;
            [Ht, Wt, C] and B = 1 are shared by the whole batch.
        uv: [B, H, W, 2] float texture coordinates in [0, 1] with the glTF
            convention: u to the right, v down, origin at the top-left corner
            of the texture (texel centres at (i + 0.5) / Wt). Outside [0, 1]
            the edge texels repeat (clamp).
        mode: "bilinear" or "nearest".

    Returns:
        [B, H, W, C] samples in the dtype of ``tex``, differentiable w.r.t.
        ``tex`` and (bilinear only) ``uv``.

    Raises:
        InputError: on wrong shapes or dtypes, a batch size mismatch or an
            unknown mode.
    """
    if mode not in ("bilinear", "nearest"):
        raise InputError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if not isinstance(tex, torch.Tensor) or not tex.is_floating_point() or tex.dim() not in (3, 4):
        raise InputError(f"tex must be a float [B, Ht, Wt, C] or [Ht, Wt, C] tensor, got {_describe(tex)}")
    if not isinstance(uv, torch.Tensor) or not uv.is_floating_point() or uv.dim() != 4 or uv.shape[-1] != 2:
        raise InputError(f"uv must be a float [B, H, W, 2] tensor, got {_describe(uv)}")
    if tex.dim() == 3:
        tex = tex.unsqueeze(0)
    batch = uv.shape[0]
    if tex.shape[0] not in (1, batch):
        raise InputError(f"tex batch {tex.shape[0]} does not match uv batch {batch}")
    tex = tex.expand(batch, -1, -1, -1).permute(0, 3, 1, 2)
    grid = uv.to(tex.dtype) * 2 - 1
    out = F.grid_sample(tex, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- helpers


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_clip(clip_verts: object) -> None:
    if not isinstance(clip_verts, torch.Tensor) or clip_verts.dtype not in (torch.float32, torch.float64):
        raise InputError(f"clip_verts must be a float32/float64 tensor, got {_describe(clip_verts)}")
    if clip_verts.dim() != 3 or clip_verts.shape[-1] != 4:
        raise InputError(f"clip_verts must be [B, V, 4], got shape {tuple(clip_verts.shape)}")


def _check_faces(faces: object, num_vertices: int) -> torch.Tensor:
    if not isinstance(faces, torch.Tensor) or faces.dtype not in (torch.int32, torch.int64):
        raise InputError(f"faces must be an int32/int64 tensor, got {_describe(faces)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise InputError(f"faces must be [F, 3], got shape {tuple(faces.shape)}")
    faces = faces.long()
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_vertices):
        raise InputError(
            f"faces index range [{int(faces.min())}, {int(faces.max())}] is outside [0, {num_vertices})"
        )
    return faces


def _check_size(size: object) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    if not ok:
        raise InputError(f"size must be (H, W) with two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _to_pixels(v: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Split [..., 4] clip coordinates into pixel x, pixel y (centre of pixel c at c), NDC z, w."""
    w = v[..., 3]
    x = (v[..., 0] / w + 1) * (0.5 * width) - 0.5
    y = (1 - v[..., 1] / w) * (0.5 * height) - 0.5
    return x, y, v[..., 2] / w, w


def _spans(counts: torch.Tensor, budget: int) -> Iterator[tuple[int, int]]:
    """Split a sequence of counts into consecutive runs summing to at most ``budget``
    (or one element, when a single count exceeds it)."""
    cum = counts.cumsum(0)
    start, n = 0, counts.numel()
    while start < n:
        base = int(cum[start - 1]) if start else 0
        end = int(torch.searchsorted(cum, base + budget, right=True))
        end = max(end, start + 1)
        yield start, end
        start = end


def _visibility(
    clip: torch.Tensor, faces: torch.Tensor, height: int, width: int, cull: bool
) -> torch.Tensor:
    """Return the z-buffer: [B*H*W] int64 keys ``q(depth) << 31 | face``, ``_EMPTY`` on background."""
    batch = clip.shape[0]
    nfaces = faces.shape[0]
    zbuf = torch.full((batch * height * width,), _EMPTY, dtype=torch.int64, device=clip.device)
    if nfaces == 0:
        return zbuf
    corners = clip.index_select(1, faces.reshape(-1)).reshape(-1, 3, 4)
    x, y, z, w = _to_pixels(corners, height, width)  # [T, 3] each, T = B*F
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    x0 = x.amin(1).clamp(-1, width).ceil()
    y0 = y.amin(1).clamp(-1, height).ceil()
    bw = (x.amax(1).clamp(-1, width).floor().clamp(max=width - 1) - x0.clamp(min=0) + 1).long()
    bh = (y.amax(1).clamp(-1, height).floor().clamp(max=height - 1) - y0.clamp(min=0) + 1).long()
    ok = (w.amin(1) > 0) & (area != 0) & (bw > 0) & (bh > 0)
    ok &= torch.isfinite(area) & torch.isfinite(z.sum(1))
    if cull:
        ok &= area < 0  # pixel y points down: counter-clockwise in NDC is negative here
    keep = ok.nonzero().squeeze(1)
    if keep.numel() == 0:
        return zbuf
    x, y, z, area = (t.index_select(0, keep) for t in (x, y, z, area[:, None]))
    x0, y0, bw, bh = (t.index_select(0, keep) for t in (x0.clamp(min=0), y0.clamp(min=0), bw, bh))

    # Barycentrics and depth as planes a*dx + b*dy + c in pixel offsets from the
    # bbox corner (small coordinates keep float32 accurate).
    lx, ly = x - x0[:, None], y - y0[:, None]
    i, j = [1, 2, 0], [2, 0, 1]
    a = (ly[:, i] - ly[:, j]) / area
    b = (lx[:, j] - lx[:, i]) / area
    c = (lx[:, i] * ly[:, j] - ly[:, i] * lx[:, j]) / area
    planes = torch.cat([a, (a * z).sum(1, True), b, (b * z).sum(1, True), c, (c * z).sum(1, True)], 1)
    first_pixel = (keep // nfaces) * (height * width) + y0.long() * width + x0.long()
    ints = torch.stack([first_pixel, keep % nfaces, bw], 1)

    budget = max(_CHUNK, width)
    for t0, t1 in _spans(bw * bh, budget):
        # One unit per (triangle, bbox row): its planes at dx = 0, first pixel, face, width.
        rows = bh[t0:t1]
        unit_tri = torch.repeat_interleave(torch.arange(t0, t1, device=clip.device), rows)
        dy = torch.arange(unit_tri.numel(), device=clip.device)
        dy -= torch.repeat_interleave(rows.cumsum(0) - rows, rows)
        p = planes.index_select(0, unit_tri)
        coef = torch.cat([p[:, :4], torch.addcmul(p[:, 8:], p[:, 4:8], dy[:, None].to(p.dtype))], 1)
        q = ints.index_select(0, unit_tri)
        unit_pix, unit_face, unit_w = q[:, 0] + dy * width, q[:, 1], q[:, 2]
        for u0, u1 in _spans(unit_w, budget):
            # One candidate per (unit, bbox column).
            cols = unit_w[u0:u1]
            unit = torch.repeat_interleave(torch.arange(u0, u1, device=clip.device), cols)
            dx = torch.arange(unit.numel(), device=clip.device)
            dx -= torch.repeat_interleave(cols.cumsum(0) - cols, cols)
            g = coef.index_select(0, unit)
            val = torch.addcmul(g[:, 4:], g[:, :4], dx[:, None].to(g.dtype))
            depth = val[:, 3]
            inside = (val[:, :3].amin(1) >= 0) & (depth >= -1) & (depth <= 1)
            hit = inside.nonzero().squeeze(1)
            unit = unit.index_select(0, hit)
            key = ((depth.index_select(0, hit) + 1) * _Q_SCALE).long().clamp_(max=_Q_MAX) << _ID_BITS
            key |= unit_face.index_select(0, unit)
            pix = unit_pix.index_select(0, unit) + dx.index_select(0, hit)
            zbuf.scatter_reduce_(0, pix, key, "amin")
    return zbuf


def _barycentrics(
    clip: torch.Tensor,
    faces: torch.Tensor,
    tri: torch.Tensor,
    pix: torch.Tensor,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute, with autograd, the perspective-correct barycentrics and depth of
    triangle ``tri[k]`` at flat pixel ``pix[k]``."""
    nverts = clip.shape[1]
    hw = height * width
    vid = faces.index_select(0, tri) + (pix // hw * nverts)[:, None]
    corners = clip.reshape(-1, 4).index_select(0, vid.reshape(-1)).view(-1, 3, 4)
    x, y, z, w = _to_pixels(corners, height, width)  # [P, 3] each
    rem = pix % hw
    dx = x - (rem % width).to(x.dtype)[:, None]
    dy = y - (rem // width).to(x.dtype)[:, None]
    i, j = [1, 2, 0], [2, 0, 1]
    e = dx[:, i] * dy[:, j] - dy[:, i] * dx[:, j]  # twice the signed sub-triangle areas
    lin = e / e.sum(1, keepdim=True)  # screen-space barycentrics
    depth = (lin * z).sum(1)
    persp = lin / w
    return persp / persp.sum(1, keepdim=True), depth
