"""Engine packages: a folder (and optionally a .zip) ready to drop into Unreal, Unity or a DCC tool.

Every package holds::

    <name>.fbx and/or <name>.glb   # the model (see avatarsdk.exporters.presets.PRESETS for which)
    <name>_LOD0..2.glb             # instead of <name>.glb for glTF with levels of detail
    textures/<name>_<material>.png # the textures, 8-bit sRGB(A) PNG
    manifest.json                  # SDK version, source photo sha256, names, units, axes, files, licences
    preview.png                    # front, three-quarter and side renders
    IMPORT.md                      # the engine's import settings
    LICENSE-ICT-FaceKit.txt        # the MIT notice of the base mesh and blendshapes

The folder is built as a hidden temporary folder beside the target and
renamed into place at the end, so the target is either absent, the previous
package (with ``overwrite``), or complete. Nothing here re-runs fitting or
networks: the input is an :class:`~avatarsdk.datatypes.Avatar`, usually from
:func:`avatarsdk.avatarfile.load_avatar`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarsdk import __version__
from avatarsdk.errors import ExportError, InputError
from avatarsdk.exporters.fbx import to_fbx
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import avatar_mesh, load_glb
from avatarsdk.exporters.meshopt import COMPRESSIONS, GLTFPACK_ARGS, compress_glb, gltfpack_command
from avatarsdk.exporters.presets import PRESETS, EnginePreset  # the one preset table
from avatarsdk.exporters.rpm import RPM_MORPH_TARGETS, RPM_VISEMES, rpm_import_md, rpm_mapping, rpm_rig, to_rpm_glb
from avatarsdk.files import json_safe, png_bytes
from avatarsdk.preview import render_views
from avatarsdk.rigs.lod import LOD_BUDGETS, ict_lods, lod_avatar
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.rigs.visemes import VISEME_WEIGHTS, viseme_shapes, viseme_target_names
from avatarsdk.datatypes import Avatar

log = logging.getLogger(__name__)

__all__ = ["ICT_FACEKIT_LICENSE", "PRESETS", "EnginePreset", "Package", "export_package"]

ICT_FACEKIT_LICENSE = """MIT License

Copyright (c) 2020 USC Institute for Creative Technologies

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
"""The licence of ICT-FaceKit (https://github.com/ICT-VGL/ICT-FaceKit), whose
topology, UV layout, identity and expression shapes every avatar derives from."""

LICENCES = [
    {"component": "ICT-FaceKit (base mesh topology, UV layout, identity model, expression blendshapes)",
     "licence": "MIT", "copyright": "Copyright (c) 2020 USC Institute for Creative Technologies",
     "url": "https://github.com/ICT-VGL/ICT-FaceKit", "file": "LICENSE-ICT-FaceKit.txt",
     "text": ICT_FACEKIT_LICENSE},
    {"component": "avatarsdk (exporter, rig adaptation, textures it generated)", "licence": "Apache-2.0"},
]


@dataclass(frozen=True)
class Package:
    """A written package.

    Attributes:
        path: the package folder.
        zip_path: the .zip beside it, or None.
        manifest: the contents of manifest.json.
        seconds: wall time per step ("glb", "fbx", "preview", "write", "total").
    """

    path: Path
    zip_path: Path | None
    manifest: dict
    seconds: dict


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in name).strip("_-")
    return stem[:64] or "avatar"


def export_package(
    avatar: Avatar,
    preset: str,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    make_zip: bool = False,
    overwrite: bool = False,
    preview_size: int = 512,
    source: dict | None = None,
    bpy_python: str | os.PathLike | None = None,
    lods: bool | None = None,
    hair=None,
    visemes: bool | None = None,
    compress: str = "none",
    progress: Callable[[str, float], None] | None = None,
) -> Package:
    """Write an engine package for ``avatar`` to the folder ``out_dir``.

    Args:
        avatar: the avatar to package.
        preset: a key of :data:`avatarsdk.exporters.presets.PRESETS` ("unreal",
            "unity", "gltf", "fbx", "rpm").
        out_dir: the package folder to create (its parent is created if needed).
        name: file stem of the model and textures (default: ``out_dir``'s name);
            letters, digits, "_" and "-" are kept, others become "_".
        make_zip: also write ``<out_dir>.zip`` holding the folder.
        overwrite: replace an existing ``out_dir`` (and .zip); otherwise an
            existing one is an error.
        preview_size: pixel size of each preview view (16..2048), or 0 for no
            preview.png (the manifest's "preview" is then null; what batches of
            many heads use when they need the throughput).
        source: provenance recorded in the manifest, e.g. {"file": ..., "sha256": ...}
            of the saved avatar it was read from.
        bpy_python: the Python with bpy for FBX (default: see
            :func:`avatarsdk.exporters.fbx.bpy_python`).
        hair: optional :class:`avatarsdk.hair.Hair` (``hair_for(avatar)``): its
            cards go into every glb (each LOD its own cards) as mesh "hair" and
            into the FBX (LOD0 cards) as mesh ``<name>_hair``; the strand atlas
            is written as ``textures/<name>_hair.png``, IMPORT.md gets the
            engine's hair material notes and the manifest a "hair" entry
            (style, parameters, colour).
        lods: add the levels of detail of :func:`avatarsdk.rigs.lod.ict_lods`
            (LOD0 full, LOD1 ~50%, LOD2 ~21% of the triangles, every morph
            target on each); None: the preset's ``lods_default`` (on for
            Unreal and Unity). The .fbx then holds an FBX LodGroup of
            ``<name>_head_LOD0..2``; a glTF or rpm package writes
            ``<name>_LOD0..2.glb`` instead of ``<name>.glb``; Unity's .glb stays
            the full mesh (glTFast has no LOD import; Unity builds its LODGroup
            from the FBX).
        visemes: add the 15 Oculus visemes (:mod:`avatarsdk.rigs.visemes`) as
            morph targets ``viseme_sil`` ... after the rig's; None: the preset's
            ``visemes_default``. The rpm preset always has them (under RPM's
            names, :mod:`avatarsdk.exporters.rpm`).
        compress: "none" (default) or "meshopt": every .glb of the package
            compressed with EXT_meshopt_compression (:mod:`avatarsdk.exporters.meshopt`;
            needs gltfpack from ``make setup``). The FBX is not affected.
        progress: called with (step name, fraction done).

    Returns:
        The written :class:`Package`.

    Raises:
        InputError: unknown preset, bad preview size, or ``out_dir`` exists.
        ExportError: the avatar cannot be exported (the rpm preset needs ARKit
            blendshape names), or FBX export failed (no
            bpy interpreter, Blender error), or LODs were asked for an avatar
            not on the ICT topology. Nothing is left at ``out_dir`` then.
        DataError: LODs are not cached yet and the ICT files to compute them are missing.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown package preset {preset!r}; choose from {', '.join(PRESETS)}")
    if int(preview_size) != 0 and not 16 <= int(preview_size) <= 2048:
        raise InputError(f"preview size must be 0 (none) or in [16, 2048], got {preview_size}")

    if compress not in COMPRESSIONS:
        raise InputError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    spec = PRESETS[preset]
    if compress != "none" and "glb" in spec.formats:
        gltfpack_command()  # missing gltfpack: fail now, before any work
    use_lods = spec.lods_default if lods is None else bool(lods)
    rpm = spec.naming == "rpm"
    use_visemes = rpm or (spec.visemes_default if visemes is None else bool(visemes))
    out_dir = Path(out_dir)
    zip_path = out_dir.with_name(out_dir.name + ".zip") if make_zip else None
    for p in (out_dir, zip_path):
        if p is not None and (p.exists() or p.is_symlink()) and not overwrite:
            raise InputError(f"{p} already exists (pass --overwrite to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder")
    stem = _safe_stem(name or out_dir.name)
    report = progress or (lambda step, frac: None)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; the package gets the usual mode
    tmp_zip: Path | None = None
    files: dict[str, tuple[str, int]] = {}  # relative path -> (sha256, bytes)

    def put(rel: str, data: bytes) -> None:
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files[rel] = (hashlib.sha256(data).hexdigest(), len(data))

    try:
        extra = None
        if use_visemes and not rpm:  # to_rpm_glb adds its own, under RPM's names
            extra = viseme_shapes(avatar.rig.blendshape_names, avatar.rig.blendshapes)
        levels = None
        if use_lods:
            report("levels of detail", 0.02)
            t = time.perf_counter()
            levels = ict_lods(avatar.topology)
            seconds["lods"] = round(time.perf_counter() - t, 3)
        report("glTF", 0.05)
        t = time.perf_counter()
        glb = to_rpm_glb(avatar) if rpm else to_glb(avatar, extra_shapes=extra, **_hair_kwargs(hair, 0))
        lod_glbs: dict[int, str] = {}
        if "glb" in spec.formats and levels is not None and spec.glb_lods:
            for lod in levels:
                rel = f"{stem}_LOD{lod.level}.glb"
                level_avatar = lod_avatar(avatar, lod)
                level_extra = None if extra is None else {k: v[lod.vertex_ids] for k, v in extra.items()}
                level_glb = (to_rpm_glb(level_avatar) if rpm else
                             to_glb(level_avatar, extra_shapes=level_extra, **_hair_kwargs(hair, lod.level)))
                put(rel, compress_glb(glb if lod.level == 0 else level_glb, compress))
                lod_glbs[lod.level] = rel
        elif "glb" in spec.formats:
            put(f"{stem}.glb", compress_glb(glb, compress))
        seconds["glb"] = round(time.perf_counter() - t, 3)
        textures = {}
        for mat in sorted(avatar.textures):
            rel = f"textures/{stem}_{mat}.png"
            img = np.ascontiguousarray(avatar.textures[mat])
            put(rel, png_bytes(img))
            textures[mat] = {"path": rel, "width": int(img.shape[1]), "height": int(img.shape[0]),
                             "channels": int(img.shape[2]), "colour_space": "sRGB"}
        if hair is not None:  # the strand atlas: embedded in the glb, a file for the FBX material
            rel = f"textures/{stem}_hair.png"
            put(rel, png_bytes(np.ascontiguousarray(hair.texture)))
            textures["hair"] = {"path": rel, "width": int(hair.texture.shape[1]),
                                "height": int(hair.texture.shape[0]), "channels": 4, "colour_space": "sRGB"}
        if int(preview_size):
            report("preview", 0.2)
            t = time.perf_counter()
            # From the avatar in memory: the same primitives as to_glb's file (avatar_mesh; no morph
            # targets, a render at rest never reads them), without parsing it; an RPM file is read back.
            mesh = (load_glb(glb) if rpm or hair is not None  # the hair mesh is only in the file
                    else avatar_mesh(avatar, extra_shapes=extra, targets=False))
            put("preview.png", png_bytes(render_views(mesh, size=int(preview_size))))
            seconds["preview"] = round(time.perf_counter() - t, 3)
        put("LICENSE-ICT-FaceKit.txt", ICT_FACEKIT_LICENSE.encode())
        put("IMPORT.md", _import_md(spec, stem, avatar, hair is not None).encode())
        fbx_report = None
        if "fbx" in spec.formats:
            report("FBX (Blender)", 0.4)
            t = time.perf_counter()
            fbx = to_fbx(avatar, spec.fbx_preset, prefix=f"{stem}_", python=bpy_python, extra_shapes=extra,
                         lods=levels, **_hair_kwargs(hair, 0))
            seconds["fbx"] = round(time.perf_counter() - t, 3)
            for rel, data in fbx.textures.items():
                if rel in files:  # the FBX points at textures/<stem>_<material>.png
                    continue
                if rel.endswith("_roughness.png"):  # FBX-only: the ORM's roughness channel on its own
                    put(rel, data)
                else:
                    raise ExportError(f"FBX references {rel}, which the package does not hold")
            put(f"{stem}.fbx", fbx.data)
            fbx_report = {k: fbx.report.get(k) for k in ("blender", "vertices", "polygons", "shape_keys", "bones",
                                                           "materials", "lod_group") if k in fbx.report}
        report("manifest", 0.9)
        manifest = _manifest(avatar, spec, stem, textures, files, source, fbx_report)
        if rpm:
            _rpm_manifest(manifest, avatar)
        manifest["lods"] = _lods_manifest(levels, lod_glbs, fbx_report, stem) if levels is not None else None
        if "glb" in manifest["models"]:
            manifest["models"]["glb"]["compression"] = (
                None if compress == "none" else
                {"method": "EXT_meshopt_compression", "tool": "gltfpack (npm, MIT)", "options": list(GLTFPACK_ARGS),
                 "note": "positions float32, normals 8-bit, UVs 12-bit; no _ICT_VERTEX attribute; "
                         "needs a meshopt decoder"})
        if lod_glbs:
            manifest["models"]["glb"]["path"] = lod_glbs[0]
            manifest["models"]["glb"]["lod_paths"] = [lod_glbs[k] for k in sorted(lod_glbs)]
        if hair is not None:
            manifest["hair"] = hair.manifest()
        if not rpm:
            manifest["visemes"] = _visemes_manifest() if extra is not None else None
            manifest["morph_targets"] = {"count": len(avatar.rig.blendshape_names) + len(extra or {}),
                                         "names": list(avatar.rig.blendshape_names) + list(extra or {})}
        put("manifest.json", json.dumps(manifest, indent=2).encode())
        if zip_path is not None:
            tmp_zip = _write_zip(tmp, out_dir.name, zip_path)
        # Everything is complete: move it into place.
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.replace(out_dir, old / "pkg")
        os.replace(tmp, out_dir)
        if tmp_zip is not None:
            os.replace(tmp_zip, zip_path)
            tmp_zip = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_zip is not None and tmp_zip.exists():
            tmp_zip.unlink()
        raise
    seconds["total"] = round(time.perf_counter() - t_all, 3)
    report("done", 1.0)
    log.info("package %s (%s) in %.1f s", out_dir, preset, seconds["total"])
    return Package(out_dir, zip_path, manifest, seconds)


def _hair_kwargs(hair, level: int) -> dict:
    """to_glb keyword arguments for the hair cards of LOD ``level`` (none for a bald head)."""
    if hair is None:
        return {}
    return {"hair": hair.lods[min(level, len(hair.lods) - 1)], "hair_texture": hair.texture}


def _write_zip(folder: Path, top: str, zip_path: Path) -> Path:
    """Zip ``folder`` under the top-level name ``top`` into a temp file beside ``zip_path``."""
    fd, tmp = tempfile.mkstemp(dir=zip_path.parent, prefix=f".{zip_path.name}.", suffix=".tmp")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                info = zipfile.ZipInfo(f"{top}/{f.relative_to(folder).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_STORED if f.suffix == ".png" else zipfile.ZIP_DEFLATED
                z.writestr(info, f.read_bytes())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _manifest(avatar: Avatar, spec: EnginePreset, stem: str, textures: dict, files: dict, source: dict | None,
              fbx_report: dict | None) -> dict:
    rig, topo = avatar.rig, avatar.topology
    meta = dict(avatar.meta)

    names = list(rig.blendshape_names)
    convention = "ARKit" if tuple(names) == tuple(ARKIT_NAMES) else "ICT-FaceKit"
    models = {}
    for fmt in spec.formats:
        entry = {"path": f"{stem}.{fmt}"}
        if fmt == "glb":
            entry.update(units="metres", unit_metres=1.0, axes={"up": "+Y", "forward": "+Z", "handedness": "right"},
                         morph_target_names="mesh.extras.targetNames")
        else:
            entry.update(units=spec.units, unit_metres=spec.unit_metres, axes=spec.axes,
                         material_names=f"{stem}_<material>", blend_shape_channels="named as the blendshapes",
                         armature_root_node="Armature", exporter=fbx_report)
        models[fmt] = entry
    return {
        "format": "avatarsdk.package",
        "format_version": 1,
        "preset": spec.name,
        "target": spec.title,
        "sdk": {"name": "avatarsdk", "version": __version__},
        "avatar": {
            "created_by": meta.get("generator"),
            "mode": meta.get("mode"),
            "seed": meta.get("seed"),
            "source_photo_sha256": meta.get("photo_sha256"),
            "ict_sha256": meta.get("ict_sha256"),
            "saved_avatar": json_safe(source) if source else None,
        },
        "models": models,
        "units": spec.units,
        "unit_metres": spec.unit_metres,
        "axes": spec.axes,
        "mesh": {"vertices": int(topo.num_vertices), "triangles": int(len(topo.triangles)),
                 "materials": [m for i, m in enumerate(topo.materials) if (topo.tri_material == i).any()]},
        "blendshapes": {"convention": convention, "count": len(names), "names": names},
        "joints": [{"name": n, "parent": (rig.skeleton.names[p] if p >= 0 else None),
                    "position_m": [round(float(x), 6) for x in rig.skeleton.positions[i]]}
                   for i, (n, p) in enumerate(zip(rig.skeleton.names, rig.skeleton.parents.tolist()))],
        "textures": textures,
        "preview": ({"path": "preview.png", "views": ["front", "three-quarter (left)", "profile (left)"]}
                    if "preview.png" in files else None),
        "files": {rel: {"sha256": h, "bytes": n} for rel, (h, n) in sorted(files.items())},
        "licences": LICENCES,
    }


def _lods_manifest(levels, glb_paths: dict[int, str], fbx_report: dict | None, stem: str) -> dict:
    """The manifest's "lods" entry: method and, per level, counts and where it lives."""
    out = []
    for lod in levels:
        entry = {"level": int(lod.level), "triangles": lod.num_triangles, "vertices": lod.num_vertices,
                 "budget": LOD_BUDGETS[lod.level] if lod.level < len(LOD_BUDGETS) else None}
        if lod.level in glb_paths:
            entry["glb"] = glb_paths[lod.level]
        if fbx_report is not None and fbx_report.get("lod_group"):
            entry["fbx_mesh"] = f"{fbx_report['lod_group']}_LOD{lod.level}"
        out.append(entry)
    return {
        "count": len(out),
        "method": "quadric half-edge collapse of the ICT generic neutral (avatarsdk.rigs.lod): every LOD vertex is "
                  "an ICT vertex, so each LOD carries every morph target; UV seams, part and material borders, "
                  "landmarks and the eye-wetness parts are kept",
        "fbx_lod_group": fbx_report.get("lod_group") if fbx_report else None,
        "levels": out,
    }


def _visemes_manifest() -> dict:
    names = list(viseme_target_names())
    return {"convention": "Oculus Lipsync (Ready Player Me names)", "count": len(names), "names": names,
            "arkit_weights": {n: VISEME_WEIGHTS[n.removeprefix("viseme_")] for n in names}}


def _rpm_manifest(manifest: dict, avatar: Avatar) -> None:
    """Fill the manifest's names for an rpm package: RPM's bones, morph targets and the mapping."""
    rig = rpm_rig(avatar)
    sk = rig.skeleton
    manifest["joints"] = [{"name": n, "parent": (sk.names[p] if p >= 0 else None),
                           "position_m": [round(float(x), 6) for x in sk.positions[i]]}
                          for i, (n, p) in enumerate(zip(sk.names, sk.parents.tolist()))]
    manifest["models"]["glb"]["conventions"] = "Ready Player Me (head)"
    manifest["models"]["glb"]["armature_root_node"] = "Armature"
    manifest["visemes"] = {"convention": "Oculus Lipsync (Ready Player Me names)", "count": len(RPM_VISEMES),
                           "names": list(RPM_VISEMES)}
    manifest["morph_targets"] = {"count": len(RPM_MORPH_TARGETS), "names": list(RPM_MORPH_TARGETS)}
    manifest["rpm"] = rpm_mapping()


_HAIR_NOTES = {
    "unreal": """
### Hair

`{stem}_hair` is its own skeletal-mesh section with material `{stem}_hair` (hair cards:
polystrips onto the strand atlas `textures/{stem}_hair.png`, alpha in the texture's alpha).
Set that material's **Blend Mode: Masked** (Opacity Mask = the texture's alpha, clip 0.5)
and **Two Sided: on**; Shading Model *Default Lit* (or *Hair* with a Hair Attributes node if
you want anisotropic highlights). The cards are skinned to `head` (long hair near the nape
partly to `neck`) in the same skeleton, so they follow the head. The FBX holds the hair at
LOD0 only (the glb files carry a coarser set per LOD). Enable **Dithered LOD Transition**
and *Anti-aliasing* (TSR) for soft card edges.
""",
    "unity": """
### Hair

The hair is the mesh `hair` (glb) / `{stem}_hair` (FBX) with material `hair`: hair cards
on the strand atlas `textures/{stem}_hair.png` (alpha in the texture's alpha).
glTFast imports it as an alpha-tested (`alphaMode: MASK`, cutoff 0.5), double-sided
material. From the FBX: set the material to *Alpha Clipping* on, threshold 0.5, **Render
Face: Both** (URP Lit / HDRP Lit), or Standard shader *Cutout* with culling off. The cards
are skinned to `head` (and `neck`) of the same skeleton; the LOD glbs each carry their own,
coarser cards.
""",
}


def _import_md(spec: EnginePreset, stem: str, avatar: Avatar, hair: bool = False) -> str:
    if spec.naming == "rpm":
        return (f"# Importing `{stem}` — {spec.title}\n\nMade by avatarsdk {__version__}. See manifest.json for "
                f"names, units, axes and checksums.\n\n" + rpm_import_md(stem))
    n = len(avatar.rig.blendshape_names)
    joints = ", ".join(avatar.rig.skeleton.names)
    head = (f"# Importing `{stem}` — {spec.title}\n\n"
            f"Made by avatarsdk {__version__}. {n} blendshapes, joints {joints}. "
            f"See manifest.json for names, units, axes and checksums.\n\n")
    if spec.name == "unreal":
        body = f"""## Unreal Engine 5

1. Copy this folder (with `textures/`) anywhere, then in the Content Browser
   **Import** `{stem}.fbx` (or drag it in). The file is in **centimetres, Z up**.
2. FBX Import Options:
   - Skeletal Mesh: **on**; Import Mesh: on; Skeleton: *none* (a new one is made).
   - Import Mesh LODs: **on** when the package has LODs (manifest.json `lods`): the
     file's LodGroup `{stem}_head` holds `{stem}_head_LOD0..2`.
   - Import Morph Targets: **on**. Import Animations: off.
   - Import Content Type: *Geometry and Skinning Weights*.
   - Normal Import Method: *Import Normals*.
   - Transform: Import Uniform Scale **1.0**; Convert Scene: on; Force Front XAxis: off;
     Convert Scene Unit: off (already centimetres).
   - Material Import Method: *Create New Materials*; Import Textures: on (found via
     the relative paths `textures/{stem}_*.png`).
3. The root node `Armature` is dropped by the importer; the bone chain is
   `root > neck > head > (jaw, eye_L, eye_R)`.
4. Materials `{stem}_eyelashes` and `{stem}_eye_wet` need a translucent or masked
   Blend Mode (eyelash alpha is in the texture's alpha; eye_wet is a nearly clear film).

### Live Link Face (ARKit)

The morph targets carry the 52 ARKit names (`eyeBlinkLeft`, `jawOpen`, ...), the
curve names Live Link Face streams, so in an Animation Blueprint a *Live Link Pose*
node with the phone's subject drives them directly: no remap asset is needed.
"""
    elif spec.name == "unity":
        body = f"""## Unity

Both files are in **metres, Y up**.

### glTFast (`{stem}.glb`)

1. Package Manager → *Add package by name* → `com.unity.cloud.gltfast`.
2. Drop `{stem}.glb` into `Assets/`. Blend shapes take their names from
   `mesh.extras.targetNames`; the skin, six joints and textures are embedded.

### FBX (`{stem}.fbx`)

1. Copy `{stem}.fbx` **and** the `textures/` folder together into `Assets/`.
   With LODs (manifest.json `lods`), Unity builds a LOD Group from the meshes
   `{stem}_head_LOD0..2`; the .glb is the full mesh only.
2. Model tab: Scale Factor **1**, Convert Units **on** (file unit: metres),
   Import BlendShapes **on**, Blend Shape Normals *Calculate*, Normals *Import*.
3. Rig tab: Animation Type *Generic*, Avatar Definition *Create From This Model*,
   Root node `root`.
4. Materials tab: *Import via MaterialDescription*, Location *Use External
   Materials (Legacy)* or *Extract Materials*; textures are found in `textures/`.
   Set `{stem}_eyelashes` and `{stem}_eye_wet` to a transparent surface type.

The `Armature` root carries a -90° X rotation (Blender's Z-up armature data
in a Y-up file); the mesh itself is Y up and the skin binds in place.

ARKit face tracking (AR Foundation): each `ARKitBlendShapeLocation` maps to the
blend shape whose name is the same with a lower-case first letter
(`EyeBlinkLeft` → `eyeBlinkLeft`).
"""
    elif spec.name == "gltf":
        body = f"""## glTF 2.0 (`{stem}.glb`)

Metres, +Y up, face along +Z, one skinned mesh (one primitive per material),
{n} morph targets named in `mesh.extras.targetNames`, textures embedded (the PNGs
in `textures/` are copies). The file passes the Khronos glTF validator.

- three.js: `GLTFLoader`; morphs are in `mesh.morphTargetDictionary`.
- Babylon.js: `SceneLoader.ImportMeshAsync`; morph targets keep their names.
- Godot 4: drop into the project; blend shapes keep their names.
- Blender: File → Import → glTF 2.0; shape keys keep their names.
"""
    else:
        body = f"""## FBX for DCC tools (`{stem}.fbx`)

**Centimetres, Y up** (FBX's default, as Maya and MotionBuilder use). One mesh
with {n} blend shape channels, an `Armature` root with the six joints and a skin,
materials whose textures are the relative paths `textures/{stem}_*.png` (keep the
folder beside the file).
"""
    if hair:
        body += _HAIR_NOTES.get(spec.name, """
### Hair

Mesh `hair` with material `hair`: alpha-tested hair cards (alpha cutoff 0.5, double-sided)
on `textures/{stem}_hair.png`, skinned to `head` and `neck`.
""").replace("{stem}", stem)
    return head + body
