"""Oculus visemes as ARKit combinations: the table, the deltas, glTF and FBX morph targets, `export --visemes`."""

from __future__ import annotations

import json

import numpy as np
import pygltflib as gl
import pytest
from test_export import export, needs_bpy, npc  # noqa: F401 (npc is a fixture)
from test_gltf import assert_clean, validate

from avatarsdk.errors import InputError
from avatarsdk.exporters.fbx import inspect_fbx, to_fbx
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.pipeline import random_avatar
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.rigs.visemes import VISEME_NAMES, VISEME_WEIGHTS, viseme_shapes, viseme_target_names

# Spelled as Oculus Lipsync and Ready Player Me spell them (viseme_I, not viseme_ih).
OCULUS = ["sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U"]


@pytest.fixture(scope="module")
def avatar():
    return random_avatar(6, texture_size=64)


@pytest.fixture(scope="module")
def shapes(avatar):
    return viseme_shapes(avatar.rig.blendshape_names, avatar.rig.blendshapes)


def test_names_and_table():
    assert list(VISEME_NAMES) == OCULUS
    assert list(viseme_target_names()) == [f"viseme_{n}" for n in OCULUS]
    assert VISEME_WEIGHTS["sil"] == {}
    for name, weights in VISEME_WEIGHTS.items():
        assert set(weights) <= set(ARKIT_NAMES), name
        assert all(0.0 < w <= 1.0 for w in weights.values()), name
        for shape, w in weights.items():  # left-right symmetric
            for a, b in (("Left", "Right"), ("Right", "Left")):
                if shape.endswith(a):
                    assert weights.get(shape[: -len(a)] + b) == w, (name, shape)


def test_deltas(avatar, shapes):
    assert list(shapes) == list(viseme_target_names())
    v = np.asarray(avatar.vertices)
    assert all(d.shape == v.shape and d.dtype == np.float32 for d in shapes.values())
    assert not shapes["viseme_sil"].any()
    # Mouth region: vertices within 2.5 cm of the lip landmarks (Multi-PIE 48-67).
    lips = v[np.asarray(avatar.topology.landmarks68)[48:68]]
    near = np.linalg.norm(v[:, None] - lips[None], axis=2).min(1) < 0.025
    moved = {n: np.linalg.norm(d[near], axis=1).max() for n, d in shapes.items()}
    for n in OCULUS[1:]:
        assert moved[f"viseme_{n}"] > 1e-3, (n, moved[f"viseme_{n}"])  # > 1 mm
    # Every pair of visemes differs somewhere in the mouth by > 0.5 mm.
    names = [f"viseme_{n}" for n in OCULUS]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.linalg.norm(shapes[a][near] - shapes[b][near], axis=1).max() > 5e-4, (a, b)
    # Reference value: aa is exactly its weighted sum of ARKit shapes.
    bs = np.asarray(avatar.rig.blendshapes, np.float64)
    ref = sum(w * bs[ARKIT_NAMES.index(s)] for s, w in VISEME_WEIGHTS["aa"].items())
    np.testing.assert_allclose(shapes["viseme_aa"], ref, atol=1e-7)
    # Jaw opening ranks as the table says: aa opens more than E, E more than ih.
    chin = v[:, 1] < lips[:, 1].min() - 0.01
    drop = {n: -shapes[f"viseme_{n}"][near & chin, 1].min() for n in ("aa", "E", "I")}
    assert drop["aa"] > drop["E"] > drop["I"], drop


def test_bad_rig(avatar):
    ict = random_avatar(6, texture_size=64, names="ict")
    with pytest.raises(InputError, match="ARKit"):
        viseme_shapes(ict.rig.blendshape_names, ict.rig.blendshapes)
    with pytest.raises(InputError, match="expected"):
        viseme_shapes(avatar.rig.blendshape_names[:3], avatar.rig.blendshapes)


def test_glb_with_visemes_is_valid(avatar, shapes):
    data = to_glb(avatar, extra_shapes=shapes)
    assert_clean(validate(data))
    g = gl.GLTF2.load_from_bytes(data)
    (mesh,) = g.meshes
    assert mesh.extras["targetNames"] == list(ARKIT_NAMES) + list(viseme_target_names())
    assert all(len(p.targets) == 67 for p in mesh.primitives)


@needs_bpy
def test_fbx_has_67_shape_keys(avatar, shapes, tmp_path):
    f = to_fbx(avatar, "fbx", prefix="npc_", extra_shapes=shapes)
    assert f.report["shape_keys"] == 67
    path = tmp_path / "npc.fbx"
    path.write_bytes(f.data)
    u = inspect_fbx(path, reader="ufbx")
    names = [c["name"] for c in u["blend_channels"]]
    assert names == list(ARKIT_NAMES) + list(viseme_target_names())
    offsets = {c["name"]: c for c in u["blend_channels"]}
    assert offsets["viseme_sil"]["max_offset"] == 0  # (Blender writes one zero offset for an empty key)
    assert all(offsets[f"viseme_{n}"]["offsets"] > 0 for n in OCULUS[1:])
    # ufbx gives file units (cm for the "fbx" preset): the largest offset matches the deltas.
    np.testing.assert_allclose(offsets["viseme_aa"]["max_offset"] * 0.01, np.abs(shapes["viseme_aa"]).max(), rtol=1e-3)
    b = inspect_fbx(path, reader="blender")
    assert b["shape_keys"] == names and len(b["shape_keys"]) == 67


def test_export_gltf_visemes(npc, tmp_path):  # noqa: F811
    out = tmp_path / "talk"
    r = export(npc, out, "--gltf", "--visemes")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["visemes"]["names"] == list(viseme_target_names()) and m["visemes"]["count"] == 15
    assert m["visemes"]["arkit_weights"]["viseme_aa"] == VISEME_WEIGHTS["aa"]
    assert m["morph_targets"]["count"] == 67 and m["blendshapes"]["names"] == list(ARKIT_NAMES)
    data = (out / "talk.glb").read_bytes()
    assert_clean(validate(data))
    assert gl.GLTF2.load_from_bytes(data).meshes[0].extras["targetNames"][-15:] == list(viseme_target_names())
    # All 15 names, written out literally as Ready Player Me's docs and lip-sync code use them.
    rpm = ["viseme_sil", "viseme_PP", "viseme_FF", "viseme_TH", "viseme_DD", "viseme_kk", "viseme_CH",
           "viseme_SS", "viseme_nn", "viseme_RR", "viseme_aa", "viseme_E", "viseme_I", "viseme_O", "viseme_U"]
    assert gl.GLTF2.load_from_bytes(data).meshes[0].extras["targetNames"][-15:] == rpm


@needs_bpy
def test_export_unity_visemes_and_lods(npc, tmp_path):  # noqa: F811
    out = tmp_path / "u"
    r = export(npc, out, "--unity", "--visemes")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["models"]["fbx"]["exporter"]["shape_keys"] == 67 and m["lods"]["count"] == 3
    assert sorted(p.name for p in out.glob("*.glb")) == ["u.glb"]  # Unity's LODs live in the FBX
    assert_clean(validate((out / "u.glb").read_bytes()))
