"""`--preset rpm`: a glb with Ready Player Me's names, checked against names written down from RPM's own docs and SDK.

The expected names here are typed from the sources cited in the README ("Ready
Player Me preset"), not imported from avatarsdk.exporters.rpm, so a wrong name in
the writer fails.
"""

from __future__ import annotations

import json

import numpy as np
import pygltflib as gl
import pytest
from typer.testing import CliRunner

from conftest import assert_clean, validate
from avatarsdk.cli import app
from avatarsdk.errors import ExportError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb, read_accessor
from avatarsdk.exporters.rpm import to_rpm_glb
from avatarsdk.pipeline import random_avatar
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.avatarfile import load_avatar

runner = CliRunner()

# docs.readyplayer.me: morph-targets/apple-arkit (52) and oculus-ovr-libsync (15);
# rpm-unity-sdk-core Runtime/Core/Scripts/Data/AvatarMorphTarget.cs adds the five "Default" ones.
RPM_VISEMES = ["viseme_sil", "viseme_PP", "viseme_FF", "viseme_TH", "viseme_DD", "viseme_kk", "viseme_CH",
               "viseme_SS", "viseme_nn", "viseme_RR", "viseme_aa", "viseme_E", "viseme_I", "viseme_O", "viseme_U"]
RPM_DEFAULTS = ["mouthOpen", "mouthSmile", "eyesClosed", "eyesLookUp", "eyesLookDown"]
RPM_ARKIT = ["eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
             "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
             "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
             "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
             "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
             "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
             "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
             "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
             "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
             "noseSneerRight", "tongueOut"]
# Meshes and materials as RPM glbs name them (three.js loaders written for RPM read these).
RPM_MESH_MATERIAL = {"Wolf3D_Head": "Wolf3D_Skin", "Wolf3D_Teeth": "Wolf3D_Teeth", "EyeLeft": "Wolf3D_Eye",
                     "EyeRight": "Wolf3D_Eye"}
# rpm-unity-sdk-core AvatarBoneHelper.cs: the half-body path of the eye bones.
RPM_EYE_PATHS = ["Armature/Hips/Spine/Neck/Head/LeftEye", "Armature/Hips/Spine/Neck/Head/RightEye"]


@pytest.fixture(scope="module")
def avatar():
    return random_avatar(7, texture_size=64)


@pytest.fixture(scope="module")
def rpm(avatar):
    data = to_rpm_glb(avatar)
    g = gl.GLTF2.load_from_bytes(data)
    return data, g


def _paths(g: gl.GLTF2) -> set[str]:
    out = set()

    def walk(i: int, prefix: str) -> None:
        path = f"{prefix}/{g.nodes[i].name}" if prefix else g.nodes[i].name
        out.add(path)
        for c in g.nodes[i].children or []:
            walk(c, path)

    for root in g.scenes[g.scene].nodes:
        walk(root, "")
    return out


def test_validator_clean(rpm):
    report = validate(rpm[0])
    assert_clean(report)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0


def test_every_rpm_name_is_there(rpm):
    _, g = rpm
    expected = RPM_ARKIT + RPM_VISEMES + RPM_DEFAULTS
    assert len(expected) == len(set(expected)) == 72 and sorted(RPM_ARKIT) == sorted(ARKIT_NAMES)
    by_name = {n.name: n for n in g.nodes}
    for mesh_name, material in RPM_MESH_MATERIAL.items():
        node = by_name[mesh_name]
        mesh = g.meshes[node.mesh]
        assert node.skin == 0 and mesh.name == mesh_name
        assert len(mesh.primitives) == 1  # three.js: a SkinnedMesh, so nodes.Wolf3D_Head.geometry exists
        assert g.materials[mesh.primitives[0].material].name == material
        names = mesh.extras["targetNames"]
        assert sorted(names) == sorted(expected) and len(names) == 72
        assert len(mesh.primitives[0].targets) == 72 and len(mesh.weights) == 72
    # Every mesh (ours too) carries the same 72 targets: per-mesh lip sync sets all of them.
    assert all(m.extras["targetNames"] == g.meshes[0].extras["targetNames"] for m in g.meshes)
    paths = _paths(g)
    for p in RPM_EYE_PATHS + ["Armature/Hips/Spine/Neck/Head/HeadTop_End"]:
        assert p in paths, p
    joints = [g.nodes[j].name for j in g.skins[0].joints]
    assert set(joints) >= {"Hips", "Spine", "Neck", "Head", "LeftEye", "RightEye", "HeadTop_End"}
    assert g.nodes[g.skins[0].skeleton].name == "Hips"
    assert sorted(n.name for n in g.nodes if n.mesh is not None) == sorted(
        [*RPM_MESH_MATERIAL, "Wolf3D_Eyelashes", "Wolf3D_EyeWet"])


def test_geometry_and_skin_are_the_standard_glbs(avatar, rpm):
    """Same vertices, triangles and morph deltas as to_glb; the eyes split by side; weights on the same joints."""
    data, g = rpm
    ours, theirs = load_glb(to_glb(avatar)), load_glb(data)
    by_material = {p.material: p for p in ours.primitives}
    got = {p.material: p for p in theirs.primitives if p.material != "Wolf3D_Eye"}
    for mine, rpm_name in (("skin", "Wolf3D_Skin"), ("teeth", "Wolf3D_Teeth")):
        np.testing.assert_array_equal(got[rpm_name].positions, by_material[mine].positions)
        np.testing.assert_array_equal(got[rpm_name].triangles, by_material[mine].triangles)
    names = list(theirs.target_names)
    skin_targets = got["Wolf3D_Skin"].targets
    for k, n in enumerate(ours.target_names):
        np.testing.assert_array_equal(skin_targets[names.index(n)], by_material["skin"].targets[k])
    # mouthOpen is jawOpen; eyesClosed both blinks (deltas are sums of ARKit shapes). Each stored
    # target drops deltas of at most 1e-5 m (to_glb's morph_epsilon), so a sum of two is off by <= 2e-5.
    np.testing.assert_allclose(skin_targets[names.index("mouthOpen")], skin_targets[names.index("jawOpen")], atol=1e-5)
    np.testing.assert_allclose(skin_targets[names.index("eyesClosed")],
                               skin_targets[names.index("eyeBlinkLeft")] + skin_targets[names.index("eyeBlinkRight")],
                               atol=2.5e-5)
    # EyeLeft holds the avatar's left eye (+X), EyeRight the right; together all eye triangles.
    by_name = {n.name: n for n in g.nodes}
    eye_tris = []
    for name, sign in (("EyeLeft", 1), ("EyeRight", -1)):
        prim = g.meshes[by_name[name].mesh].primitives[0]
        pos = read_accessor(data, prim.attributes.POSITION)
        tri = read_accessor(data, prim.indices).reshape(-1, 3)
        assert (sign * pos[np.unique(tri)][:, 0] > 0).all()
        eye_tris.append(tri)
    ref = by_material["eyes"].triangles
    assert sorted(map(tuple, np.concatenate(eye_tris))) == sorted(map(tuple, ref))
    # Skin: each vertex keeps its weights, on the renamed joint (root->Hips, eye_L->LeftEye, ...).
    prim = g.meshes[by_name["Wolf3D_Head"].mesh].primitives[0]
    joints = read_accessor(data, prim.attributes.JOINTS_0)
    weights = read_accessor(data, prim.attributes.WEIGHTS_0)
    skin_names = [g.nodes[j].name for j in g.skins[0].joints]
    rename = {"root": "Hips", "neck": "Neck", "head": "Head", "jaw": "Jaw", "eye_L": "LeftEye", "eye_R": "RightEye"}
    ref_blob = to_glb(avatar)
    ref_g = gl.GLTF2.load_from_bytes(ref_blob)
    ref_prim = ref_g.meshes[0].primitives[0]
    ref_joints = read_accessor(ref_blob, ref_prim.attributes.JOINTS_0)
    ref_names = [ref_g.nodes[j].name for j in ref_g.skins[0].joints]
    mapped = np.vectorize(lambda j: rename[ref_names[j]])(ref_joints)
    used = weights > 0
    assert (np.vectorize(lambda j: skin_names[j])(joints)[used] == mapped[used]).all()
    np.testing.assert_array_equal(weights, read_accessor(ref_blob, ref_prim.attributes.WEIGHTS_0))


def test_ict_named_rig_is_refused():
    with pytest.raises(ExportError, match="ARKit"):
        to_rpm_glb(random_avatar(7, texture_size=64, names="ict"))


@pytest.fixture(scope="module")
def npc(tmp_path_factory):
    d = tmp_path_factory.mktemp("npc")
    r = runner.invoke(app, ["random", "--source", "ict", "--seed", "5", "--texture-size", "64", "-o", str(d / "npc.glb")])
    assert r.exit_code == 0, r.output
    return d / "npc.avatar"


def test_package_layout(npc, tmp_path):
    out = tmp_path / "head"
    r = runner.invoke(app, ["export", str(npc), "-o", str(out), "--preset", "rpm", "--preview-size", "32"])
    assert r.exit_code == 0, r.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["IMPORT.md", "LICENSE-ICT-FaceKit.txt", "head.glb", "manifest.json", "preview.png",
                     "textures/head_eyelashes.png", "textures/head_eyes.png", "textures/head_skin.png",
                     "textures/head_skin_normal.png", "textures/head_skin_orm.png", "textures/head_teeth.png"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["preset"] == "rpm" and m["units"] == "metres" and m["axes"]["up"] == "+Y"
    assert m["morph_targets"]["count"] == 72
    assert m["morph_targets"]["names"][52:] == RPM_VISEMES + RPM_DEFAULTS
    assert m["visemes"]["names"] == RPM_VISEMES
    assert [j["name"] for j in m["joints"]][:4] == ["Hips", "Spine", "Neck", "Head"]
    assert m["rpm"]["bones"]["eye_L"] == "LeftEye" and m["rpm"]["meshes"]["eyes"] == ["EyeLeft", "EyeRight"]
    glb = (out / "head.glb").read_bytes()
    assert glb == to_rpm_glb(load_avatar(npc))  # the saved avatar, re-exported exactly
    text = (out / "IMPORT.md").read_text()
    for needle in ("Wolf3D_Head", "EyeLeft", "LeftEye", "viseme_U", "mouthOpen", "Not covered", "Bodies", "Outfits"):
        assert needle in text, needle
    # The old flags still work and give the same packages as --preset.
    r = runner.invoke(app, ["export", str(npc), "-o", str(tmp_path / "g1"), "--gltf", "--preview-size", "0"])
    r2 = runner.invoke(app, ["export", str(npc), "-o", str(tmp_path / "g2"), "--preset", "gltf", "--preview-size", "0"])
    assert r.exit_code == r2.exit_code == 0, r.output + r2.output
    assert (tmp_path / "g1" / "g1.glb").read_bytes() == (tmp_path / "g2" / "g2.glb").read_bytes()


def test_rpm_batch_needs_arkit_names(tmp_path):
    r = runner.invoke(app, ["batch", "--random", "1", "-o", str(tmp_path / "out"), "--preset", "rpm", "--source", "ict",
                            "--names", "ict", "--texture-size", "64"])
    assert r.exit_code == 2 and "ARKit" in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
