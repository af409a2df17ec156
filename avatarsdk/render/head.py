"""The head renderer: rasterize, interpolate UV and normals, texture, SH shading, and the layered compositor.

:func:`render_head` is the one composition of raster + interpolate + texture +
SH shading in the SDK. In its plain form (one ``albedo`` texture) it is what
every fitting and latent-optimisation stage draws with (:mod:`avatarsdk.fit`'s
photometric stage, :mod:`avatarsdk.invert`'s views, :mod:`avatarsdk.refine`'s
render into the photo); the callers combine the two returned images (albedo x
shading, exposure, display encoding) as they need. With ``materials`` it draws
one multi-material mesh the way an engine does (per-material base colour and
sRGB texture, tangent-space normal map, occlusion, normals turned toward the
camera for double-sided cards), and :func:`render_layers` composites such
renders in passes (opaque, alpha-tested, alpha-blended) over a background: the
photos of :mod:`avatarsdk.scene` and the previews of :mod:`avatarsdk.preview`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.render.camera import transform_points
from avatarsdk.render.raster import Fragments, interpolate, rasterize, texture
from avatarsdk.render.shading import sh_shading, vertex_normals

__all__ = ["ALPHA_MODES", "HeadRender", "Layers", "Material", "render_head", "render_layers"]

ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")
"""glTF's alpha modes: opaque, alpha-tested at :attr:`Material.alpha_cutoff`, alpha-blended."""


@dataclass(frozen=True, eq=False)
class Material:
    """One surface's look in a multi-material :func:`render_head` (as a glTF metallic-roughness material).

    Attributes:
        colour: linear RGBA factor (glTF ``baseColorFactor``).
        texture: [Ht, Wt, 3 or 4] float sRGB-encoded colour (and linear alpha) in [0, 1],
            multiplied into ``colour`` after decoding; None: ``colour`` alone.
        normal_map: [Ht, Wt, 3] float tangent-space normals in [-1, 1] (needs the
            vertex ``tangents`` of :func:`render_head`); None: the interpolated normal.
        occlusion: [Ht, Wt, 1] float ambient occlusion in [0, 1] multiplied into the shading.
        alpha_mode: one of :data:`ALPHA_MODES` (the pass :func:`render_layers` draws it in).
        alpha_cutoff: the MASK threshold: texels with alpha at or above it are drawn.
    """

    colour: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    texture: torch.Tensor | None = None
    normal_map: torch.Tensor | None = None
    occlusion: torch.Tensor | None = None
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: float = 0.5


@dataclass(frozen=True, eq=False)
class HeadRender:
    """What :func:`render_head` draws.

    Attributes:
        frags: the rasterizer's fragments ([B, H, W] per pixel).
        albedo: [B, H, W, C] texture samples at the pixels' UVs (0 where uncovered);
            with ``materials``: [1, H, W, 4] linear RGBA (0 where not drawn).
        shading: [B, H, W, 3] SH irradiance at the pixels' interpolated normals
            (with ``materials``: times the occlusion; 0 where not drawn).
        drawn: [B, H, W] bool pixels drawn when they differ from the covered
            ones (``nearer_than``); None: every covered pixel.
    """

    frags: Fragments
    albedo: torch.Tensor
    shading: torch.Tensor
    drawn: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool pixels drawn (covered by the head and, with ``nearer_than``, passing the depth test)."""
        return self.frags.mask if self.drawn is None else self.drawn


def render_head(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    matrix: torch.Tensor,
    size: tuple[int, int],
    *,
    corner_uv: torch.Tensor,
    corner_faces: torch.Tensor,
    albedo: torch.Tensor | None = None,
    light: torch.Tensor,
    cull_backfaces: bool = True,
    normal_eps: float = 1e-12,
    clamp_shading: bool = True,
    materials: Sequence[Material] | None = None,
    tri_material: torch.Tensor | None = None,
    normals: torch.Tensor | None = None,
    tangents: torch.Tensor | None = None,
    eye: torch.Tensor | None = None,
    nearer_than: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> HeadRender:
    """Render a textured mesh lit by an SH light.

    Per pixel: the corner UVs and the (area-weighted, :func:`vertex_normals`)
    vertex normals are interpolated with the fragments' barycentrics, the
    normal renormalised (``F.normalize(n, eps=normal_eps)``), the albedo
    sampled bilinearly and the shading ``sh_shading(n, light)`` evaluated
    (clamped at 0 when ``clamp_shading``). Differentiable w.r.t. ``vertices``
    (inside silhouettes, like the rasterizer), ``albedo`` and ``light``.

    With ``materials`` (one head, one view) each drawn pixel takes its
    triangle's :class:`Material`: RGBA = ``colour`` x the decoded texture
    sample; the normal is perturbed by the material's normal map (frame from
    the interpolated ``tangents``, their w the bitangent sign), turned toward
    ``eye`` when given (double-sided surfaces), and the shading multiplied by
    the occlusion sample. Only the drawn pixels are evaluated.

    Args:
        vertices: [V, 3] or [B, V, 3] float positions (world frame).
        faces: [F, 3] int64 triangles.
        matrix: [4, 4] clip matrix (``projection @ view``, e.g.
            :func:`~avatarsdk.render.camera.gl_matrices`) or [N, 4, 4]: N views
            of every head, rendered head-major (head b, view k at ``b * N + k``).
        size: (height, width) in pixels.
        corner_uv: [U, 2] float texture coordinates indexed by ``corner_faces``.
        corner_faces: [F, 3] int64 rows of ``corner_uv`` for each triangle's corners.
        albedo: [Ht, Wt, C] texture shared by all, or [B, Ht, Wt, C] one per head
            (exactly one of ``albedo`` and ``materials``).
        light: [9, 3] SH coefficients (:mod:`avatarsdk.render.shading`).
        cull_backfaces: drop triangles facing away from the camera.
        normal_eps: ``eps`` of the normal renormalisation.
        clamp_shading: clamp the shading at 0 (no negative light).
        materials: the mesh's materials, indexed by ``tri_material``.
        tri_material: [F] int64 material of each triangle (with ``materials``).
        normals: [V, 3] vertex normals to interpolate instead of
            ``vertex_normals(vertices, faces)`` (e.g. computed over a larger
            mesh than ``faces``, or merged across UV seams).
        tangents: [V, 4] vertex tangents (xyz, bitangent sign) for normal maps.
        eye: [3] camera centre; normals facing away from it are flipped.
        nearer_than: [H, W] NDC depth; only fragments nearer than it are drawn.
        dtype: rasterize and shade in this dtype (the projection runs in the
            dtype of ``vertices`` and ``matrix``); None: that dtype.

    Returns:
        :class:`HeadRender` of B (or B * N) images.

    Raises:
        InputError: bad shapes or a bad material set.
    """
    if vertices.ndim not in (2, 3) or vertices.shape[-1] != 3:
        raise InputError(f"vertices: expected [V, 3] or [B, V, 3], got {list(vertices.shape)}")
    if (albedo is None) == (materials is None):
        raise InputError("render_head needs exactly one of albedo and materials")
    if materials is not None:
        frags, drawn, rgba, shade = _render_materials(
            vertices, faces, matrix, size, corner_uv=corner_uv, corner_faces=corner_faces, light=light,
            cull_backfaces=cull_backfaces, normal_eps=normal_eps, clamp_shading=clamp_shading, materials=materials,
            tri_material=tri_material, normals=normals, tangents=tangents, eye=eye, nearer_than=nearer_than,
            dtype=dtype)
        pixels = drawn.view(-1).nonzero().squeeze(1)
        height, width = drawn.shape
        albedo_img = rgba.new_zeros(height * width, 4).index_copy(0, pixels, rgba).view(1, height, width, 4)
        shading_img = shade.new_zeros(height * width, 3).index_copy(0, pixels, shade).view(1, height, width, 3)
        return HeadRender(frags=frags, albedo=albedo_img, shading=shading_img, drawn=drawn[None])
    if eye is not None or tangents is not None or nearer_than is not None or dtype is not None:
        raise InputError("eye, tangents, nearer_than and dtype go with materials")
    if matrix.ndim == 3:  # N views of each of B heads
        if vertices.ndim != 3:
            raise InputError("several view matrices need batched [B, V, 3] vertices")
        b, n = vertices.shape[0], matrix.shape[0]
        posed = vertices[:, None].expand(b, n, -1, -1).reshape(b * n, -1, 3)
        clip = transform_points(posed, matrix.repeat(b, 1, 1))  # [BN, V, 4]
        normals = vertex_normals(vertices, faces) if normals is None else normals.expand(b, -1, -1)
        normals = normals[:, None].expand(b, n, -1, -1).reshape(b * n, -1, 3)
        if albedo.ndim == 4:
            albedo = albedo[:, None].expand(b, n, -1, -1, -1).reshape(b * n, *albedo.shape[1:])
    else:
        clip = transform_points(vertices, matrix)
        normals = vertex_normals(vertices, faces) if normals is None else normals
    frags = rasterize(clip, faces, size, cull_backfaces=cull_backfaces)
    uv = interpolate(corner_uv, frags, corner_faces)  # [B, H, W, 2]
    colour = texture(albedo, uv)  # [B, H, W, C]
    n_img = F.normalize(interpolate(normals, frags, faces), dim=-1, eps=normal_eps)
    shading = sh_shading(n_img, light)
    if clamp_shading:
        shading = shading.clamp_min(0.0)
    return HeadRender(frags=frags, albedo=colour, shading=shading)


def _render_materials(vertices, faces, matrix, size, *, corner_uv, corner_faces, light, cull_backfaces, normal_eps,
                      clamp_shading, materials, tri_material, normals, tangents, eye, nearer_than,
                      dtype) -> tuple[Fragments, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`render_head` with ``materials`` at the drawn pixels only.

    Returns:
        (fragments, [H, W] bool drawn pixels, [P, 4] linear RGBA and [P, 3] shading of the
        drawn pixels in row-major order).
    """
    if vertices.ndim != 2 or matrix.ndim != 2:
        raise InputError("render_head with materials draws one head ([V, 3]) in one view ([4, 4])")
    if tri_material is None or tri_material.shape != faces.shape[:1]:
        raise InputError("materials need tri_material: one material index per face")
    if len(tri_material) and not 0 <= int(tri_material.min()) <= int(tri_material.max()) < len(materials):
        raise InputError(f"tri_material indexes {len(materials)} materials")
    for m in materials:
        if m.alpha_mode not in ALPHA_MODES:
            raise InputError(f"alpha_mode {m.alpha_mode!r}: expected one of {', '.join(ALPHA_MODES)}")
        if m.normal_map is not None and tangents is None:
            raise InputError("a material with a normal map needs vertex tangents")
    clip = transform_points(vertices, matrix)
    points = vertices
    if dtype is not None:
        clip, points = clip.to(dtype), vertices.to(dtype)
    if normals is None:
        normals = vertex_normals(points, faces)
    frags = rasterize(clip, faces, size, cull_backfaces=cull_backfaces)
    tid = frags.tri_id[0]
    drawn = tid >= 0
    if nearer_than is not None:
        drawn &= frags.depth[0] < nearer_than
    tri = tid[drawn]
    bary = frags.bary[0][drawn].unsqueeze(-1)  # [P, 3, 1]
    corners = faces[tri]  # [P, 3]

    uv = (bary * corner_uv[corner_faces[tri]]).sum(1)
    n = (bary * normals[corners]).sum(1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(normal_eps)
    mat = tri_material[tri]
    base = torch.tensor([m.colour for m in materials], dtype=torch.float32)
    rgba = base[mat].clone()
    ao = torch.ones(len(n), 1)
    for i, m in enumerate(materials):
        hit = mat == i
        if not hit.any():
            continue
        at = uv[hit].view(1, -1, 1, 2)
        if m.texture is not None:
            s = texture(m.texture, at)[0, :, 0]
            a = s[:, 3] if s.shape[1] == 4 else torch.ones(len(s))
            rgba[hit] = rgba[hit] * torch.cat([srgb_to_linear(s[:, :3]), a[:, None]], 1)
        if m.occlusion is not None:
            ao[hit] = texture(m.occlusion, at)[0, :, 0]
        if m.normal_map is not None:
            nm = texture(m.normal_map, at)[0, :, 0]
            tan = (bary[hit] * tangents[corners[hit]]).sum(1)
            nh = n[hit]
            t = tan[:, :3] - (tan[:, :3] * nh).sum(-1, keepdim=True) * nh
            t = t / t.norm(dim=-1, keepdim=True).clamp_min(normal_eps)
            b = torch.linalg.cross(nh, t) * torch.where(tan[:, 3:] < 0, -1.0, 1.0)
            pn = t * nm[:, :1] + b * nm[:, 1:2] + nh * nm[:, 2:3]
            n[hit] = pn / pn.norm(dim=-1, keepdim=True).clamp_min(normal_eps)
    if eye is not None:  # double-sided: shade with the normal facing the camera
        view_dir = eye - (bary * points[corners]).sum(1)
        n = torch.where(((n * view_dir).sum(-1, keepdim=True) < 0), -n, n)
    shade = sh_shading(n, light)
    if clamp_shading:
        shade = shade.clamp_min(0.0)
    return frags, drawn, rgba, shade * ao


@dataclass(frozen=True, eq=False)
class Layers:
    """What :func:`render_layers` composites.

    Attributes:
        image: [H, W, 3] float linear RGB over the background.
        coverage: [H, W] float in [0, 1]: how much of each pixel shows the
            material asked for (``coverage_of``); None when not asked.
    """

    image: torch.Tensor
    coverage: torch.Tensor | None


def render_layers(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    matrix: torch.Tensor,
    background: torch.Tensor,
    *,
    corner_uv: torch.Tensor,
    corner_faces: torch.Tensor,
    materials: Sequence[Material],
    tri_material: torch.Tensor,
    light: torch.Tensor,
    eye: torch.Tensor | None = None,
    normals: torch.Tensor | None = None,
    tangents: torch.Tensor | None = None,
    mask_groups: torch.Tensor | None = None,
    cull_opaque: bool = False,
    coverage_of: int | None = None,
    dtype: torch.dtype | None = None,
    normal_eps: float = 1e-8,
) -> Layers:
    """Composite a multi-material mesh over a background in passes, as an engine draws glTF alpha modes.

    1. OPAQUE triangles, one :func:`render_head` pass; they write the depth buffer.
    2. MASK triangles, one pass per group of ``mask_groups``, each depth-tested
       against what is drawn; texels with alpha at or above the material's
       cutoff are drawn and write depth. The rasterizer keeps one triangle per
       pixel, so groups (e.g. the quads of hair cards dealt round-robin) let a
       transparent texel of a near card show the cards behind it.
    3. BLEND triangles, one pass depth-tested against the opaque depth,
       blended over it with their alpha (no sorting among themselves).

    Colour = RGBA x shading (see :func:`render_head` with ``materials``); the
    vertex normals are computed once over the whole mesh unless given.

    Args:
        vertices: [V, 3] float positions (world frame).
        faces: [F, 3] int64 triangles.
        matrix: [4, 4] clip matrix.
        background: [H, W, 3] float linear RGB; fixes the image size.
        corner_uv, corner_faces, materials, tri_material, light, eye, tangents,
            dtype, normal_eps: as for :func:`render_head`.
        normals: [V, 3] vertex normals (default: ``vertex_normals`` of all faces).
        mask_groups: [F] int64 group of each MASK triangle (default: one group).
        cull_opaque: cull back faces in the opaque pass (closed surfaces seen
            from outside: faster); MASK and BLEND passes never cull.
        coverage_of: a material index whose per-pixel coverage to return.

    Returns:
        :class:`Layers`.

    Raises:
        InputError: bad shapes or materials.
    """
    if background.ndim != 3 or background.shape[-1] != 3:
        raise InputError(f"background: expected [H, W, 3], got {list(background.shape)}")
    height, width = background.shape[:2]
    points = vertices if dtype is None else vertices.to(dtype)
    if normals is None:
        normals = vertex_normals(points, faces)
    modes = torch.tensor([ALPHA_MODES.index(m.alpha_mode) if m.alpha_mode in ALPHA_MODES else -1
                          for m in materials], dtype=torch.int64)
    if bool((modes < 0).any()):
        raise InputError(f"alpha modes must be among {', '.join(ALPHA_MODES)}")
    cutoff = torch.tensor([m.alpha_cutoff for m in materials], dtype=torch.float32)
    tri_mode = modes[tri_material]
    groups = torch.zeros_like(tri_material) if mask_groups is None else mask_groups
    passes = [(0, None)]
    if bool((tri_mode == 1).any()):
        passes += [(1, int(g)) for g in torch.unique(groups[tri_mode == 1])]
    passes.append((2, None))

    img = background.clone()
    cov = torch.zeros(height, width) if coverage_of is not None else None
    opaque_depth = torch.full((height, width), float("inf"))
    for mode, group in passes:
        keep = tri_mode == mode
        if group is not None:
            keep &= groups == group
        sel = torch.nonzero(keep).squeeze(1)
        if len(sel) == 0:
            continue
        # render_head(materials=...) at the drawn pixels, without the dense images.
        frags, mask, rgba, shade = _render_materials(
            vertices, faces[sel], matrix, (height, width), corner_uv=corner_uv, corner_faces=corner_faces[sel],
            light=light, cull_backfaces=cull_opaque and mode == 0, normal_eps=normal_eps, clamp_shading=True,
            materials=materials, tri_material=tri_material[sel], normals=normals, tangents=tangents, eye=eye,
            nearer_than=None if mode == 0 else opaque_depth, dtype=dtype)
        if mode == 0:
            opaque_depth = torch.where(frags.mask[0], frags.depth[0], opaque_depth)
        if not mask.any():
            continue
        colour = rgba[:, :3] * shade
        mat = tri_material[sel][frags.tri_id[0][mask]]
        if mode == 1:  # alpha test: texels at or above the cutoff are drawn and write depth
            hit = rgba[:, 3] >= cutoff[mat]
            idx = torch.nonzero(mask.view(-1)).squeeze(1)[hit]
            img.view(-1, 3)[idx] = colour[hit]
            opaque_depth.view(-1)[idx] = frags.depth[0].reshape(-1)[idx]
            if cov is not None:
                cov.view(-1)[idx] = (mat[hit] == coverage_of).float()
            continue
        alpha = rgba[:, 3:4] if mode == 2 else torch.ones(len(rgba), 1)
        img[mask] = img[mask] * (1 - alpha) + colour * alpha
        if cov is not None:
            if mode == 0:
                cov[mask] = (mat == coverage_of).float()
            else:
                cov[mask] = cov[mask] * (1 - alpha[:, 0]) + alpha[:, 0] * (mat == coverage_of).float()
    return Layers(image=img, coverage=cov)
