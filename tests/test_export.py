"""`avatarsdk export`: packages per preset from a saved avatar, manifest, zip, atomicity, exit code 2."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import assert_clean, needs_bpy, validate
from avatarsdk import __version__
from avatarsdk.cli import app
from avatarsdk.errors import ConfigError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.avatarfile import load_avatar
from avatarsdk.datatypes import JOINT_NAMES

runner = CliRunner()


@pytest.fixture(scope="module")
def npc(tmp_path_factory):
    d = tmp_path_factory.mktemp("npc")
    r = runner.invoke(app, ["random", "--source", "ict", "--seed", "5", "--texture-size", "64", "-o", str(d / "npc.glb")])
    assert r.exit_code == 0, r.output
    assert (d / "npc.avatar").is_file()
    return d / "npc.avatar"


def flat(result) -> str:
    """The output with rich's line wrapping (80 columns when not a terminal) undone."""
    return " ".join(result.output.split())


def export(npc, out, *flags, env=None):
    return runner.invoke(app, ["export", str(npc), "-o", str(out), "--preview-size", "32", *flags], env=env)


def check_manifest(pkg, preset):
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["preset"] == preset and m["sdk"] == {"name": "avatarsdk", "version": __version__}
    assert m["blendshapes"]["names"] == list(ARKIT_NAMES) and m["blendshapes"]["convention"] == "ARKit"
    assert [j["name"] for j in m["joints"]] == list(JOINT_NAMES)
    assert m["joints"][1]["parent"] == "root" and m["joints"][0]["parent"] is None
    assert m["avatar"]["seed"] == 5 and "source_photo_sha256" in m["avatar"]
    assert m["avatar"]["saved_avatar"]["file"] == "npc.avatar"
    ict = [lic for lic in m["licences"] if lic["component"].startswith("ICT-FaceKit")][0]
    assert ict["licence"] == "MIT" and "USC Institute for Creative Technologies" in ict["text"]
    assert "Permission is hereby granted" in (pkg / "LICENSE-ICT-FaceKit.txt").read_text()
    on_disk = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for rel, entry in m["files"].items():
        data = (pkg / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], rel
    for mat, t in m["textures"].items():
        assert Image.open(pkg / t["path"]).size == (t["width"], t["height"]), mat
    preview = np.asarray(Image.open(pkg / "preview.png"))
    assert preview.shape == (32, 96, 3) and preview.std() > 5  # three views, not blank
    assert (pkg / "IMPORT.md").read_text().startswith("# Importing")
    return m


def test_gltf_package(npc, tmp_path):
    out = tmp_path / "hero"
    r = export(npc, out, "--gltf", "--zip")
    assert r.exit_code == 0, r.output
    m = check_manifest(out, "gltf")
    assert m["units"] == "metres" and m["axes"]["up"] == "+Y"
    glb = (out / "hero.glb").read_bytes()
    assert_clean(validate(glb))
    # The package re-exports the saved avatar exactly: same bytes as `random` wrote, no re-run.
    assert glb == (npc.parent / "npc.glb").read_bytes() == to_glb(load_avatar(npc))
    assert sorted(m["textures"]) == ["eyelashes", "eyes", "skin", "skin_normal", "skin_orm", "teeth"]
    with zipfile.ZipFile(tmp_path / "hero.zip") as z:
        names = set(z.namelist())
        assert names == {f"hero/{p.relative_to(out).as_posix()}" for p in out.rglob("*") if p.is_file()}
        assert z.read("hero/hero.glb") == glb
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one of"),
        (["--gltf", "--unity"], "exactly one of"),
        (["--gltf", "--preview-size", "4"], "preview size"),
    ],
)
def test_bad_options_exit_2(npc, tmp_path, args, message):
    r = export(npc, tmp_path / "pkg", *args)
    assert r.exit_code == 2, r.output
    assert message in flat(r) and "Traceback" not in r.output
    assert not (tmp_path / "pkg").exists()


def test_bad_inputs_exit_2(npc, tmp_path):
    r = export(tmp_path / "missing.avatar", tmp_path / "pkg", "--gltf")
    assert r.exit_code == 2 and "cannot read avatar file" in flat(r)
    r = export(npc.parent / "npc.glb", tmp_path / "pkg", "--gltf")
    assert r.exit_code == 2 and "binary glTF" in flat(r)
    broken = tmp_path / "broken.avatar"
    broken.write_bytes(npc.read_bytes()[:100000])
    r = export(broken, tmp_path / "pkg", "--gltf")
    assert r.exit_code == 2 and "InputError" in flat(r)
    assert not (tmp_path / "pkg").exists()


def test_existing_folder_needs_overwrite(npc, tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = export(npc, out, "--gltf")
    assert r.exit_code == 2 and "already exists" in flat(r)
    assert (out / "keep.txt").read_text() == "mine"
    r = export(npc, out, "--gltf", "--overwrite", "--name", "npc 7")
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "npc_7.glb").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_failure_leaves_nothing_behind(npc, tmp_path):
    """The FBX step fails after the glb, textures and preview are written to the temp folder."""
    out = tmp_path / "pkg"
    # A real interpreter without bpy: Blender's script fails with ImportError.
    r = export(npc, out, "--unity", "--zip", env={"AVATARSDK_BPY_PYTHON": sys.executable})
    assert r.exit_code == 2, r.output
    assert "ExportError" in flat(r) and "FBX export (unity) failed" in flat(r)
    assert list(tmp_path.iterdir()) == []  # no folder, no zip, no temp folder
    # With --overwrite, a failed export keeps the previous package untouched.
    assert export(npc, out, "--gltf").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = export(npc, out, "--unity", "--overwrite", env={"AVATARSDK_BPY_PYTHON": sys.executable})
    assert r.exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_bad_bpy_setting_exit_2(npc, tmp_path):
    r = export(npc, tmp_path / "pkg", "--unreal", env={"AVATARSDK_BPY_PYTHON": str(tmp_path / "no-python")})
    assert r.exit_code == 2 and "ConfigError" in flat(r) and "AVATARSDK_BPY_PYTHON" in flat(r)
    assert list(tmp_path.iterdir()) == []


@needs_bpy
@pytest.mark.parametrize("preset, files, units", [
    ("unreal", {"npcpkg.fbx"}, "centimetres"),
    ("unity", {"npcpkg.fbx", "npcpkg.glb"}, "metres"),
    ("fbx", {"npcpkg.fbx"}, "centimetres"),
])
def test_fbx_packages(npc, tmp_path, preset, files, units):
    out = tmp_path / "npcpkg"
    r = export(npc, out, f"--{preset}", "--zip")
    assert r.exit_code == 0, r.output
    m = check_manifest(out, preset)
    assert {p.name for p in out.iterdir() if p.suffix in (".fbx", ".glb")} == files
    assert m["units"] == units
    fbx = m["models"]["fbx"]
    assert fbx["exporter"]["shape_keys"] == 52 and fbx["exporter"]["bones"] == 6
    data = (out / "npcpkg.fbx").read_bytes()
    assert data.startswith(b"Kaydara FBX Binary")
    for mat, t in m["textures"].items():  # the FBX points at the package's textures, relatively
        if mat.endswith("_orm"):  # FBX has no packed ORM slot: it points at the roughness image instead
            assert t["path"].replace("_orm.png", "_roughness.png").encode() in data
        else:
            assert t["path"].encode() in data
    if "glb" in m["models"]:
        assert_clean(validate((out / "npcpkg.glb").read_bytes()))
    with zipfile.ZipFile(tmp_path / "npcpkg.zip") as z:
        assert z.read("npcpkg/npcpkg.fbx") == data
