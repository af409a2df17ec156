"""One textured, SH-lit head render: rasterize, interpolate UV and normals, texture, shade.

The composition every fitting and latent-optimisation stage draws with
(:mod:`avatarsdk.fit`'s photometric stage, :mod:`avatarsdk.invert`'s views,
:mod:`avatarsdk.refine`'s render into the photo); the callers combine the two
returned images (albedo x shading, exposure, display encoding) as they need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avatarsdk.errors import InputError
from avatarsdk.render.camera import transform_points
from avatarsdk.render.raster import Fragments, interpolate, rasterize, texture
from avatarsdk.render.shading import sh_shading, vertex_normals

__all__ = ["HeadRender", "render_head"]


@dataclass(frozen=True, eq=False)
class HeadRender:
    """What :func:`render_head` draws.

    Attributes:
        frags: the rasterizer's fragments ([B, H, W] per pixel).
        albedo: [B, H, W, C] texture samples at the pixels' UVs (0 where uncovered).
        shading: [B, H, W, 3] SH irradiance at the pixels' interpolated normals.
    """

    frags: Fragments
    albedo: torch.Tensor
    shading: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool pixels the head covers."""
        return self.frags.mask


def render_head(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    matrix: torch.Tensor,
    size: tuple[int, int],
    *,
    corner_uv: torch.Tensor,
    corner_faces: torch.Tensor,
    albedo: torch.Tensor,
    light: torch.Tensor,
    cull_backfaces: bool = True,
    normal_eps: float = 1e-12,
    clamp_shading: bool = True,
) -> HeadRender:
    """Render a textured mesh lit by an SH light.

    Per pixel: the corner UVs and the (area-weighted, :func:`vertex_normals`)
    vertex normals are interpolated with the fragments' barycentrics, the
    normal renormalised (``F.normalize(n, eps=normal_eps)``), the albedo
    sampled bilinearly and the shading ``sh_shading(n, light)`` evaluated
    (clamped at 0 when ``clamp_shading``). Differentiable w.r.t. ``vertices``
    (inside silhouettes, like the rasterizer), ``albedo`` and ``light``.

    Args:
        vertices: [V, 3] or [B, V, 3] float positions (world frame).
        faces: [F, 3] int64 triangles.
        matrix: [4, 4] clip matrix (``projection @ view``, e.g.
            :func:`~avatarsdk.render.camera.gl_matrices`) or [N, 4, 4]: N views
            of every head, rendered head-major (head b, view k at ``b * N + k``).
        size: (height, width) in pixels.
        corner_uv: [U, 2] float texture coordinates indexed by ``corner_faces``.
        corner_faces: [F, 3] int64 rows of ``corner_uv`` for each triangle's corners.
        albedo: [Ht, Wt, C] texture shared by all, or [B, Ht, Wt, C] one per head.
        light: [9, 3] SH coefficients (:mod:`avatarsdk.render.shading`).
        cull_backfaces: drop triangles facing away from the camera.
        normal_eps: ``eps`` of the normal renormalisation.
        clamp_shading: clamp the shading at 0 (no negative light).

    Returns:
        :class:`HeadRender` of B (or B * N) images.

    Raises:
        InputError: bad shapes.
    """
    if vertices.ndim not in (2, 3) or vertices.shape[-1] != 3:
        raise InputError(f"vertices: expected [V, 3] or [B, V, 3], got {list(vertices.shape)}")
    if matrix.ndim == 3:  # N views of each of B heads
        if vertices.ndim != 3:
            raise InputError("several view matrices need batched [B, V, 3] vertices")
        b, n = vertices.shape[0], matrix.shape[0]
        posed = vertices[:, None].expand(b, n, -1, -1).reshape(b * n, -1, 3)
        clip = transform_points(posed, matrix.repeat(b, 1, 1))  # [BN, V, 4]
        normals = vertex_normals(vertices, faces)[:, None].expand(b, n, -1, -1).reshape(b * n, -1, 3)
        if albedo.ndim == 4:
            albedo = albedo[:, None].expand(b, n, -1, -1, -1).reshape(b * n, *albedo.shape[1:])
    else:
        clip = transform_points(vertices, matrix)
        normals = vertex_normals(vertices, faces)
    frags = rasterize(clip, faces, size, cull_backfaces=cull_backfaces)
    uv = interpolate(corner_uv, frags, corner_faces)  # [B, H, W, 2]
    colour = texture(albedo, uv)  # [B, H, W, C]
    n_img = F.normalize(interpolate(normals, frags, faces), dim=-1, eps=normal_eps)
    shading = sh_shading(n_img, light)
    if clamp_shading:
        shading = shading.clamp_min(0.0)
    return HeadRender(frags=frags, albedo=colour, shading=shading)
