"""Skin PBR maps (avatarsdk.pbr) and their glTF encoding (tangents, material textures)."""

from __future__ import annotations

import numpy as np
import pygltflib as gl
import pytest

from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf import to_glb, vertex_tangents
from avatarsdk.materials import default_textures, plain_skin_albedo
from avatarsdk.pbr import (
    MICRO_WITH_RELIEF, NORMAL_KEY, ORM_KEY, ROUGHNESS, _ao_reference, _fibonacci_sphere, ambient_occlusion, decode_normals,
    ReliefOptions, encode_normals, normal_map, photo_relief, relief_normals, roughness_map, skin_maps, skin_normal,
)
from avatarsdk.rigs import LANDMARKS68, load_ict
from avatarsdk.paint import texel_fields
from avatarsdk.datatypes import Avatar


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def ao(model):
    return ambient_occlusion(model.neutral, model.topology, directions=16, resolution=128)


def test_ao_matches_ray_casting_oracle(model, ao):
    """The depth-map AO against Moller-Trumbore rays cast at every triangle, on a sample of skin vertices."""
    topo = model.topology
    from avatarsdk.render.shading import vertex_normals
    import torch

    v = np.asarray(model.neutral, np.float64)
    n = vertex_normals(torch.from_numpy(v)[None].float(), torch.from_numpy(topo.triangles.astype(np.int64)))[0].numpy()
    occ = np.isin(topo.tri_material, [topo.materials.index(m) for m in ("skin", "eyes", "teeth")])
    lm = np.asarray(LANDMARKS68)
    sample = np.unique(np.concatenate([lm[[2, 8, 14, 19, 24, 27, 30, 31, 33, 35, 36, 45, 48, 51, 54, 57]],
                                       np.random.default_rng(0).choice(lm, 8, replace=False)]))
    ref = _ao_reference(v, topo.triangles[occ], n[sample].astype(np.float64), _fibonacci_sphere(16), v[sample])
    got = ao[sample]
    assert np.abs(got - ref).mean() < 0.08, np.c_[got, ref]
    assert np.corrcoef(got, ref)[0, 1] > 0.8
    with pytest.raises(InputError):
        ambient_occlusion(model.neutral[:100], topo)


def test_ao_darkens_creases(model, ao):
    lm = np.asarray(LANDMARKS68)
    cheek, forehead = ao[lm[2]], ao[lm[27]]  # outer cheek, nose bridge
    corner = min(ao[lm[48]], ao[lm[54]])  # mouth corners
    inner_eye = min(ao[lm[39]], ao[lm[42]])  # inner eye corners
    assert 0.0 <= ao.min() and ao.max() <= 1.0
    assert corner < cheek - 0.05 and inner_eye < forehead - 0.05


def test_roughness_by_region():
    r = roughness_map(256)
    t = texel_fields(256)
    flat = r.reshape(-1)[t.index]
    f = t.fields
    lips = flat[f["lips"] > 0.5]
    cheek = flat[(f["cheek"] > 0.5) & (f["nose"] < 0.1) & (f["forehead"] < 0.2)]
    nose = flat[f["nose"] > 0.8]
    assert abs(np.median(lips) - ROUGHNESS["lips"]) < 0.03
    assert np.median(nose) < np.median(cheek) - 0.05  # T-zone shinier
    assert np.median(flat[~t.face & (f["mouth_socket"] == 0) & (f["eye_socket"] == 0)]) > np.median(cheek)
    assert r.min() >= ROUGHNESS["wet"] - 1e-6 and r.max() <= ROUGHNESS["scalp"] + 1e-6


def test_normal_map_unit_seeded_and_near_flat():
    a, b, c = normal_map(128, 1), normal_map(128, 1), normal_map(128, 2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1, atol=1e-5)
    tilt = np.degrees(np.arccos(np.clip(a[..., 2], -1, 1))).reshape(-1)[texel_fields(128).index]
    assert 0.1 < tilt.mean() < 15 and tilt.max() < 60  # at 128 px the pores fade out: lumps and creases remain
    with pytest.raises(InputError):
        normal_map(100, 0)


def test_skin_maps_shapes_and_packing(model):
    maps = skin_maps(model.neutral, model.topology, size=128, seed=0)
    n, orm = maps[NORMAL_KEY], maps[ORM_KEY]
    assert n.shape == (128, 128, 3) and orm.shape == (128, 128, 3) and n.dtype == orm.dtype == np.uint8
    assert (orm[..., 2] == 0).all()  # metallic 0
    ao = orm[..., 0]
    assert ao.min() < 100 and ao.max() == 255 and np.median(ao) > 180  # sockets dark, open skin at 1
    assert np.abs(decode_normals(n)[..., 2]).min() > 0.5
    again = skin_maps(model.neutral, model.topology, size=128, seed=0)  # cached AO, same maps
    np.testing.assert_array_equal(again[ORM_KEY], orm)


def test_tangents_follow_uv_on_a_plane():
    # A quad in the z = 0 plane facing +z; u grows with x, v (down) grows with -y.
    p = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
    tri = np.array([[0, 1, 2], [0, 2, 3]])
    nrm = np.tile([0.0, 0.0, 1.0], (4, 1))
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float64)
    t = vertex_tangents(p, nrm, uv, tri)
    np.testing.assert_allclose(t, np.tile([1.0, 0, 0, 1.0], (4, 1)), atol=1e-6)
    # Mirrored in u: tangent flips and the frame turns left-handed.
    t = vertex_tangents(p, nrm, uv * [-1, 1] + [1, 0], tri)
    np.testing.assert_allclose(t, np.tile([-1.0, 0, 0, -1.0], (4, 1)), atol=1e-6)


def test_tangents_unit_and_orthogonal_on_the_head(model):
    from avatarsdk.exporters.gltf import primitives, vertex_normals

    prim = next(p for p in primitives(model.topology) if p.material == "skin")
    n = vertex_normals(model.neutral, model.topology.triangles)[prim.vertex_map]
    t = vertex_tangents(model.neutral[prim.vertex_map], n, prim.uv, prim.indices)
    np.testing.assert_allclose(np.linalg.norm(t[:, :3], axis=1), 1, atol=1e-5)
    assert np.abs((t[:, :3] * n).sum(1)).max() < 1e-4
    assert set(np.unique(t[:, 3])) <= {-1.0, 1.0}


def test_glb_material_carries_the_maps(model):
    maps = skin_maps(model.neutral, model.topology, size=128, seed=0)
    textures = {"skin": plain_skin_albedo((0.8, 0.6, 0.5), size=128), **default_textures(), **maps}
    avatar = Avatar(vertices=model.neutral, topology=model.topology, textures=textures, rig=model.rig(model.neutral))
    g = gl.GLTF2.load_from_bytes(to_glb(avatar, blendshapes="none"))
    mats = {m.name: m for m in g.materials}
    skin = mats["skin"]
    names = [g.textures[i].name for i in (skin.pbrMetallicRoughness.baseColorTexture.index, skin.normalTexture.index,
                                          skin.pbrMetallicRoughness.metallicRoughnessTexture.index,
                                          skin.occlusionTexture.index)]
    assert names == ["skin", NORMAL_KEY, ORM_KEY, ORM_KEY]
    assert mats["eyes"].normalTexture is None
    for prim in g.meshes[0].primitives:
        has = prim.attributes.TANGENT is not None
        assert has == (g.materials[prim.material].name == "skin")


def test_preview_shades_with_the_maps(model):
    from avatarsdk.exporters.gltf_read import load_glb
    from avatarsdk.preview import render_views

    maps = skin_maps(model.neutral, model.topology, size=128, seed=0)
    base = {"skin": plain_skin_albedo((0.8, 0.6, 0.5), size=128), **default_textures()}
    rig = model.rig(model.neutral)
    plain = Avatar(vertices=model.neutral, topology=model.topology, textures=base, rig=rig)
    mapped = Avatar(vertices=model.neutral, topology=model.topology, textures={**base, **maps}, rig=rig)
    mesh = load_glb(to_glb(mapped, blendshapes="none"))
    skin = next(p for p in mesh.primitives if p.material == "skin")
    assert skin.normal_texture is not None and skin.occlusion is not None and skin.tangents is not None
    a = render_views(mesh, views=((40.0, 0.0),), size=128).astype(int)
    b = render_views(load_glb(to_glb(plain, blendshapes="none")), views=((40.0, 0.0),), size=128).astype(int)
    diff = a.sum(-1) - b.sum(-1)
    assert np.isfinite(a).all() and np.abs(diff).max() > 30  # the occlusion and relief show
    assert diff.mean() < 0  # occlusion only darkens; the relief averages out


def test_photo_relief_recovers_a_bump_under_a_known_light(model):
    """Bumps the mesh lacks, rendered under a known SH light and unwrapped against the bump-free mesh: the relief
    read from the de-lit residual brings the shading normals (in the exporter's tangent frame) closer to the bumped
    surface's, and stays flat where the photo shows nothing."""
    import torch

    from avatarsdk.albedo import unwrap
    from avatarsdk.colour import linear_to_srgb
    from avatarsdk.fit import FitResult
    from avatarsdk.render.shading import vertex_normals
    from avatarsdk.scene import light_sh, portrait_camera, render_photo
    from _scripts import load_script

    bench = load_script("normal_map_error", "benchmarks")
    topo = model.topology
    base = np.asarray(model.neutral, np.float64)
    n = vertex_normals(torch.from_numpy(base), torch.from_numpy(topo.triangles.astype(np.int64))).numpy()
    lm = np.asarray(LANDMARKS68)
    bumps = ((0.5 * (base[lm[3]] + base[lm[31]]), 0.015, 2.5e-3),  # left cheek, a bulge
             (0.5 * (base[lm[13]] + base[lm[35]]), 0.012, -2.0e-3),  # right cheek, a dent
             (base[lm[27]] + [0.0, 0.045, 0.0], 0.018, 2.0e-3))  # forehead
    d = np.zeros_like(base)
    for c, sigma, amp in bumps:
        k = np.argmin(((base - c) ** 2).sum(1))
        d += amp * np.exp(-((base - base[k]) ** 2).sum(1) / (2 * sigma**2))[:, None] * n[k]
    bumped = base + d
    cam = portrait_camera(512)
    sh = light_sh("soft", cam.rotation)
    textures = {"skin": plain_skin_albedo((0.78, 0.58, 0.48), size=256), **default_textures()}
    linear, coverage = render_photo(bumped, textures, cam, sh, supersample=1)
    photo = np.round(linear_to_srgb(torch.from_numpy(linear)).numpy().clip(0, 1) * 255).astype(np.uint8)
    fit = FitResult(identity=np.zeros(model.identity_basis.shape[0], np.float32),
                    expression=np.zeros(model.expression_basis.shape[0], np.float32), camera=cam,
                    light=np.asarray(sh, np.float32), albedo_lowres=np.zeros((4, 4, 3), np.float32))
    albedo, conf = unwrap(model, fit, photo, coverage, size=512)
    slopes = photo_relief(base, topo, sh, albedo.numpy(), conf.numpy())
    assert slopes.shape == (256, 256, 2) and np.isfinite(slopes).all()
    # No texel tilts more than the cap (albedo edges read as relief gave the benchmark's worst errors).
    cap = np.tan(np.radians(ReliefOptions().max_tilt_deg))
    assert ReliefOptions().max_tilt_deg <= 4 and np.linalg.norm(slopes, axis=-1).max() <= cap * (1 + 1e-5)
    truth = bench.shading_normals(bumped, topo, 512, None)
    mesh = bench.angle_deg(bench.shading_normals(base, topo, 512, None), truth)

    def error(s):
        return bench.angle_deg(bench.shading_normals(base, topo, 512, encode_normals(relief_normals(s, 512))), truth)

    # 8-bit maps cannot hold a flat normal (127.5): a flat map is the floor the relief is compared with.
    flat8 = error(np.zeros_like(slopes))
    assert error(slopes) < 0.9 * flat8, (flat8, error(slopes))
    # Without the default shrinkage (meant for real skin, whose residual is mostly albedo) it beats the mesh too.
    full = photo_relief(base, topo, sh, albedo.numpy(), conf.numpy(), options=ReliefOptions(gain=1.0))
    assert error(full) < 0.97 * mesh, (mesh, error(full))
    # Nothing is invented where the photo saw nothing (the back of the head) or where nothing differs.
    t = texel_fields(256)
    back = np.zeros(256 * 256, bool)
    back[t.index[~t.face]] = True
    assert np.abs(slopes.reshape(-1, 2)[back]).max() == 0
    same = photo_relief(base, topo, sh, np.full((512, 512, 3), 0.4, np.float32), conf.numpy())
    assert np.abs(same).max() < 1e-6
    with pytest.raises(InputError):
        photo_relief(base, topo, sh, albedo.numpy()[:100], conf.numpy())


def test_exported_map_writes_the_micro_layer_at_reduced_height_under_a_photo_relief():
    """With a photo relief, the invented pores and creases go into the exported map at MICRO_WITH_RELIEF of the
    procedural layer's height (they add error wherever the real skin differs); without one, at full height."""
    size, seed = 512, 3
    t = texel_fields(size)
    inside = t.index[t.face]
    full = normal_map(size, seed, lumps=False).reshape(-1, 3)[inside]
    with_relief = decode_normals(skin_normal(size, seed, np.zeros((256, 256, 2), np.float32))).reshape(-1, 3)[inside]
    s_full = full[:, :2] / full[:, 2:]
    s_map = with_relief[:, :2] / with_relief[:, 2:]
    strong = np.linalg.norm(s_full, axis=1) > 0.02  # away from the 8-bit floor
    ratio = (s_map[strong] * s_full[strong]).sum() / (s_full[strong] ** 2).sum()
    assert 0 < MICRO_WITH_RELIEF < 1 and abs(ratio - MICRO_WITH_RELIEF) < 0.05, ratio
    without = decode_normals(skin_normal(size, seed)).reshape(-1, 3)[inside]
    lumped = normal_map(size, seed).reshape(-1, 3)[inside]
    assert np.abs(without - lumped).max() < 0.01  # no relief: the procedural layer at full height, lumps included
