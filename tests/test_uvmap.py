"""Mesh <-> UV position map round trip (the paper's geometry representation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError
from avatarsdk.rigs import PARTS, load_ict
from avatarsdk.uvmap import dilate, mesh_to_offset_map, offset_map_to_mesh, rasterize_uv, skin_vertex_ids


@pytest.fixture(scope="module")
def model():
    return load_ict()


def test_round_trip_error_on_face_is_sub_millimetre(model):
    t = model.topology
    rng = np.random.default_rng(0)
    verts = np.stack([model.morph(rng.standard_normal(100)) for _ in range(3)])
    off, mask = mesh_to_offset_map(verts, t, model.neutral, size=256)
    assert off.shape == (3, 256, 256, 3) and mask.shape == (3, 256, 256)
    assert 0.5 < mask[0].float().mean() < 0.7  # charts cover most of the square
    back = offset_map_to_mesh(off, t, model.neutral, model.identity_basis).numpy()
    err_mm = np.linalg.norm(back - verts, axis=-1) * 1000
    face = err_mm[:, slice(*PARTS["face"])]
    assert face.mean() < 0.15 and np.percentile(face, 99) < 1.0 and face.max() < 3.0
    assert err_mm[:, slice(*PARTS["head_neck"])].mean() < 0.3
    assert err_mm.mean() < 0.2


def test_mean_head_maps_to_zero(model):
    off, _ = mesh_to_offset_map(model.neutral, model.topology, model.neutral, size=64)
    assert off.abs().max() < 1e-6


def test_linear_field_is_exact_at_chart_borders():
    """A field linear per triangle is reproduced exactly by bilinear sampling, also at the border."""
    uv = torch.tensor([[[0.2, 0.2], [0.8, 0.25], [0.3, 0.7]]], dtype=torch.float64)
    f = lambda p: 3 * p[..., 0] - 2 * p[..., 1] + 0.5  # noqa: E731
    vals, mask = rasterize_uv(f(uv)[None, ..., None], uv, 32)
    full = dilate(vals, mask | (vals.abs().sum(-1) > 0), 2)
    from avatarsdk.render import texture
    s = texture(full, uv.view(1, 3, 1, 2))[0, :, 0, 0]
    torch.testing.assert_close(s, f(uv[0]), atol=1e-9, rtol=0)


def test_offset_map_to_mesh_is_differentiable(model):
    off, _ = mesh_to_offset_map(model.neutral, model.topology, model.neutral, size=64)
    off = off.clone().requires_grad_(True)
    v = offset_map_to_mesh(off, model.topology, model.neutral, model.identity_basis)
    v[0, 4841, 2].backward()  # nose tip depth
    assert off.grad.abs().sum() > 0


def test_skin_vertices(model):
    ids = skin_vertex_ids(model.topology)
    assert ids.max() < PARTS["mouth_socket"][0]  # face and head+neck only: sockets follow the skin
    assert len(ids) > 10500


def test_bad_vertices(model):
    with pytest.raises(InputError):
        mesh_to_offset_map(model.neutral[:10], model.topology, model.neutral)


def test_offset_map_to_mesh_fit_equals_lstsq(model):
    """The identity fit through the cached pseudo-inverse equals torch.linalg.lstsq to rounding."""
    t = model.topology
    off = torch.randn(2, 64, 64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3e-3
    got = offset_map_to_mesh(off, t, model.neutral, model.identity_basis)
    ids = torch.from_numpy(skin_vertex_ids(t)).long()
    from avatarsdk.uvmap import sample_at_vertices

    skin = sample_at_vertices(off, t)
    basis = torch.from_numpy(model.identity_basis).double()
    a = basis[:, ids].reshape(basis.shape[0], -1).T
    coeffs = torch.linalg.lstsq(a[None].expand(2, -1, -1), skin.reshape(2, -1, 1)).solution[..., 0]
    want = torch.einsum("bk,kvc->bvc", coeffs, basis).index_copy(1, ids, skin) + torch.from_numpy(model.neutral).double()
    assert (got - want).abs().max() < 1e-12  # metres
    # float32 maps (training) stay within float32 rounding of the float64 fit
    got32 = offset_map_to_mesh(off.float(), t, model.neutral, model.identity_basis)
    assert got32.dtype == torch.float32 and (got32.double() - want).abs().max() < 1e-6


def test_uv_raster_tables_come_back_equal_from_the_disk_cache(model, tmp_path, monkeypatch):
    """rasterize_uv's texel triangles: computed once, then read from the cache, with equal results."""
    import avatarsdk.uvmap as uvmap

    monkeypatch.setenv("AVATARSDK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(uvmap, "_TEXEL_MEMO", {})
    t = model.topology
    tris = np.nonzero(t.tri_material == t.materials.index("skin"))[0]
    cuv = torch.from_numpy(t.corner_uv[tris].astype(np.float64))
    vals = torch.from_numpy(np.random.default_rng(0).standard_normal((1, len(tris), 3, 2)))
    fresh = rasterize_uv(vals, cuv, 64)
    assert len(list(tmp_path.glob("uv-raster-*.npz"))) == 1
    monkeypatch.setattr(uvmap, "_TEXEL_MEMO", {})  # a new process: read from disk
    cached = rasterize_uv(vals, cuv, 64)
    remembered = rasterize_uv(vals, cuv, 64)
    for a, b, c in zip(fresh, cached, remembered):
        assert torch.equal(a, b) and torch.equal(a, c)
    other = rasterize_uv(vals, cuv, 64, extrapolate=0.0)  # another setting: another table
    assert len(list(tmp_path.glob("uv-raster-*.npz"))) == 2 and not torch.equal(other[0], fresh[0])


def test_cached_skin_atlas_and_mirror_map_equal_fresh_ones(model, tmp_path, monkeypatch):
    from avatarsdk import albedo, paint

    monkeypatch.setenv("AVATARSDK_CACHE_DIR", str(tmp_path))
    paint._atlas.cache_clear()
    albedo.mirror_uv_map.cache_clear()
    try:
        first, fresh = paint._atlas(64), paint._compute_atlas(64)
        paint._atlas.cache_clear()
        again = paint._atlas(64)  # from disk
        for a in (first, again):
            assert a.size == 64 and list(a.fields) == list(fresh.fields)
            for name in paint._ATLAS_ARRAYS:
                assert np.array_equal(getattr(a, name), getattr(fresh, name)), name
                assert getattr(a, name).dtype == getattr(fresh, name).dtype, name
            assert all(np.array_equal(a.fields[k], fresh.fields[k]) for k in fresh.fields)
        m1 = albedo.mirror_uv_map(model, 64)
        albedo.mirror_uv_map.cache_clear()
        m2 = albedo.mirror_uv_map(model, 64)
        assert torch.equal(m1, m2) and torch.equal(m1, albedo._mirror_uv_map(model, 64))
        assert {p.name.split("-")[0] for p in tmp_path.glob("*.npz")} >= {"atlas64", "mirror"}
    finally:
        paint._atlas.cache_clear()
        albedo.mirror_uv_map.cache_clear()
