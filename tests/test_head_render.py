"""render_head with materials and the layered compositor render_layers (avatarsdk/render/head.py)."""

from __future__ import annotations

import math

import pytest
import torch

from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.render import look_at, perspective
from avatarsdk.render.head import Material, render_head, render_layers

AMBIENT = torch.zeros(9, 3)
AMBIENT[0] = 1.0  # shading == 1 everywhere


def _quad(x0, x1, y0, y1, z):
    """Two counter-clockwise triangles in NDC (identity clip matrix) with UVs over the quad."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=torch.float32)
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]]), uv


def _scene(quads):
    """Concatenate quads: vertices, faces, corner_uv, corner_faces, tri_material."""
    verts, faces, uvs, mats = [], [], [], []
    for i, (v, f, uv) in enumerate(quads):
        faces.append(f + 4 * i)
        verts.append(v)
        uvs.append(uv)
        mats.append(torch.full((2,), i))
    faces = torch.cat(faces)
    return torch.cat(verts), faces, torch.cat(uvs), faces.clone(), torch.cat(mats)


def test_layers_blend_mask_and_coverage():
    # Opaque background quad, a nearer half-transparent quad on the left, a nearer
    # alpha-tested quad on the right whose texture is transparent at its left edge.
    v, f, cuv, cf, tm = _scene([_quad(-1, 1, -1, 1, 0.5), _quad(-1, 0, -1, 1, 0.0), _quad(0, 1, -1, 1, -0.5)])
    mask_tex = torch.tensor([[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])  # alpha 0 | 1 along u
    materials = [Material(colour=(0.8, 0.2, 0.1, 1.0)),
                 Material(colour=(0.0, 0.0, 1.0, 0.25), alpha_mode="BLEND"),
                 Material(colour=(0.0, 1.0, 0.0, 1.0), texture=mask_tex, alpha_mode="MASK")]
    bg = torch.full((8, 8, 3), 0.3)
    out = render_layers(v, f, torch.eye(4), bg, corner_uv=cuv, corner_faces=cf, materials=materials,
                        tri_material=tm, light=AMBIENT, coverage_of=0)
    red, blue, green = torch.tensor([0.8, 0.2, 0.1]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(out.image[:, 0], (0.75 * red + 0.25 * blue).expand(8, 3))
    torch.testing.assert_close(out.image[:, 4], red.expand(8, 3))  # u = 1/16: alpha 0, cut
    torch.testing.assert_close(out.image[:, 7], green.expand(8, 3))  # u = 15/16: alpha 1, drawn
    torch.testing.assert_close(out.coverage[:, 0], torch.full((8,), 0.75))
    assert out.coverage[:, 4].eq(1).all() and out.coverage[:, 7].eq(0).all()
    # The blended quad behind an opaque one is hidden by the depth test.
    v2 = v.clone()
    v2[4:8, 2] = 0.9
    out2 = render_layers(v2, f, torch.eye(4), bg, corner_uv=cuv, corner_faces=cf, materials=materials,
                         tri_material=tm, light=AMBIENT)
    torch.testing.assert_close(out2.image[:, 0], red.expand(8, 3))
    assert out2.coverage is None


def _grid(n=12):
    """A bumpy height field facing +z, its faces and corner UVs."""
    ys, xs = torch.meshgrid(torch.linspace(-0.1, 0.1, n), torch.linspace(-0.1, 0.1, n), indexing="ij")
    z = 0.02 * torch.sin(xs * 30) * torch.cos(ys * 25)
    verts = torch.stack([xs, ys, z], -1).reshape(-1, 3)
    idx = torch.arange(n * n).view(n, n)
    a, b, c, d = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, 1:].reshape(-1), idx[1:, :-1].reshape(-1)
    faces = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    uv = torch.stack([(xs + 0.1) / 0.2, 1 - (ys + 0.1) / 0.2], -1).reshape(-1, 2)
    return verts, faces, uv


def test_materials_path_matches_the_plain_path():
    verts, faces, uv = _grid()
    matrix = perspective(math.radians(30), 1.0, 0.1, 10.0) @ look_at(torch.tensor([0.05, 0.1, 0.5]),
                                                                      torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
    light = torch.randn(9, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    light[0] = 0.8
    tex = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(1))
    plain = render_head(verts, faces, matrix, (48, 48), corner_uv=uv, corner_faces=faces, albedo=tex, light=light,
                        normal_eps=1e-8)
    mat = render_head(verts, faces, matrix, (48, 48), corner_uv=uv, corner_faces=faces, light=light,
                      materials=[Material(texture=tex)], tri_material=torch.zeros(len(faces), dtype=torch.int64),
                      normal_eps=1e-8)
    m = plain.mask[0]
    assert m.sum() > 500 and torch.equal(m, mat.mask[0])
    torch.testing.assert_close(mat.albedo[0][m][:, :3], srgb_to_linear(plain.albedo[0][m]))
    assert mat.albedo[0][m][:, 3].eq(1).all() and mat.albedo[0][~m].eq(0).all()
    torch.testing.assert_close(mat.shading[0][m], plain.shading[0][m])
    # A flat normal map changes nothing; occlusion scales the shading; the eye flips back faces.
    tangents = torch.tensor([[1.0, 0.0, 0.0, 1.0]]).expand(len(verts), 4)
    flat = torch.tensor([0.0, 0.0, 1.0]).expand(4, 4, 3)
    half = torch.full((4, 4, 1), 0.5)
    mapped = render_head(verts, faces, matrix, (48, 48), corner_uv=uv, corner_faces=faces, light=light,
                         materials=[Material(texture=tex, normal_map=flat, occlusion=half)], tangents=tangents,
                         tri_material=torch.zeros(len(faces), dtype=torch.int64), normal_eps=1e-8)
    torch.testing.assert_close(mapped.shading[0][m], 0.5 * plain.shading[0][m], atol=1e-5, rtol=1e-5)
    flipped = render_head(verts, faces[:, [0, 2, 1]], matrix, (48, 48), corner_uv=uv, corner_faces=faces[:, [0, 2, 1]],
                          light=light, materials=[Material(texture=tex)], cull_backfaces=False,
                          eye=torch.tensor([0.05, 0.1, 0.5]), tri_material=torch.zeros(len(faces), dtype=torch.int64),
                          normal_eps=1e-8)
    torch.testing.assert_close(flipped.shading[0][m], plain.shading[0][m], atol=1e-5, rtol=1e-5)


def test_bad_material_calls():
    verts, faces, uv = _grid(4)
    kw = dict(corner_uv=uv, corner_faces=faces, light=AMBIENT)
    zeros = torch.zeros(len(faces), dtype=torch.int64)
    with pytest.raises(InputError, match="exactly one"):
        render_head(verts, faces, torch.eye(4), (8, 8), albedo=torch.ones(2, 2, 3), materials=[Material()], **kw)
    with pytest.raises(InputError, match="tri_material"):
        render_head(verts, faces, torch.eye(4), (8, 8), materials=[Material()], **kw)
    with pytest.raises(InputError, match="indexes 1 materials"):
        render_head(verts, faces, torch.eye(4), (8, 8), materials=[Material()], tri_material=zeros + 1, **kw)
    with pytest.raises(InputError, match="tangents"):
        render_head(verts, faces, torch.eye(4), (8, 8), materials=[Material(normal_map=torch.ones(2, 2, 3))],
                    tri_material=zeros, **kw)
    with pytest.raises(InputError, match="alpha"):
        render_layers(verts, faces, torch.eye(4), torch.zeros(8, 8, 3), materials=[Material(alpha_mode="ADD")],
                      tri_material=zeros, **kw)
    with pytest.raises(InputError, match="go with materials"):
        render_head(verts, faces, torch.eye(4), (8, 8), albedo=torch.ones(2, 2, 3), eye=torch.zeros(3), **kw)
