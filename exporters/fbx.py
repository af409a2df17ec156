"""FBX export through Blender's own exporter, run out of process.

The SDK does not import ``bpy`` (it pins numpy < 2 and Python 3.11, and takes
seconds to start). :func:`to_fbx` writes what the FBX needs to a temporary
folder — arrays as ``.npy`` (no pickle), names and settings as JSON, textures
as PNG — and runs ``_bpy_build_fbx.py build`` with a Python that has ``bpy``:

1. ``AVATARSDK_BPY_PYTHON`` (path of a Python executable), if set;
2. otherwise ``.venv-bpy/bin/python`` in the current folder or in the
   checkout this package lives in (``make setup-fbx`` creates it with
   ``bpy==4.5.4`` and ``ufbx==0.0.5``).

The script builds the scene directly in Blender (not through the glTF
importer): one mesh on the ICT vertices with a material slot per part material
and per-corner UVs, a Principled BSDF per material whose Image Texture node
points at ``textures/<prefix><material>.png``, one shape key per blendshape,
an armature with the skeleton's joints and one vertex group per joint (with
levels of detail, one such mesh per level under an FBX ``LodGroup``). It then
calls ``bpy.ops.export_scene.fbx`` with the settings of an :class:`FbxPreset`
(the FBX columns of the preset table, :mod:`avatarsdk.exporters.presets`).
Texture paths in the file are relative (``textures/...``), so the FBX and its
``textures`` folder move together.

:func:`inspect_fbx` reads a file back with ``ufbx`` (strict) or re-imports it
into Blender, both in a subprocess, and returns a JSON report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avatarsdk.errors import ConfigError, ExportError
from avatarsdk.exporters.presets import FBX_PRESETS, FbxPreset  # the one preset table
from avatarsdk.exporters.gltf import _DEFAULT_STYLE, _MATERIAL_STYLE, _check
from avatarsdk.files import png_bytes
from avatarsdk.datatypes import Avatar

if TYPE_CHECKING:
    from avatarsdk.rigs.lod import Lod

log = logging.getLogger(__name__)

__all__ = ["FBX_PRESETS", "FbxFile", "FbxPreset", "bpy_python", "inspect_fbx", "texture_path", "to_fbx"]

BPY_ENV = "AVATARSDK_BPY_PYTHON"
SCRIPT = Path(__file__).with_name("_bpy_build_fbx.py")
ARMATURE_NAME = "Armature"  # Unreal drops a root node of this name instead of adding a bone for it.

# Bone tails: spine joints point up, jaw and eyes forward (SDK axes, metres).
_BONE_SHAPE: dict[str, tuple[tuple[float, float, float], float]] = {
    "root": ((0.0, 1.0, 0.0), 0.02),
    "neck": ((0.0, 1.0, 0.0), 0.10),
    "head": ((0.0, 1.0, 0.0), 0.12),
    "jaw": ((0.0, 0.0, 1.0), 0.06),
    "eye_L": ((0.0, 0.0, 1.0), 0.015),
    "eye_R": ((0.0, 0.0, 1.0), 0.015),
}


@dataclass(frozen=True)
class FbxFile:
    """An FBX file and what Blender reported while writing it.

    Attributes:
        data: the .fbx contents (binary FBX 7.4).
        textures: relative path (as referenced in ``data``) -> PNG bytes; write
            them beside the .fbx.
        report: counts and timings from the Blender side (vertices, shape_keys,
            bones, build_s, export_s, blender version).
    """

    data: bytes
    textures: dict[str, bytes]
    report: dict = field(default_factory=dict)


def texture_path(material: str, prefix: str = "") -> str:
    """Relative path of a material's texture inside a package: ``textures/<prefix><material>.png``."""
    return f"textures/{prefix}{material}.png"


def bpy_python(explicit: str | os.PathLike | None = None) -> Path | None:
    """Find the Python executable that runs Blender's exporter.

    Args:
        explicit: a path that overrides the search.

    Returns:
        The executable, or None when none is configured or found.

    Raises:
        ConfigError: ``explicit`` or ``AVATARSDK_BPY_PYTHON`` names no executable file.
    """
    for value, where in ((explicit, "bpy python"), (os.environ.get(BPY_ENV) or None, BPY_ENV)):
        if value is not None:
            p = Path(value).expanduser()
            if not (p.is_file() and os.access(p, os.X_OK)):
                raise ConfigError(f"{where}={value!s} is not an executable file")
            return p
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        p = root / ".venv-bpy" / "bin" / "python"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def _require_python(explicit) -> Path:
    p = bpy_python(explicit)
    if p is None:
        raise ExportError(f"FBX export needs a Python with bpy==4.5.4 and ufbx==0.0.5: run `make setup-fbx` "
                          f"(creates .venv-bpy) or set {BPY_ENV} to such an interpreter")
    return p


def _run(python: Path, args: list[str], timeout: float, what: str) -> dict:
    """Run the script with ``args``; return the JSON object on its last stdout line."""
    cmd = [str(python), str(SCRIPT), *args]
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what}: Blender did not finish within {timeout:.0f} s") from None
    except OSError as e:
        raise ExportError(f"{what}: cannot run {python}: {e}") from None
    out = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not out:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-6:]
        raise ExportError(f"{what} failed with exit code {proc.returncode} ({python}): "
                          + " | ".join(tail or out[-6:] or ["no output"]))
    try:
        report = json.loads(out[-1])
    except json.JSONDecodeError:
        raise ExportError(f"{what}: no report from the Blender script, last line {out[-1][:200]!r}") from None
    return report


def to_fbx(
    avatar: Avatar,
    preset: FbxPreset | str,
    *,
    prefix: str = "",
    morph_epsilon: float = 1e-5,
    extra_shapes: dict[str, np.ndarray] | None = None,
    lods: Sequence[Lod] | None = None,
    python: str | os.PathLike | None = None,
    timeout: float = 900.0,
    hair=None,
    hair_texture: np.ndarray | None = None,
) -> FbxFile:
    """Encode an avatar as an FBX file with Blender's exporter (in a subprocess).

    Args:
        avatar: the avatar (checked as for glTF export).
        preset: an :class:`FbxPreset` or a name in :data:`FBX_PRESETS`.
        prefix: prepended to material, texture and mesh names, so several
            avatars can share an engine's content folder ("" keeps "skin", ...).
        morph_epsilon: metres; a vertex whose blendshape delta is at most this
            in every axis does not move in that shape (as in
            :func:`~avatarsdk.exporters.gltf.to_glb`; Blender writes every vertex
            that differs at all, so this keeps float noise out of the file).
        extra_shapes: more shape keys, name -> [V, 3] float deltas in metres on
            the full topology, after the rig's (e.g. the visemes of
            :func:`avatarsdk.rigs.visemes.viseme_shapes`).
        lods: levels of detail (:func:`avatarsdk.rigs.lod.ict_lods`); when given,
            the file holds one mesh per level, ``<prefix>head_LOD<i>``, each with
            every shape key and the same skin, parented in order to an empty
            ``<prefix>head`` written as an FBX ``LodGroup`` node (Blender's
            exporter writes an empty whose custom property ``fbx_type`` is
            ``"LodGroup"`` as that node type). Unreal's importer reads the group
            as the skeletal mesh's LODs ("Import Mesh LODs"); Unity's reads
            the ``_LOD<i>`` name suffixes. None: one mesh ``<prefix>head``.
        python: the Python with bpy (default: see :func:`bpy_python`).
        timeout: seconds before the Blender process is stopped.
        hair: optional hair cards (:class:`avatarsdk.hair.Cards`, e.g. ``hair_for(avatar).lods[0]``):
            written as their own mesh ``<prefix>hair`` with material ``<prefix>hair`` (the strand
            atlas, alpha-clipped, double-sided), skinned to the same armature (head and neck
            joints), no shape keys, parented to the armature (beside the head or its LOD group).
        hair_texture: [H, W, 4] uint8 sRGBA strand atlas of the hair material (required with ``hair``).

    Returns:
        The FBX bytes, the textures it references and Blender's report.

    Raises:
        ExportError: no bpy interpreter, invalid avatar, Blender failed or timed out.
        ConfigError: ``python`` or ``AVATARSDK_BPY_PYTHON`` is not an executable.
    """
    if isinstance(preset, str):
        if preset not in FBX_PRESETS:
            raise ExportError(f"unknown FBX preset {preset!r}; choose from {', '.join(FBX_PRESETS)}")
        preset = FBX_PRESETS[preset]
    if prefix and not all(c.isalnum() or c in "_-" for c in prefix):
        raise ExportError(f"prefix must be letters, digits, '_' or '-', got {prefix!r}")
    names, deltas = _check(avatar, "all", extra_shapes, morph_epsilon)
    deltas = np.where(np.abs(deltas).max(axis=2, keepdims=True) > morph_epsilon, deltas, 0.0).astype(np.float32)
    if lods is not None and len(lods) == 0:
        raise ExportError("lods: need at least one level")
    exe = _require_python(python)
    topo, rig = avatar.topology, avatar.rig
    used = sorted(set(int(m) for m in np.unique(topo.tri_material)))
    # Only materials with triangles get a slot; remap triangle materials to slots.
    lut = np.full(len(topo.materials), -1, np.int64)
    lut[used] = np.arange(len(used))
    tri_slot = lut[np.asarray(topo.tri_material, np.int64)]
    textures: dict[str, bytes] = {}
    materials = []
    for m in used:
        name = topo.materials[m]
        style = _MATERIAL_STYLE.get(name, _DEFAULT_STYLE)
        spec = {"name": prefix + name, "roughness": style["roughness"], "colour": list(style["colour"]),
                "alpha": style.get("alpha", "OPAQUE"), "double_sided": style.get("double_sided", False),
                "texture": None, "has_alpha": False}
        if name in avatar.textures:
            img = np.ascontiguousarray(avatar.textures[name])
            rel = texture_path(name, prefix)
            textures[rel] = png_bytes(img)
            spec.update(texture=rel, has_alpha=img.shape[2] == 4, colour=[1.0, 1.0, 1.0, 1.0])
        if f"{name}_normal" in avatar.textures:
            rel = texture_path(f"{name}_normal", prefix)
            textures[rel] = png_bytes(np.ascontiguousarray(avatar.textures[f"{name}_normal"]))
            spec["normal_texture"] = rel
        if f"{name}_orm" in avatar.textures:
            # FBX has no packed occlusion-roughness-metallic slot: the roughness (G) goes on its own.
            rel = texture_path(f"{name}_roughness", prefix)
            textures[rel] = png_bytes(np.ascontiguousarray(avatar.textures[f"{name}_orm"][..., 1]))
            spec["roughness_texture"] = rel
        materials.append(spec)
    if hair is not None:
        atlas = np.asarray(hair_texture) if hair_texture is not None else None
        if atlas is None or atlas.dtype != np.uint8 or atlas.ndim != 3 or atlas.shape[2] != 4:
            raise ExportError("hair: the strand atlas must be a uint8 [H, W, 4] texture")
        rel = texture_path("hair", prefix)
        textures[rel] = png_bytes(np.ascontiguousarray(atlas))
        materials.append({"name": prefix + "hair", "roughness": 0.6, "colour": [1.0, 1.0, 1.0, 1.0],
                          "alpha": "CLIP", "double_sided": True, "texture": rel, "has_alpha": True})
    joint_names = list(rig.skeleton.names)
    shapes = [_BONE_SHAPE.get(n, ((0.0, 1.0, 0.0), 0.05)) for n in joint_names]
    # SDK direction (x, y, z) -> Blender (x, -z, y), as the script does for positions.
    directions = [[d[0], -d[2], d[1]] for d, _ in shapes]
    mesh_name = (prefix or "") + "head"
    # (name, array-file suffix, vertex ids or None for all, triangles, corner UVs, triangle slots) per mesh.
    meshes = []
    if lods is None:
        meshes.append((mesh_name, "", None, topo.triangles, topo.corner_uv, tri_slot))
    else:
        for lod in lods:
            ids = np.asarray(lod.vertex_ids, np.int64)
            if len(ids) == 0 or ids.max() >= topo.num_vertices or np.asarray(lod.triangles).max() >= len(ids):
                raise ExportError(f"LOD{lod.level} does not index this avatar's {topo.num_vertices} vertices")
            meshes.append((f"{mesh_name}_LOD{lod.level}", f"_lod{lod.level}", ids, lod.triangles, lod.corner_uv,
                           lut[np.asarray(lod.tri_material, np.int64)]))
    scene = {
        "output": "avatar.fbx",
        "mesh_name": mesh_name,
        "meshes": [{"name": m[0], "arrays": m[1], "materials": list(range(len(used)))} for m in meshes]
        + ([{"name": prefix + "hair", "arrays": "_hair", "materials": [len(used)], "shape_keys": False,
             "parent": "armature"}] if hair is not None else []),
        "lod_group": mesh_name if lods is not None else None,
        "armature_name": ARMATURE_NAME,
        "materials": materials,
        "blendshape_names": list(names),
        "joint_names": joint_names,
        "bone_directions": directions,
        "bone_lengths": [length for _, length in shapes],
        "fbx_settings": preset.exporter_settings(),
        "preset": preset.name,
        "unit_metres": preset.unit_metres,
    }
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="avatarsdk-fbx-"))
    try:
        arrays = {
            "joint_parents": np.asarray(rig.skeleton.parents, np.int32),
            "joint_positions": np.asarray(rig.skeleton.positions, np.float32),
        }
        for _, sfx, ids, tris, cuv, slots in meshes:
            sel = slice(None) if ids is None else ids
            arrays.update({
                f"vertices{sfx}": np.asarray(avatar.vertices, np.float32)[sel],
                f"triangles{sfx}": np.asarray(tris, np.int32),
                f"corner_uv{sfx}": np.asarray(cuv, np.float32),
                f"tri_material{sfx}": np.asarray(slots).astype(np.int8),
                f"blendshapes{sfx}": deltas[:, sel].astype(np.float32),
                f"skin_joints{sfx}": np.asarray(rig.skin_joints, np.uint8)[sel],
                f"skin_weights{sfx}": np.asarray(rig.skin_weights, np.float32)[sel],
            })
        if hair is not None:
            htri = np.asarray(hair.triangles, np.int64)
            arrays.update({
                "vertices_hair": np.asarray(hair.positions, np.float32),
                "triangles_hair": htri.astype(np.int32),
                "corner_uv_hair": np.asarray(hair.uv, np.float32)[htri],
                "tri_material_hair": np.zeros(len(htri), np.int8),
                "skin_joints_hair": np.asarray(hair.joints, np.uint8),
                "skin_weights_hair": np.asarray(hair.weights, np.float32),
            })
        for key, a in arrays.items():
            np.save(work / f"{key}.npy", np.ascontiguousarray(a), allow_pickle=False)
        for rel, data in textures.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)
        (work / "scene.json").write_text(json.dumps(scene, indent=1), encoding="utf-8")
        report = _run(exe, ["build", str(work)], timeout, f"FBX export ({preset.name})")
        out = work / scene["output"]
        if not out.is_file():
            raise ExportError(f"FBX export ({preset.name}): Blender reported success but wrote no file")
        data = out.read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - t0, 3)
    log.info("FBX (%s): %.1f MB in %.1f s", preset.name, len(data) / 1e6, report["total_s"])
    return FbxFile(data=data, textures=textures, report=report)


def inspect_fbx(
    path: str | os.PathLike,
    *,
    reader: str = "ufbx",
    python: str | os.PathLike | None = None,
    timeout: float = 600.0,
) -> dict:
    """Read an FBX back in a subprocess and describe it.

    Args:
        path: the .fbx file (textures are looked up relative to it).
        reader: "ufbx" (strict load, no unit or axis conversion) or "blender"
            (``bpy.ops.import_scene.fbx`` into an empty scene).
        python: the Python with bpy and ufbx (default: see :func:`bpy_python`).
        timeout: seconds.

    Returns:
        The reader's report (see ``_bpy_build_fbx.py``): for ufbx unit_meters,
        axes, meshes, blend_channels [{name, offsets, max_offset}], bones,
        skin_clusters, materials, textures, warnings; for Blender shape_keys,
        shape_key_max_offset, bones, vertex_groups, materials, images.

    Raises:
        ExportError: no interpreter, or the reader failed (for ufbx strict mode,
            any structural problem in the file).
    """
    if reader not in ("ufbx", "blender"):
        raise ExportError(f"reader must be 'ufbx' or 'blender', got {reader!r}")
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"no FBX file at {p}")
    return _run(_require_python(python), [f"inspect-{reader}", str(p.resolve())], timeout, f"{reader} read of {p.name}")
