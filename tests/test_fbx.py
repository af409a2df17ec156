"""FBX through Blender's exporter, checked by two readers we did not write: ufbx (strict) and Blender's importer.

Needs a Python with bpy==4.5.4 and ufbx==0.0.5 (`make setup-fbx`, or AVATARSDK_BPY_PYTHON);
the tests that need it skip without one. Each preset takes a few seconds.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import needs_bpy
from avatarsdk.errors import ConfigError, ExportError
from avatarsdk.exporters.fbx import FBX_PRESETS, bpy_python, inspect_fbx, to_fbx
from avatarsdk.pipeline import random_avatar
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.datatypes import JOINT_NAMES


EXPECTED_AXES = {"unreal": ("POSITIVE_Z", 0.01), "unity": ("POSITIVE_Y", 1.0), "fbx": ("POSITIVE_Y", 0.01)}


@pytest.fixture(scope="module")
def avatar():
    return random_avatar(2, texture_size=64)


@pytest.fixture(scope="module", params=sorted(FBX_PRESETS))
def exported(request, avatar, tmp_path_factory):
    preset = request.param
    d = tmp_path_factory.mktemp(f"fbx_{preset}")
    f = to_fbx(avatar, preset, prefix="npc_")
    (d / "npc.fbx").write_bytes(f.data)
    for rel, png in f.textures.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(png)
    return preset, d / "npc.fbx", f


def _expected_max_offsets(avatar) -> np.ndarray:
    d = np.asarray(avatar.rig.blendshapes, np.float64)
    return np.abs(d).max(axis=(1, 2))  # metres; an axis swap keeps the largest |component|


@needs_bpy
def test_ufbx_strict_reads_everything(avatar, exported):
    preset, path, f = exported
    up, unit = EXPECTED_AXES[preset]
    u = inspect_fbx(path, reader="ufbx")
    assert u["warnings"] == []
    assert u["creator"].startswith("Blender") and u["version"] >= 7400
    assert u["axes"]["up"] == up and u["unit_meters"] == pytest.approx(unit)
    # Units: the head's size in file units is its size in metres / unit.
    (mesh,) = u["meshes"]
    assert mesh["vertices"] == avatar.topology.num_vertices and mesh["triangles"] == len(avatar.topology.triangles)
    assert mesh["has_uv"] and mesh["has_normals"] and mesh["skin_deformers"] == 1 and mesh["blend_deformers"] == 1
    size = np.array(mesh["world_bbox_max"]) - np.array(mesh["world_bbox_min"])
    sdk = np.ptp(np.asarray(avatar.vertices, np.float64), axis=0)
    sdk_in_file = (sdk[[0, 2, 1]] if up == "POSITIVE_Z" else sdk) / unit
    np.testing.assert_allclose(size, sdk_in_file, rtol=1e-4)
    assert all(n["scale"] == pytest.approx([1, 1, 1]) for n in u["root_nodes"])  # no 100x scale on Armature
    # 52 ARKit blend channels, in order, each moving vertices by the right amount.
    names = [c["name"] for c in u["blend_channels"]]
    assert names == list(ARKIT_NAMES)
    assert all(c["offsets"] > 0 for c in u["blend_channels"])
    got = np.array([c["max_offset"] for c in u["blend_channels"]]) * unit
    np.testing.assert_allclose(got, _expected_max_offsets(avatar), rtol=1e-4, atol=2e-5)
    # Six bones and one skin cluster per bone; weights where the rig has them.
    assert [b["name"] for b in u["bones"]] == list(JOINT_NAMES)
    clusters = {c["bone"]: c["weights"] for c in u["skin_clusters"]}
    assert set(clusters) == set(JOINT_NAMES)
    sj, sw = np.asarray(avatar.rig.skin_joints), np.asarray(avatar.rig.skin_weights)
    for j, name in enumerate(JOINT_NAMES):
        assert clusters[name] == int(((sj == j) & (sw > 0)).any(1).sum()), name
    # Materials with their textures, as relative paths beside the file.
    mats = {m["name"]: m["maps"] for m in u["materials"]}
    assert set(mats) == {f"npc_{m}" for m in avatar.topology.materials}
    materials = [m for m in avatar.textures if m in avatar.topology.materials]
    for mat in materials:
        assert mats[f"npc_{mat}"]["diffuse_color"] == f"textures/npc_{mat}.png"
        assert (path.parent / mats[f"npc_{mat}"]["diffuse_color"]).is_file()
    # The skin's normal map and roughness as Blender's exporter writes them (NormalMap, ShininessExponent).
    assert mats["npc_skin"]["normal_map"] == "textures/npc_skin_normal.png"
    assert mats["npc_skin"]["roughness"] == "textures/npc_skin_roughness.png"
    assert mats["npc_eyes"]["normal_map"] is None
    assert mats["npc_eyelashes"]["transparency_factor"] == "textures/npc_eyelashes.png"  # RGBA lashes
    assert mats["npc_eye_wet"]["diffuse_color"] is None
    assert not any(t["embedded"] for t in u["textures"])
    # A textured material's DiffuseColor x DiffuseFactor is white: importers that multiply it with
    # the texture (assimp) must show the texture's own colour, not 20 % darker (Blender's 0.8 grey).
    factors = {m["name"]: m for m in u["materials"]}
    for mat in materials:
        m = factors[f"npc_{mat}"]
        assert np.asarray(m["diffuse_color"]) * m["diffuse_factor"] == pytest.approx([1, 1, 1], abs=1e-6), (mat, m)


@needs_bpy
def test_blender_reimport(avatar, exported):
    preset, path, f = exported
    b = inspect_fbx(path, reader="blender")
    assert b["result"] == ["FINISHED"] and b["meshes"] == 1 and b["armatures"] == 1
    assert b["vertices"] == avatar.topology.num_vertices and b["polygons"] == len(avatar.topology.triangles)
    assert b["shape_keys"] == list(ARKIT_NAMES)
    # Blender converts to metres on import whatever the file's unit.
    got = np.array([b["shape_key_max_offset"][n] for n in ARKIT_NAMES])
    np.testing.assert_allclose(got, _expected_max_offsets(avatar), rtol=1e-3, atol=2e-5)
    size = np.array(b["bbox_max"]) - np.array(b["bbox_min"])
    sdk = np.ptp(np.asarray(avatar.vertices, np.float64), axis=0)[[0, 2, 1]]  # Blender is Z up
    np.testing.assert_allclose(size, sdk, rtol=1e-4)
    assert b["bones"] == list(JOINT_NAMES)
    parents = avatar.rig.skeleton.parents
    assert b["bone_parents"] == {n: (JOINT_NAMES[p] if p >= 0 else None) for n, p in zip(JOINT_NAMES, parents)}
    assert "ARMATURE" in b["modifiers"]
    weighted = {n for j, n in enumerate(JOINT_NAMES)
                if ((np.asarray(avatar.rig.skin_joints) == j) & (np.asarray(avatar.rig.skin_weights) > 0)).any()}
    assert set(b["weighted_vertices"]) == weighted
    assert set(b["materials"]) == {f"npc_{m}" for m in avatar.topology.materials}
    materials = [m for m in avatar.textures if m in avatar.topology.materials]
    assert {m: t for m, t in b["material_textures"].items()} == {f"npc_{m}": f"npc_{m}.png" for m in materials}
    # The skin's PBR maps: normal map through a Normal Map node, roughness (the ORM's G) on Roughness.
    assert b["material_maps"] == {"npc_skin": {"normal": "npc_skin_normal.png", "roughness": "npc_skin_roughness.png"}}
    assert all(ok for _, _, ok in b["images"])  # every image found and loaded
    for name, (w, h) in b["image_sizes"].items():
        mat = name.split(".png")[0].removeprefix("npc_").replace("_roughness", "_orm")
        assert (h, w) == avatar.textures[mat].shape[:2]


@needs_bpy
def test_report_counts(exported):
    _, _, f = exported
    r = f.report
    assert (r["shape_keys"], r["bones"], r["materials"], r["vertex_groups"]) == (52, 6, 5, 6)
    assert r["blender"].startswith("4.5.4")


def test_without_bpy_fails_cleanly(avatar, tmp_path):
    with pytest.raises(ExportError, match="FBX export \\(unreal\\) failed with exit code 1"):
        to_fbx(avatar, "unreal", python=sys.executable)  # a real Python without bpy
    with pytest.raises(ConfigError, match="not an executable"):
        to_fbx(avatar, "unreal", python=tmp_path / "nope")
    with pytest.raises(ExportError, match="unknown FBX preset"):
        to_fbx(avatar, "maya")
    with pytest.raises(ExportError, match="prefix"):
        to_fbx(avatar, "unity", prefix="a b")
    with pytest.raises(ExportError, match="no FBX file"):
        inspect_fbx(tmp_path / "missing.fbx")


def test_bpy_python_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("AVATARSDK_BPY_PYTHON", sys.executable)
    assert str(bpy_python()) == sys.executable
    monkeypatch.setenv("AVATARSDK_BPY_PYTHON", str(tmp_path))
    with pytest.raises(ConfigError, match="AVATARSDK_BPY_PYTHON"):
        bpy_python()
