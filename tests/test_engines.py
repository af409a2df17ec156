"""Engines we did not write read every package: Godot 3 imports the glb files, assimp reads glb and FBX.

Godot: the glb files of every preset's package (and of a glTF package with levels of detail and
visemes) go into one Godot project; Debian's ``godot3`` editor imports them headless under Xvfb
(``godot3 --no-window --path P --editor --quit``), then ``godot3 -s godot_probe.gd`` loads each
imported scene and prints what Godot built (nodes, skeleton bones and parents, meshes, surfaces,
blend shapes with the displacement each one makes, materials and their textures). The tests print
that summary and check it against the glb.

assimp: Debian's ``assimp`` command (``assimp info``) and the same libassimp through pyassimp's
ctypes structures read every glb and FBX: meshes, bones, anim meshes (morph targets) and how far
each one moves, materials and textures, and for FBX the scene metadata (UnitScaleFactor, UpAxis)
against the preset's table.

Install the tools with ``make setup-engines`` (as root: apt-get install godot3 xvfb xauth
assimp-utils); each test skips with the reason when its tool is missing. FBX packages need
Blender's exporter (``make setup-fbx``). One avatar and one set of packages per module; the Godot
import of all files runs once.
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pygltflib as gl
import pytest
from PIL import Image

from avatarsdk.errors import ConfigError
from avatarsdk.exporters.fbx import FBX_PRESETS, bpy_python
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.package import PRESETS, export_package
from avatarsdk.pipeline import random_avatar

HERE = Path(__file__).resolve().parent
PROBE = HERE / "godot_probe.gd"
STEM = "npc"
EXTRA = "gltf_lods_visemes"  # a glTF package with levels of detail and the 15 visemes
GLB_PACKAGES = [name for name, p in PRESETS.items() if "glb" in p.formats] + [EXTRA]
FBX_PACKAGES = [name for name, p in PRESETS.items() if "fbx" in p.formats]
IMPORT_LIMIT_S = 60.0  # per file


def _has_bpy() -> bool:
    try:
        return bpy_python() is not None
    except ConfigError:
        return False


def _godot_missing() -> str | None:
    missing = [t for t in ("godot3", "xvfb-run", "xauth") if shutil.which(t) is None]
    return (f"{', '.join(missing)} not installed: run `make setup-engines` "
            "(apt-get install godot3 xvfb xauth)") if missing else None


def _assimp_missing() -> str | None:
    if shutil.which("assimp") is None:
        return "assimp not installed: run `make setup-engines` (apt-get install assimp-utils)"
    try:
        from pyassimp import helper  # noqa: F401  (pure Python; the library is Debian's libassimp5)

        helper.search_library()
    except Exception as e:  # ImportError, or pyassimp's AssimpError when no libassimp is found
        return f"pyassimp cannot load libassimp ({type(e).__name__}: {e}); run `make setup setup-engines`"
    return None


needs_godot = pytest.mark.skipif(_godot_missing() is not None, reason=str(_godot_missing()))
needs_assimp = pytest.mark.skipif(_assimp_missing() is not None, reason=str(_assimp_missing()))


# ---------------------------------------------------------------------------
# Packages, built once
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def avatar():
    # ICT's linear identity with a plain albedo: a real head and rig in about a second.
    return random_avatar(5, texture_size=512)


@pytest.fixture(scope="module")
def packages(avatar, tmp_path_factory):
    """Package name -> (package folder, manifest), or -> skip reason when it cannot be built here."""
    root = tmp_path_factory.mktemp("engines")
    out: dict[str, tuple[Path, dict] | str] = {}
    for name in [*PRESETS, EXTRA]:
        preset = "gltf" if name == EXTRA else name
        if "fbx" in PRESETS[preset].formats and not _has_bpy():
            out[name] = f"preset {name} writes an FBX, which needs Blender's exporter: run `make setup-fbx`"
            continue
        extra = {"lods": True, "visemes": True} if name == EXTRA else {}
        pkg = export_package(avatar, preset, root / name, name=STEM, preview_size=0, **extra)
        out[name] = (pkg.path, pkg.manifest)
    return out


def _package(packages, name) -> tuple[Path, dict]:
    got = packages[name]
    if isinstance(got, str):
        pytest.skip(got)
    return got


def _glbs(packages, name) -> list[Path]:
    folder, _ = _package(packages, name)
    files = sorted(folder.glob("*.glb"))
    assert files, f"package {name} has no .glb"
    return files


# ---------------------------------------------------------------------------
# What the glb says (the expectations)
# ---------------------------------------------------------------------------

def morph_deltas(g: gl.GLTF2, blob: bytes, index: int) -> np.ndarray:
    """A VEC3 float morph accessor as [count, 3]: its bufferView (or zeros), then the sparse values.

    Written here from the glTF spec, so the expectations do not come from the SDK's own reader.
    """
    acc = g.accessors[index]
    assert (acc.componentType, acc.type) == (gl.FLOAT, gl.VEC3)

    def view(bv_index: int, offset: int | None, dtype, count: int, width: int) -> np.ndarray:
        bv = g.bufferViews[bv_index]
        elem = np.dtype(dtype).itemsize * width
        stride = bv.byteStride or elem
        raw = np.frombuffer(blob, np.uint8, count=stride * (count - 1) + elem,
                            offset=(bv.byteOffset or 0) + (offset or 0))
        rows = np.lib.stride_tricks.as_strided(raw, shape=(count, elem), strides=(stride, 1))
        return np.ascontiguousarray(rows).view(dtype).reshape(count, width)

    out = (np.zeros((acc.count, 3), np.float32) if acc.bufferView is None
           else view(acc.bufferView, acc.byteOffset, np.float32, acc.count, 3).copy())
    if acc.sparse is not None:
        sp = acc.sparse
        idx_type = {gl.UNSIGNED_BYTE: np.uint8, gl.UNSIGNED_SHORT: np.uint16, gl.UNSIGNED_INT: np.uint32}
        idx = view(sp.indices.bufferView, sp.indices.byteOffset, idx_type[sp.indices.componentType], sp.count, 1)
        out[idx[:, 0]] = view(sp.values.bufferView, sp.values.byteOffset, np.float32, sp.count, 3)
    return out


@functools.lru_cache(maxsize=16)
def glb_expectations(path: Path) -> dict:
    """Skin joints with parents, and per mesh node: targets, primitives, materials, textures, displacements."""
    data = path.read_bytes()
    g = gl.GLTF2.load_from_bytes(data)
    blob = g.binary_blob()
    parent = {c: i for i, n in enumerate(g.nodes) for c in (n.children or [])}
    joints = list(g.skins[0].joints) if g.skins else []
    joint_info = [(g.nodes[j].name, g.nodes[parent[j]].name if parent.get(j) in joints else None) for j in joints]
    image_size = {}
    for i, im in enumerate(g.images):
        bv = g.bufferViews[im.bufferView]
        png = blob[(bv.byteOffset or 0):(bv.byteOffset or 0) + bv.byteLength]
        with Image.open(io.BytesIO(png)) as img:
            image_size[i] = img.size
    order: list[int] = []

    def visit(n: int) -> None:
        order.append(n)
        for c in g.nodes[n].children or []:
            visit(c)

    for n in g.scenes[g.scene or 0].nodes:
        visit(n)
    meshes = []
    for n in order:
        node = g.nodes[n]
        if node.mesh is None:
            continue
        mesh = g.meshes[node.mesh]
        names = list((mesh.extras or {}).get("targetNames", []))
        prims = []
        for p in mesh.primitives:
            mat = g.materials[p.material]
            tex = mat.pbrMetallicRoughness.baseColorTexture
            deltas = []
            for t in p.targets or []:
                idx = t["POSITION"] if isinstance(t, dict) else t.POSITION
                deltas.append(float(np.abs(morph_deltas(g, blob, idx)).max()))
            prims.append({"vertices": g.accessors[p.attributes.POSITION].count,
                          "triangles": g.accessors[p.indices].count // 3,
                          "material": mat.name, "alpha": mat.alphaMode, "double_sided": bool(mat.doubleSided),
                          "texture": None if tex is None else image_size[g.textures[tex.index].source],
                          "max_delta": deltas})
        meshes.append({"node": node.name, "mesh": mesh.name, "targets": names, "primitives": prims})
    return {"joints": joint_info, "meshes": meshes, "images": len(g.images)}


def _bone_key(name: str) -> str:
    # Godot 3.2 renames bones (camelCase to snake_case, lower case: eye_L -> eye_l, LeftEye -> left_eye).
    return name.replace("_", "").lower()


def _node_name_ok(godot: str, ours: str) -> bool:
    # Godot 3.2 makes scene and node names unique together and appends " 2" to a repeat; our glTF
    # scene is named apart from every node, so each node keeps its name exactly.
    return godot == ours


# ---------------------------------------------------------------------------
# Godot
# ---------------------------------------------------------------------------

def _godot_env(home: Path) -> dict:
    env = dict(os.environ)
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):  # editor settings, caches
        env[var] = str(home / var.lower())
    env.pop("DISPLAY", None)
    return env


def _godot_cmd(args: list[str]) -> list[str]:
    return ["xvfb-run", "-a", "-s", "-screen 0 640x480x24", "godot3", "--no-window", *args]


def _stop(proc: subprocess.Popen) -> str:
    """Kill the process group (xvfb-run, Xvfb, godot3) if still running; return the output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return out.decode("utf-8", "replace")


def _run_godot(args: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str, float]:
    """Run godot3 under Xvfb in its own process group; kill the whole group on timeout (rc -9)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(_godot_cmd(args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    out = _stop(proc)
    return proc.returncode, out, time.perf_counter() - t0


def _import_outputs(project: Path, res: str) -> tuple[Path, list[Path]]:
    """The .import file Godot writes beside an asset, and the files it lists as imported (dest_files)."""
    meta = project / (res.removeprefix("res://") + ".import")
    if not meta.is_file():
        return meta, []
    found = re.search(r"^dest_files=\[(.*)\]", meta.read_text(), re.M)
    dests = re.findall(r'"res://([^"]+)"', found.group(1)) if found else []
    return meta, [project / d for d in dests]


def _godot_import(project: Path, resources: list[str], env: dict, timeout: float) -> dict:
    """Import a project's assets with the headless editor; wait for the results, not for the exit.

    The editor writes ``<asset>.import`` and the imported scene, then a ``.md5`` beside the scene
    once the asset is done. Godot 3.2's editor does not always get out cleanly after that: on
    ``--quit`` it can hang in EditorResourcePreview::stop() or crash in the preview thread
    (godotengine/godot#26857, #84716). So the import counts as done when every asset's outputs
    exist; an editor still running 30 s later is killed, and its exit status is reported.
    """
    t0 = time.time()
    proc = subprocess.Popen(_godot_cmd(["--path", str(project), "--editor", "--quit"]), cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    complete_at = None
    try:
        while time.time() - t0 < timeout:
            done = []
            for res in resources:
                meta, dests = _import_outputs(project, res)
                md5 = [d.with_suffix(".md5") for d in dests]
                done.append(bool(dests) and all(d.is_file() for d in dests + md5))
            if all(done) and complete_at is None:
                complete_at = time.time()
            if proc.poll() is not None or (complete_at is not None and time.time() - complete_at > 30):
                break
            time.sleep(0.5)
    finally:
        out = _stop(proc)
    return {"complete": complete_at is not None, "rc": proc.returncode, "log": out,
            "wall_s": round((complete_at or time.time()) - t0, 1), "t0": t0}


# Scene import defaults of the probe project. Materials stay inside the imported scene
# ("Built-In"): with Godot 3.2's default ("Files", one .material per material beside the
# glb) the editor starts thumbnails of those files, and on --quit EditorResourcePreview::stop()
# waits for a preview thread that waits for a frame that is never drawn, so the editor never
# exits (godotengine/godot#26857, #84716); the import itself is done by then.
PROJECT_GODOT = """config_version=4

[application]

config/name="avatarsdk engine check"

[importer_defaults]

scene={
"materials/storage": 0
}
"""


@pytest.fixture(scope="module")
def godot(packages, tmp_path_factory):
    """Import every package's glb files into one Godot project and probe them.

    Returns {"files": {(package, glb name): res path}, "seconds": {res path: import s}, "wall_s",
    "log", "scenes": {res path: probe JSON}}.
    """
    reason = _godot_missing()
    if reason:
        pytest.skip(reason)
    project = tmp_path_factory.mktemp("godot_project")
    home = tmp_path_factory.mktemp("godot_home")
    (project / "project.godot").write_text(PROJECT_GODOT)
    shutil.copy(PROBE, project / PROBE.name)
    files = {}
    for name in GLB_PACKAGES:
        if isinstance(packages[name], str):
            continue
        for glb in _glbs(packages, name):
            target = f"{name}__{glb.name}"
            shutil.copy(glb, project / target)
            files[(name, glb.name)] = f"res://{target}"
    env = _godot_env(home)
    limit = 120 + IMPORT_LIMIT_S * len(files)
    run = _godot_import(project, list(files.values()), env, limit)
    log = run["log"]
    assert run["complete"], f"Godot editor import not complete after {limit:.0f} s (exit {run['rc']})\n{log[-3000:]}"
    # Each file's import ends when the editor writes its .md5; the first one includes start-up.
    done = {}
    for res in files.values():
        _, dests = _import_outputs(project, res)
        done[res] = max(d.with_suffix(".md5").stat().st_mtime for d in dests)
    seconds, last = {}, run["t0"]
    for res in sorted(done, key=done.get):
        seconds[res] = round(done[res] - last, 2)
        last = done[res]
    rc, out, probe_s = _run_godot(["--path", str(project), "-s", f"res://{PROBE.name}"], project,
                                  dict(env, PROBE_SCENES=";".join(files.values())), 600)
    assert rc == 0, f"Godot probe: exit {rc}\n{out[-3000:]}"
    scenes = {}
    for line in out.splitlines():
        if line.startswith("PROBE_JSON "):
            d = json.loads(line[len("PROBE_JSON "):])
            scenes[d["scene"]] = d
    return {"files": files, "seconds": seconds, "wall_s": run["wall_s"], "exit": run["rc"],
            "probe_s": round(probe_s, 1), "log": log, "scenes": scenes}


def godot_summary(res: str, scene: dict, seconds: float) -> str:
    """A readable account of what Godot built from one file."""
    lines = [f"Godot 3.2.3: {res} (import {seconds:.1f} s)"]
    for sk in scene["skeletons"]:
        bones = sk["bones"]
        lines.append(f"  Skeleton {sk['path']}: " + ", ".join(
            f"{b['name']}<{bones[b['parent']]['name'] if b['parent'] >= 0 else '-'}" for b in bones))
    for m in scene["meshes"]:
        names = m["blend_shape_names"]
        listed = f" [{', '.join(names[:3])}, ..., {', '.join(names[-2:])}]" if names else ""
        lines.append(f"  MeshInstance {m['path']} (mesh {m['mesh_name']!r}, skeleton {m['skeleton']}, "
                     f"{len(m['skin_binds'])} skin binds): {len(names)} blend shapes{listed}")
        for i, s in enumerate(m["surfaces"]):
            mat = s["material"] or {}
            tex = mat.get("albedo_texture")
            moving = [d for d in s["blend_max_delta"] if d > 1e-5]
            lines.append(f"    surface {i}: {s['vertices']} v {s['triangles']} t, material {mat.get('name')!r} "
                         f"albedo {'%dx%d' % tuple(tex) if tex else 'none'}"
                         f"{' transparent' if mat.get('transparent') else ''}"
                         f"{' two-sided' if mat.get('cull_disabled') else ''}; "
                         f"{len(moving)}/{len(s['blend_max_delta'])} shapes move it, "
                         f"max {1000 * max(moving, default=0):.2f} mm")
    return "\n".join(lines)


@needs_godot
def test_godot_imports_every_glb_within_a_minute(godot):
    lost = [line for line in godot["log"].splitlines() if "editor_scene_importer_gltf" in line or
            "_decode_buffer_view" in line]
    print(f"\nGodot editor import of {len(godot['files'])} files: {godot['wall_s']} s wall "
          f"(probe {godot['probe_s']} s; editor exit status {godot['exit']}, -9: killed after the import)")
    for res, s in godot["seconds"].items():
        print(f"  {s:6.1f} s  {res}")
    assert lost == [], "Godot's glTF importer reported errors:\n" + "\n".join(lost[:10])
    assert set(godot["scenes"]) == set(godot["files"].values())
    assert all("error" not in s for s in godot["scenes"].values())
    slow = {res: s for res, s in godot["seconds"].items() if s > IMPORT_LIMIT_S}
    assert not slow, f"imports over {IMPORT_LIMIT_S:.0f} s: {slow}"


@needs_godot
@pytest.mark.parametrize("name", GLB_PACKAGES)
def test_godot_scene_matches_glb(godot, packages, name):
    folder, manifest = _package(packages, name)
    for glb in _glbs(packages, name):
        res = godot["files"][(name, glb.name)]
        scene = godot["scenes"][res]
        print("\n" + godot_summary(res, scene, godot["seconds"][res]))
        want = glb_expectations(glb)
        # One skeleton with the skin's joints, parents kept.
        (sk,) = scene["skeletons"]
        bones = sk["bones"]
        got = [(_bone_key(b["name"]), _bone_key(bones[b["parent"]]["name"]) if b["parent"] >= 0 else None)
               for b in bones]
        assert got == [(_bone_key(n), p and _bone_key(p)) for n, p in want["joints"]]
        # One MeshInstance per glTF mesh node, in order, with every morph target as a blend shape.
        assert len(scene["meshes"]) == len(want["meshes"])
        for gm, wm in zip(scene["meshes"], want["meshes"]):
            assert _node_name_ok(gm["name"], wm["node"]), (gm["name"], wm["node"])
            assert gm["blend_shape_names"] == wm["targets"]
            assert gm["blend_shape_names"][:52] == manifest["morph_targets"]["names"][:52]
            # Skinned to that skeleton, one bind per joint.
            assert posixpath.normpath(posixpath.join(gm["path"], gm["skeleton"])) == sk["path"]
            assert [_bone_key(b) for b in gm["skin_binds"]] == [_bone_key(n) for n, _ in want["joints"]]
            assert len(gm["surfaces"]) == len(wm["primitives"])
            for s, p in zip(gm["surfaces"], wm["primitives"]):
                assert (s["vertices"], s["triangles"]) == (p["vertices"], p["triangles"])
                assert s["has_bones"]
                mat = s["material"]
                assert mat["name"] == p["material"]
                assert mat["albedo_texture"] == (list(p["texture"]) if p["texture"] else None)
                assert mat["transparent"] == (p["alpha"] == "BLEND")
                assert mat["cull_disabled"] == p["double_sided"]
                # Each blend shape moves the surface as far as its morph target says (0 where none).
                np.testing.assert_allclose(s["blend_max_delta"], p["max_delta"], rtol=1e-3, atol=2e-6)
    # The blend shapes a package promises are there (52 ARKit, plus 15 visemes where asked).
    assert len(manifest["morph_targets"]["names"]) == len(scene["meshes"][0]["blend_shape_names"])


# ---------------------------------------------------------------------------
# assimp
# ---------------------------------------------------------------------------

def assimp_info(path: Path) -> dict:
    """Run ``assimp info`` and parse its counts, per-mesh lines and node tree."""
    proc = subprocess.run(["assimp", "info", str(path)], capture_output=True, text=True, timeout=300,
                          cwd=path.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = proc.stdout
    counts = {k.strip(): v.strip() for k, v in re.findall(r"^([A-Z][A-Za-z .()]+):\s+(\S+)\s*$", text, re.M)}
    meshes = [(n, int(v), int(b), int(f)) for n, v, b, f in
              re.findall(r"^\s+\d+ \((.*)\): \[(\d+) / (\d+) / (\d+) \|", text, re.M)]
    tree = text.split("Node hierarchy:", 1)[-1]
    nodes = re.findall(r"[├└]╴(\S+)", tree)
    return {"counts": counts, "meshes": meshes, "nodes": nodes, "text": text}


_META_TYPES = {0: ctypes.c_bool, 1: ctypes.c_int32, 2: ctypes.c_uint64, 3: ctypes.c_float, 4: ctypes.c_double}


def assimp_scene(path: Path) -> dict:
    """Read a file with libassimp (no post-processing) through pyassimp's ctypes structures.

    pyassimp's own ``load()`` walks every pointer and fails on our FBX ("NULL pointer access"),
    so this reads only what the tests need: meshes (vertices, faces, material, bones, anim meshes
    with their largest |target - base| component), materials (name, diffuse texture path), the
    scene metadata and node names.
    """
    from pyassimp import helper, structs

    load, _, _, _, release, _ = helper.search_library()
    ptr = load(str(path).encode(), 0)
    assert ptr, f"libassimp could not read {path}"
    try:
        s = ptr.contents

        def vec3(p, n):
            return np.ctypeslib.as_array(ctypes.cast(p, ctypes.POINTER(ctypes.c_float)), (n, 3)).astype(np.float64)

        meshes = []
        for i in range(s.mNumMeshes):
            m = s.mMeshes[i].contents
            base = vec3(m.mVertices, m.mNumVertices)
            anims = []
            for k in range(m.mNumAnimMeshes):
                a = m.mAnimMeshes[k].contents
                d = vec3(a.mVertices, a.mNumVertices) - base if a.mNumVertices == m.mNumVertices else None
                anims.append((a.mName.data.decode(), -1.0 if d is None else float(np.abs(d).max())))
            meshes.append({"name": m.mName.data.decode(), "vertices": m.mNumVertices, "faces": m.mNumFaces,
                           "material": m.mMaterialIndex, "bbox": (base.min(0), base.max(0)),
                           "bones": [m.mBones[k].contents.mName.data.decode() for k in range(m.mNumBones)],
                           "anim": anims})
        materials = []
        for i in range(s.mNumMaterials):
            mat = s.mMaterials[i].contents
            props = {}
            for k in range(mat.mNumProperties):
                p = mat.mProperties[k].contents
                key = p.mKey.data.decode()
                if p.mType == 3 and key in ("?mat.name", "$tex.file"):  # aiPTI_String: uint32 length + bytes
                    raw = ctypes.string_at(p.mData, p.mDataLength)
                    n = int.from_bytes(raw[:4], "little")
                    props[(key, p.mSemantic)] = raw[4:4 + n].decode()
            materials.append({"name": props.get(("?mat.name", 0)), "diffuse": props.get(("$tex.file", 1))})
        meta = {}
        if s.mMetadata:
            md = s.mMetadata.contents
            for k in range(md.mNumProperties):
                e = md.mValues[k]
                if e.mType in _META_TYPES:
                    meta[md.mKeys[k].data.decode()] = ctypes.cast(e.mData, ctypes.POINTER(_META_TYPES[e.mType])).contents.value
                elif e.mType == 5:  # aiString
                    meta[md.mKeys[k].data.decode()] = ctypes.cast(e.mData, ctypes.POINTER(structs.String)).contents.data.decode()
        names = []

        def walk(node_ptr):
            node = node_ptr.contents
            names.append(node.mName.data.decode())
            for c in range(node.mNumChildren):
                walk(node.mChildren[c])

        walk(s.mRootNode)
        return {"meshes": meshes, "materials": materials, "meta": meta, "nodes": names,
                "textures": s.mNumTextures}
    finally:
        release(ptr)


def assimp_summary(path: Path, info: dict, scene: dict) -> str:
    c = info["counts"]
    lines = [f"assimp 5.2.5: {path.parent.name}/{path.name}: {c.get('Meshes')} meshes, {c.get('Materials')} "
             f"materials, {c.get('Bones')} bones, {c.get('Textures (embed.)')} embedded textures, "
             f"{c.get('Vertices')} vertices, {c.get('Faces')} faces"]
    if scene["meta"].get("UnitScaleFactor") is not None:
        m = scene["meta"]
        lines.append(f"  FBX UnitScaleFactor {m['UnitScaleFactor']:g} cm/unit, UpAxis {'XYZ'[m['UpAxis']]} "
                     f"(sign {m['UpAxisSign']}), FrontAxis {'XYZ'[m['FrontAxis']]} (sign {m['FrontAxisSign']}), "
                     f"{m.get('SourceAsset_Generator')}")
    for m in scene["meshes"]:
        mat = scene["materials"][m["material"]]
        moving = [d for _, d in m["anim"] if d > 1e-9]
        lines.append(f"  mesh {m['name']!r}: {m['vertices']} v {m['faces']} f, material {mat['name']!r} "
                     f"(texture {mat['diffuse']}), bones {len(m['bones'])}, anim meshes {len(m['anim'])} "
                     f"({len(moving)} move, max {max(moving, default=0):.5g} units)")
    lines.append("  nodes: " + ", ".join(info["nodes"]))
    return "\n".join(lines)


@needs_assimp
@pytest.mark.parametrize("name", GLB_PACKAGES)
def test_assimp_reads_glb(packages, name):
    _, manifest = _package(packages, name)
    for glb in _glbs(packages, name):
        info, scene = assimp_info(glb), assimp_scene(glb)
        print("\n" + assimp_summary(glb, info, scene))
        want = glb_expectations(glb)
        prims = [(wm, p) for wm in want["meshes"] for p in wm["primitives"]]
        # assimp makes one mesh per glTF primitive, in file order.
        assert len(scene["meshes"]) == len(prims) == int(info["counts"]["Meshes"])
        assert int(info["counts"]["Textures (embed.)"]) == scene["textures"] == want["images"]
        joint_names = [n for n, _ in want["joints"]]
        for m, (wm, p) in zip(scene["meshes"], prims):
            assert (m["vertices"], m["faces"]) == (p["vertices"], p["triangles"])
            assert scene["materials"][m["material"]]["name"] == p["material"]
            assert (scene["materials"][m["material"]]["diffuse"] is not None) == (p["texture"] is not None)
            assert m["bones"] == joint_names
            assert [n for n, _ in m["anim"]] == wm["targets"]
            np.testing.assert_allclose([d for _, d in m["anim"]], p["max_delta"], rtol=1e-4, atol=1e-7)
        assert set(joint_names) <= set(info["nodes"])
        assert len(wm["targets"]) == len(manifest["morph_targets"]["names"])


def _fbx_expected_offsets(avatar, extra, unit, vertex_ids=None) -> dict[str, np.ndarray]:
    """Material -> [K] largest |delta| component (file units) of each shape over that material's vertices."""
    topo = avatar.topology
    deltas = np.asarray(avatar.rig.blendshapes, np.float64)
    if extra:
        deltas = np.concatenate([deltas, np.stack([np.asarray(v, np.float64) for v in extra.values()])])
    deltas = np.where(np.abs(deltas).max(axis=2, keepdims=True) > 1e-5, deltas, 0.0)  # to_fbx's morph_epsilon
    out = {}
    for mi, mat in enumerate(topo.materials):
        verts = np.unique(topo.triangles[topo.tri_material == mi])
        if len(verts):
            out[mat] = np.abs(deltas[:, verts]).max(axis=(1, 2)) / unit
    return out


@needs_assimp
@pytest.mark.parametrize("name", FBX_PACKAGES)
def test_assimp_reads_fbx(avatar, packages, name):
    folder, manifest = _package(packages, name)
    preset = PRESETS[name]
    fbx = FBX_PRESETS[preset.fbx_preset]
    (path,) = sorted(folder.glob("*.fbx"))
    info, scene = assimp_info(path), assimp_scene(path)
    print("\n" + assimp_summary(path, info, scene))
    # Units and axes as the preset's table says (UnitScaleFactor is centimetres per file unit).
    meta = scene["meta"]
    assert meta["UnitScaleFactor"] == pytest.approx(100.0 * fbx.unit_metres)
    assert meta["UnitScaleFactor"] == pytest.approx(100.0 * preset.unit_metres)
    assert (meta["UpAxis"], meta["UpAxisSign"]) == ({"X": 0, "Y": 1, "Z": 2}[fbx.up], 1)
    assert meta["SourceAsset_Generator"].startswith("Blender")
    # One mesh per (level of detail, material), each level with the triangles the manifest lists.
    topo = avatar.topology
    lods = manifest.get("lods")
    head = f"{STEM}_head"
    level_names = [f"{head}_LOD{lv['level']}" for lv in lods["levels"]] if lods else [head]
    assert sorted({m["name"] for m in scene["meshes"]}) == sorted(level_names)
    assert len(scene["meshes"]) == int(info["counts"]["Meshes"])
    for i, level in enumerate(level_names):
        faces = sum(m["faces"] for m in scene["meshes"] if m["name"] == level)
        assert faces == (lods["levels"][i]["triangles"] if lods else len(topo.triangles)), level
    used = [m for i, m in enumerate(topo.materials) if (topo.tri_material == i).any()]
    names = manifest["morph_targets"]["names"]
    mats = {m["name"] for m in scene["materials"]}
    assert mats >= {f"{STEM}_{m}" for m in used}
    for mat in scene["materials"]:
        if mat["diffuse"] is not None:
            assert mat["diffuse"] == f"textures/{mat['name']}.png" and (folder / mat["diffuse"]).is_file()
    textured = {f"{STEM}_{m}" for m in avatar.textures if m in used}
    assert {m["name"] for m in scene["materials"] if m["diffuse"]} == textured
    expected = _fbx_expected_offsets(avatar, None, fbx.unit_metres)
    full = [m for m in scene["meshes"] if m["name"] in (head, f"{head}_LOD0")]
    assert len(full) == len(used)
    for m in scene["meshes"]:
        assert sorted(m["bones"]) == sorted(avatar.rig.skeleton.names)
        assert [n for n, _ in m["anim"]] == names
    for m in full:  # each shape moves each part of the full mesh as far as the rig says
        mat = scene["materials"][m["material"]]["name"].removeprefix(f"{STEM}_")
        got = [d for _, d in m["anim"]][:len(avatar.rig.blendshape_names)]
        np.testing.assert_allclose(got, expected[mat], rtol=1e-4, atol=1e-7 / fbx.unit_metres)
    # The head's size in file units is its size in metres / unit, with Z and Y swapped for Z up.
    lo = np.min([m["bbox"][0] for m in full], axis=0)
    hi = np.max([m["bbox"][1] for m in full], axis=0)
    sdk = np.ptp(np.asarray(avatar.vertices, np.float64), axis=0)
    np.testing.assert_allclose(hi - lo, (sdk[[0, 2, 1]] if fbx.up == "Z" else sdk) / fbx.unit_metres, rtol=1e-4)


# ---------------------------------------------------------------------------
# The exporter side of the Godot fix, checked without any engine
# ---------------------------------------------------------------------------

def test_every_morph_accessor_names_a_buffer_view(avatar):
    """Sparse and all-zero morph targets share one zero-filled bufferView (Godot 3.2 needs one)."""
    g = gl.GLTF2.load_from_bytes(to_glb(avatar))
    blob = g.binary_blob()
    views = set()
    kinds = set()
    for prim in g.meshes[0].primitives:
        for t in prim.targets:
            index = t["POSITION"] if isinstance(t, dict) else t.POSITION
            acc = g.accessors[index]
            assert acc.bufferView is not None
            if acc.sparse is not None or np.abs(morph_deltas(g, blob, index)).max() == 0:
                views.add(acc.bufferView)
                kinds.add("sparse" if acc.sparse is not None else "zeros")
    assert kinds == {"sparse", "zeros"} and len(views) == 1
    (zero,) = views
    bv = g.bufferViews[zero]
    assert bv.byteStride == 12 and not any(blob[bv.byteOffset:bv.byteOffset + bv.byteLength])
    largest = max(g.accessors[p.attributes.POSITION].count for p in g.meshes[0].primitives)
    assert bv.byteLength == 12 * largest
