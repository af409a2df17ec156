"""Differentiable rendering on CPU: rasterizer, pinhole camera, SH shading.

Typical use::

    clip = transform_points(verts, proj @ view)          # [B, V, 4]
    frags = rasterize(clip, faces, (256, 256))
    uv_img = interpolate(uv, frags, faces)                 # [B, H, W, 2]
    albedo = texture(tex, uv_img)                          # [B, H, W, 3]
    n_img = interpolate(vertex_normals(verts, faces), frags, faces)
    rgb = lambert(albedo, n_img, sh_coeffs) * frags.mask[..., None]
"""

from avatarsdk.render.camera import Camera, gl_matrices, intrinsics_to_projection, look_at, perspective, transform_points
from avatarsdk.render.head import HeadRender, Layers, Material, render_head, render_layers
from avatarsdk.render.raster import Fragments, interpolate, rasterize, texture
from avatarsdk.render.shading import lambert, sh_basis, sh_shading, vertex_normals

__all__ = [
    "Camera",
    "Fragments",
    "HeadRender",
    "Layers",
    "Material",
    "gl_matrices",
    "interpolate",
    "intrinsics_to_projection",
    "lambert",
    "look_at",
    "perspective",
    "rasterize",
    "render_head",
    "render_layers",
    "sh_basis",
    "sh_shading",
    "texture",
    "transform_points",
    "vertex_normals",
]
