"""Levels of detail: tables shared by every avatar, per-LOD glTF and the FBX LodGroup, `export --lods`.

The ICT tables are computed once per cache folder (about 15 s on 2 cores) and
then read from ``lod-<checksum>.npz``.
"""

from __future__ import annotations

import json

import numpy as np
import pygltflib as gl
import pytest
from test_export import export, needs_bpy, npc  # noqa: F401 (npc is a fixture)
from test_gltf import assert_clean, validate

from avatarsdk.errors import DataError, ExportError
from avatarsdk.exporters.fbx import inspect_fbx, to_fbx
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.pipeline import random_avatar
from avatarsdk.preview import render_views
from avatarsdk.rigs import load_ict
from avatarsdk.rigs.lod import (
    LOD_BUDGETS,
    Lod,
    _load,
    _save,
    build_lods,
    ict_lods,
    ict_poses,
    lod_avatar,
    lod_topology,
    lods_for,
)
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.datatypes import Topology


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def lods():
    return ict_lods()


@pytest.fixture(scope="module")
def avatar():
    return random_avatar(4, texture_size=64)


def _areas(x: np.ndarray, tris: np.ndarray) -> np.ndarray:
    p = x[tris].astype(np.float64)
    return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------

def test_triangle_counts(model, lods):
    topo = model.topology
    assert [lod.level for lod in lods] == [0, 1, 2] == list(range(len(LOD_BUDGETS)))
    full = len(topo.triangles)
    assert lods[0].num_triangles == full and lods[0].num_vertices == topo.num_vertices
    np.testing.assert_array_equal(lods[0].triangles, topo.triangles)
    assert 0.45 <= lods[1].num_triangles / full <= 0.55, lods[1].num_triangles
    assert 0.18 <= lods[2].num_triangles / full <= 0.26, lods[2].num_triangles
    assert lods[0].num_vertices > lods[1].num_vertices > lods[2].num_vertices


def test_every_lod_vertex_is_an_original_vertex(model, lods):
    for lod in lods:
        ids = np.asarray(lod.vertex_ids)
        assert ids.dtype == np.int32 and (np.diff(ids) > 0).all()  # ascending, unique
        assert 0 <= ids[0] and ids[-1] < model.topology.num_vertices
        # Every kept vertex is used, every triangle index is in range.
        assert np.array_equal(np.unique(lod.triangles), np.arange(len(ids)))
        # Nested levels: a coarser level keeps a subset of the finer one's vertices.
        if lod.level:
            assert np.isin(ids, lods[lod.level - 1].vertex_ids).all()
    # Landmarks and the small see-through parts are kept whole.
    for lod in lods:
        assert np.isin(model.topology.landmarks68, lod.vertex_ids).all()
        for part in ("lacrimal_fluid", "eye_blend", "eye_occlusion"):
            a, b = model.topology.parts[part]
            assert np.isin(np.arange(a, b), lod.vertex_ids).all(), part


def test_no_degenerate_or_duplicate_triangles(model, lods):
    for lod in lods:
        t = np.asarray(lod.triangles)
        assert ((t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])).all()
        assert len(np.unique(np.sort(t, 1), axis=0)) == len(t)
        x = np.asarray(model.neutral)[lod.vertex_ids]
        # ICT itself has tiny triangles (nostrils, lashes): no LOD triangle is smaller than ICT's smallest.
        assert _areas(x, t).min() >= 0.5 * _areas(np.asarray(model.neutral), model.topology.triangles).min()
        # Edge-manifold where ICT is: no edge gets more than two triangles.
        e = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), 1)
        _, counts = np.unique(e, axis=0, return_counts=True)
        assert counts.max() <= 2


def test_uvs_and_materials_come_from_the_originals(model, lods):
    topo = model.topology
    orig = set(zip(np.asarray(topo.triangles).ravel().tolist(), np.repeat(topo.tri_material, 3).tolist(),
                   map(tuple, np.asarray(topo.corner_uv).reshape(-1, 2).tolist())))
    for lod in lods[1:]:
        assert lod.corner_uv.shape == (lod.num_triangles, 3, 2) and np.isfinite(lod.corner_uv).all()
        ids = np.asarray(lod.vertex_ids)[lod.triangles]
        got = set(zip(ids.ravel().tolist(), np.repeat(lod.tri_material, 3).tolist(),
                      map(tuple, np.asarray(lod.corner_uv).reshape(-1, 2).tolist())))
        assert got <= orig  # every (vertex, material, uv) corner exists in ICT
        # No triangle is flipped in UV space: per material, the share of
        # negatively oriented UV triangles does not grow.
        for m in range(len(topo.materials)):
            def flipped(uv, sel):
                q = uv[sel].astype(np.float64)
                s = (q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1]) - (q[:, 2, 0] - q[:, 0, 0]) * (q[:, 1, 1] - q[:, 0, 1])
                return int((s < 0).sum()), int((s > 0).sum())
            o_neg, o_pos = flipped(np.asarray(topo.corner_uv), topo.tri_material == m)
            n_neg, n_pos = flipped(np.asarray(lod.corner_uv), lod.tri_material == m)
            minority_before = min(o_neg, o_pos) / max(o_neg + o_pos, 1)
            minority_after = min(n_neg, n_pos) / max(n_neg + n_pos, 1)
            assert minority_after <= minority_before + 0.01, topo.materials[m]


def test_surface_stays_close(model, lods):
    """Every original vertex lies near the LOD surface (its distance to the nearest kept vertex is small)."""
    from scipy.spatial import cKDTree

    x = np.asarray(model.neutral)
    for lod, limit in ((lods[1], 0.006), (lods[2], 0.012)):
        d, _ = cKDTree(x[lod.vertex_ids]).query(x)
        assert np.percentile(d, 99) < limit, (lod.level, np.percentile(d, 99))


def test_deterministic_and_cached(model, lods, tmp_path):
    fresh = build_lods(model.topology, ict_poses(model))
    for a, b in zip(fresh, lods):
        for f in ("vertex_ids", "triangles", "corner_uv", "tri_material"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    path = tmp_path / "lod.npz"
    _save(path, lods, "abc")
    back = _load(path, "abc")
    assert back is not None and all(np.array_equal(x.triangles, y.triangles) for x, y in zip(back, lods))
    assert _load(path, "other") is None  # a different topology checksum is a miss
    # A memoised topology never calls the pose function again.
    assert lods_for(model.topology, lambda: pytest.fail("recomputed")) is ict_lods()


def test_build_lods_on_a_flat_grid():
    """A flat square grid reduces to a flat square: no holes, no overlaps, the outline kept."""
    n = 12
    xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1)
    quads = [(i * n + j, i * n + j + 1, (i + 1) * n + j + 1, (i + 1) * n + j) for i in range(n - 1) for j in range(n - 1)]
    tris = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int32)
    topo = Topology(num_vertices=n * n, triangles=tris, corner_uv=verts[tris][:, :, :2].astype(np.float32),
                    tri_material=np.zeros(len(tris), np.int8), materials=("skin",), parts={"face": (0, n * n)},
                    landmarks68=np.zeros(0, np.int32), head_uv=verts[:, :2].astype(np.float32))
    levels = build_lods(topo, verts[None], budgets=({}, {"skin": 0.5}, {"skin": 0.2}))
    for lod in levels[1:]:
        area = _areas(verts[lod.vertex_ids], lod.triangles)
        assert lod.num_triangles <= 0.55 * len(tris) if lod.level == 1 else lod.num_triangles <= 0.25 * len(tris)
        assert area.sum() == pytest.approx(1.0, abs=1e-9)  # the same square, covered once
        p = verts[lod.vertex_ids][lod.triangles]
        normal_z = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])[:, 2]
        assert (normal_z > 0).all()  # no flipped triangle
        for corner in (0, n - 1, n * n - n, n * n - 1):
            assert corner in lod.vertex_ids
    with pytest.raises(DataError, match="poses"):
        build_lods(topo, verts[None, :5])


def test_lod_topology_and_avatar(avatar, lods):
    for lod in lods:
        a = lod_avatar(avatar, lod)
        ids = np.asarray(lod.vertex_ids)
        np.testing.assert_array_equal(a.vertices, np.asarray(avatar.vertices)[ids])
        np.testing.assert_array_equal(a.rig.blendshapes, np.asarray(avatar.rig.blendshapes)[:, ids])
        np.testing.assert_array_equal(a.rig.skin_weights, np.asarray(avatar.rig.skin_weights)[ids])
        assert a.rig.blendshape_names == tuple(ARKIT_NAMES) and a.meta["lod"] == lod.level
        t = a.topology
        np.testing.assert_array_equal(ids[t.landmarks68], avatar.topology.landmarks68)
        for name, (s, e) in t.parts.items():  # parts stay contiguous ranges of the kept ids
            a0, b0 = avatar.topology.parts[name]
            assert ((ids[s:e] >= a0) & (ids[s:e] < b0)).all() and e - s == int(((ids >= a0) & (ids < b0)).sum())
    bad = Lod(1, np.array([0, 1, 10**6], np.int32), np.array([[0, 1, 2]], np.int32),
              np.zeros((1, 3, 2), np.float32), np.zeros(1, np.int8))
    with pytest.raises(ExportError, match="indexes"):
        lod_topology(avatar.topology, bad)
    drop = Lod(1, np.array([0, 1, 2], np.int32), np.array([[0, 1, 2]], np.int32),
               np.zeros((1, 3, 2), np.float32), np.zeros(1, np.int8))
    with pytest.raises(ExportError, match="landmark"):
        lod_topology(avatar.topology, drop)


# ---------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lod_glbs(avatar, lods):
    return [to_glb(lod_avatar(avatar, lod)) for lod in lods]


def test_each_lod_glb_is_valid_with_all_morph_targets(lods, lod_glbs):
    for lod, data in zip(lods, lod_glbs):
        assert_clean(validate(data))
        g = gl.GLTF2.load_from_bytes(data)
        (mesh,) = g.meshes
        assert mesh.extras["targetNames"] == list(ARKIT_NAMES), lod.level
        assert all(len(p.targets) == 52 for p in mesh.primitives)
        assert all((p.attributes.TEXCOORD_0 is not None) == (g.materials[p.material].name != "eye_wet")
                   for p in mesh.primitives)  # (the untextured eye_wet film has no UVs)
        tris = sum(g.accessors[p.indices].count // 3 for p in mesh.primitives)
        assert tris == lod.num_triangles


def _silhouettes(data: bytes, weights=None) -> np.ndarray:
    img = render_views(load_glb(data), size=192, weights=weights,
                       views=((0.0, 0.0), (35.0, 0.0), (90.0, 0.0), (180.0, 0.0)))
    bg = img[0, 0].astype(np.float64)  # the corner is always background
    return np.abs(img.astype(np.float64) - bg).max(-1) > 4


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_rendered_lods_look_like_lod0(lod_glbs):
    s0 = _silhouettes(lod_glbs[0])
    assert s0.mean() > 0.1  # the head is there
    assert _iou(s0, _silhouettes(lod_glbs[1])) > 0.995  # measured 0.9998
    assert _iou(s0, _silhouettes(lod_glbs[2])) > 0.99  # measured 0.998
    pose = {"jawOpen": 0.8, "mouthSmileLeft": 1.0, "eyeBlinkRight": 1.0}
    assert _iou(_silhouettes(lod_glbs[0], pose), _silhouettes(lod_glbs[1], pose)) > 0.995


@needs_bpy
def test_fbx_lod_group(avatar, lods, tmp_path):
    f = to_fbx(avatar, "unreal", prefix="npc_", lods=lods)
    assert [m["polygons"] for m in f.report["lods"]] == [lod.num_triangles for lod in lods]
    assert all(m["shape_keys"] == 52 for m in f.report["lods"])
    path = tmp_path / "npc.fbx"
    path.write_bytes(f.data)
    u = inspect_fbx(path, reader="ufbx")
    assert u["warnings"] == []
    assert u["lod_groups"] == [{"name": "npc_head", "levels": 3,
                                "children": ["npc_head_LOD0", "npc_head_LOD1", "npc_head_LOD2"]}]
    meshes = {m["name"]: m for m in u["meshes"]}
    for lod in lods:
        m = meshes[f"npc_head_LOD{lod.level}"]
        assert (m["vertices"], m["triangles"]) == (lod.num_vertices, lod.num_triangles)
        assert m["skin_deformers"] == 1 and m["blend_deformers"] == 1 and m["has_uv"]
    assert [c["name"] for c in u["blend_channels"]] == list(ARKIT_NAMES) * 3
    assert len(u["bones"]) == 6 and [r["name"] for r in u["root_nodes"]] == ["Armature"]


# ---------------------------------------------------------------------------
# `avatarsdk export --lods`
# ---------------------------------------------------------------------------

def test_export_gltf_lods(npc, tmp_path, lods):  # noqa: F811
    out = tmp_path / "hero"
    r = export(npc, out, "--gltf", "--lods")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.glb")) == ["hero_LOD0.glb", "hero_LOD1.glb", "hero_LOD2.glb"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["lods"]["count"] == 3 and m["models"]["glb"]["lod_paths"] == [f"hero_LOD{i}.glb" for i in range(3)]
    for entry, lod in zip(m["lods"]["levels"], lods):
        assert (entry["level"], entry["triangles"], entry["vertices"]) == (lod.level, lod.num_triangles,
                                                                           lod.num_vertices)
        data = (out / entry["glb"]).read_bytes()
        assert_clean(validate(data))
        assert len(load_glb(data).target_names) == 52
    assert m["visemes"] is None and m["morph_targets"]["count"] == 52
    # Off by default for glTF.
    r = export(npc, tmp_path / "plain", "--gltf")
    assert r.exit_code == 0 and json.loads((tmp_path / "plain" / "manifest.json").read_text())["lods"] is None


@needs_bpy
def test_export_unreal_has_lods_by_default(npc, tmp_path):  # noqa: F811
    out = tmp_path / "pkg"
    r = export(npc, out, "--unreal")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert [e["fbx_mesh"] for e in m["lods"]["levels"]] == [f"pkg_head_LOD{i}" for i in range(3)]
    assert m["lods"]["fbx_lod_group"] == "pkg_head" and m["models"]["fbx"]["exporter"]["lod_group"] == "pkg_head"
    assert "Import Mesh LODs" in (out / "IMPORT.md").read_text()
    r = export(npc, tmp_path / "nolod", "--unreal", "--no-lods")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "nolod" / "manifest.json").read_text())["lods"] is None
