"""Blender-side script of the FBX exporter; run by a Python that has ``bpy`` (never imported by the SDK).

Usage (the SDK calls it with an argument list, see ``avatarsdk.exporters.fbx``)::

    python _bpy_build_fbx.py build WORKDIR          # WORKDIR/scene.json + arrays -> WORKDIR/avatar.fbx
    python _bpy_build_fbx.py inspect-blender FBX    # re-import FBX into Blender, print a JSON report
    python _bpy_build_fbx.py inspect-ufbx FBX       # strict ufbx load of FBX, print a JSON report

``build`` reads what ``avatarsdk.exporters.fbx.to_fbx`` wrote (no pickle):

* ``scene.json``: names, materials, exporter settings, output name;
* ``*.npy``: per mesh (file names carry the mesh's suffix, "" or "_lod1", ...)
  vertices [V, 3] f4 (metres, SDK axes: +Y up, +Z forward), triangles [F, 3] i4,
  corner_uv [F, 3, 2] f4 (glTF convention, v down), tri_material [F] i1,
  blendshapes [K, V, 3] f4, skin_joints [V, 4] u1, skin_weights [V, 4] f4; and
  once joint_parents [J] i4, joint_positions [J, 3] f4;
* ``textures/*.png``: the images the materials point at.

It builds the scene directly (one mesh, or one per level of detail under an
FBX LodGroup, each with one material slot per part material, image-texture
materials, shape keys, an armature with vertex groups)
in Blender's own axes (+Z up, -Y forward: (x, y, z)_blender = (x, -z, y)_sdk)
and in the file's unit (``unit_metres``, also the scene's unit scale), then calls ``bpy.ops.export_scene.fbx``. The inspect modes print one
JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _sdk_to_blender(a):
    """(x, y, z) in SDK axes -> (x, -z, y) in Blender axes; works on [..., 3] numpy arrays."""
    import numpy as np  # local: runs in Blender's own Python, which brings its numpy

    return np.stack([a[..., 0], -a[..., 2], a[..., 1]], axis=-1)


def build(workdir: str) -> dict:
    """Build the avatar scene from ``workdir`` and export ``workdir/<output>``; return a report.

    ``scene["meshes"]`` lists the meshes ({"name", "arrays"}: the suffix of their
    ``.npy`` files); without it there is one mesh named ``scene["mesh_name"]``
    with unsuffixed arrays. With ``scene["lod_group"]`` set, the meshes (LOD0,
    LOD1, ...) are parented, in order, to an empty of that name whose custom
    property ``fbx_type = "LodGroup"`` makes Blender's exporter write it as an
    FBX LodGroup node (what Unreal's and Unity's importers read as LODs).
    """
    import bpy  # local: exists only inside Blender's Python
    import numpy as np  # local: runs in Blender's own Python, which brings its numpy

    t0 = time.perf_counter()
    with open(os.path.join(workdir, "scene.json"), encoding="utf-8") as f:
        scene = json.load(f)

    def load(name):
        return np.load(os.path.join(workdir, name + ".npy"), allow_pickle=False)

    # Coordinates in the file's unit (scene.unit_settings.scale_length = unit_metres).
    unit = float(scene["unit_metres"])
    parents = load("joint_parents")
    joints = _sdk_to_blender(load("joint_positions").astype(np.float64)) / unit

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bl_scene = bpy.context.scene
    bl_scene.unit_settings.system = "METRIC"
    bl_scene.unit_settings.scale_length = unit
    materials = [_material(bpy, m, workdir) for m in scene["materials"]]

    # Armature: bind pose = rest pose, joints at their positions. Spine joints point up
    # (+Z), jaw and eyes forward (-Y), so bone lengths are stable whatever the identity.
    arm = bpy.data.armatures.new(scene["armature_name"])
    arm_obj = bpy.data.objects.new(scene["armature_name"], arm)
    bl_scene.collection.objects.link(arm_obj)
    bpy.context.view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    bones = []
    for j, name in enumerate(scene["joint_names"]):
        eb = arm.edit_bones.new(name)
        head = joints[j]
        direction, length = scene["bone_directions"][j], scene["bone_lengths"][j] / unit
        eb.head = tuple(float(x) for x in head)
        eb.tail = tuple(float(h + length * c) for h, c in zip(head, direction))
        eb.roll = 0.0
        if parents[j] >= 0:
            eb.parent = bones[parents[j]]
            eb.use_connect = False
        bones.append(eb)
    bpy.ops.object.mode_set(mode="OBJECT")

    parent = arm_obj
    if scene.get("lod_group"):
        parent = bpy.data.objects.new(scene["lod_group"], None)  # an empty
        parent["fbx_type"] = "LodGroup"
        bl_scene.collection.objects.link(parent)
        parent.parent = arm_obj
    mesh_specs = scene.get("meshes") or [{"name": scene["mesh_name"], "arrays": ""}]
    reports = []
    extra = []
    for spec in mesh_specs:
        obj, info = _build_mesh(bpy, np, scene, spec, unit, materials, load, bl_scene)
        mod = obj.modifiers.new(name="Armature", type="ARMATURE")
        mod.object = arm_obj
        # the head (or its LODs) under the LOD group; other meshes (hair) straight under the armature
        obj.parent = arm_obj if spec.get("parent") == "armature" else parent
        (reports if spec.get("parent") != "armature" else extra).append(info)
    t_built = time.perf_counter()

    out = os.path.join(workdir, scene["output"])
    settings = dict(scene["fbx_settings"])
    settings["object_types"] = set(settings["object_types"])
    if scene.get("lod_group"):
        settings["object_types"].add("EMPTY")
    result = bpy.ops.export_scene.fbx(filepath=out, use_selection=False, **settings)
    if "FINISHED" not in result:
        raise RuntimeError(f"export_scene.fbx returned {result}")
    first = reports[0]
    report = {"vertices": first["vertices"], "polygons": first["polygons"], "materials": len(materials),
              "shape_keys": first["shape_keys"], "bones": len(arm.bones),
              "vertex_groups": first["vertex_groups"], "weights": first["weights"],
              "mesh_fixed_by_validate": any(r["mesh_fixed_by_validate"] for r in reports),
              "build_s": round(t_built - t0, 3), "export_s": round(time.perf_counter() - t_built, 3),
              "bytes": os.path.getsize(out), "blender": bpy.app.version_string}
    if scene.get("lod_group"):
        report["lod_group"] = scene["lod_group"]
        report["lods"] = reports
    if extra:
        report["extra_meshes"] = extra
    return report


def _build_mesh(bpy, np, scene: dict, spec: dict, unit: float, materials: list, load, bl_scene):
    """One skinned mesh object (no modifier or parent yet) from the arrays ``*<spec['arrays']>.npy``."""
    sfx = spec["arrays"]
    verts = (_sdk_to_blender(load("vertices" + sfx).astype(np.float64)) / unit).astype(np.float32)
    tris = load("triangles" + sfx).astype(np.int64)
    corner_uv = load("corner_uv" + sfx).astype(np.float32)
    tri_material = load("tri_material" + sfx).astype(np.int64)
    with_shapes = spec.get("shape_keys", True)
    if with_shapes:
        deltas = (_sdk_to_blender(load("blendshapes" + sfx).astype(np.float64)) / unit).astype(np.float32)
    skin_joints = load("skin_joints" + sfx).astype(np.int64)
    skin_weights = load("skin_weights" + sfx).astype(np.float64)

    # Mesh: vertices as they are, one polygon per triangle; UVs per corner (loop), so
    # seams need no welding. Blender's UV origin is bottom-left: v_blender = 1 - v_gltf.
    me = bpy.data.meshes.new(spec["name"])
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.add(tris.size)
    me.loops.foreach_set("vertex_index", tris.ravel().astype(np.int32))
    me.polygons.add(len(tris))
    me.polygons.foreach_set("loop_start", np.arange(0, tris.size, 3, dtype=np.int32))
    uv_layer = me.uv_layers.new(name="UVMap")
    uv = corner_uv.reshape(-1, 2).copy()
    uv[:, 1] = 1.0 - uv[:, 1]
    uv_layer.data.foreach_set("uv", uv.ravel())
    for m in spec.get("materials", range(len(materials))):
        me.materials.append(materials[m])
    me.polygons.foreach_set("material_index", tri_material.astype(np.int32))
    me.update(calc_edges=True)
    if hasattr(me, "shade_smooth"):
        me.shade_smooth()
    else:  # Blender < 4.1
        me.polygons.foreach_set("use_smooth", np.ones(len(tris), bool))
    problems = me.validate(verbose=False)
    obj = bpy.data.objects.new(spec["name"], me)
    bl_scene.collection.objects.link(obj)

    # Shape keys: Basis, then one per blendshape with absolute positions basis + delta.
    if with_shapes:
        obj.shape_key_add(name="Basis", from_mix=False)
        for name, d in zip(scene["blendshape_names"], deltas):
            key = obj.shape_key_add(name=name, from_mix=False)
            key.data.foreach_set("co", (verts + d).ravel())
        me.shape_keys.use_relative = True

    # Skin: one vertex group per joint; vertices added in batches of equal weight.
    groups = [obj.vertex_groups.new(name=n) for n in scene["joint_names"]]
    nonzero = 0
    for j, group in enumerate(groups):
        w = np.where(skin_joints == j, skin_weights, 0.0).sum(1)
        idx = np.nonzero(w > 0)[0]
        nonzero += len(idx)
        values, inverse = np.unique(w[idx].astype(np.float32), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
        for k, value in enumerate(values):
            group.add(idx[order[bounds[k]:bounds[k + 1]]].tolist(), float(value), "REPLACE")
    info = {"name": spec["name"], "vertices": len(me.vertices), "polygons": len(me.polygons),
            "shape_keys": len(me.shape_keys.key_blocks) - 1 if with_shapes else 0, "vertex_groups": len(groups), "weights": int(nonzero),
            "mesh_fixed_by_validate": bool(problems)}
    return obj, info


def _material(bpy, spec: dict, workdir: str):
    """A Principled BSDF material; an image texture node feeds Base Color (and Alpha for RGBA)."""
    mat = bpy.data.materials.new(spec["name"])
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes.get("Principled BSDF") or nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.inputs["Metallic"].default_value = 0.0
    bsdf.inputs["Roughness"].default_value = float(spec["roughness"])
    r, g, b, a = (float(c) for c in spec["colour"])
    if spec.get("texture"):
        img = bpy.data.images.load(os.path.join(workdir, spec["texture"]), check_existing=False)
        img.name = os.path.basename(spec["texture"])
        img.colorspace_settings.name = "sRGB"
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = img
        tex.extension = "EXTEND"  # glTF sampler: CLAMP_TO_EDGE
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        if spec.get("has_alpha"):
            links.new(tex.outputs["Alpha"], bsdf.inputs["Alpha"])
        # Blender's FBX exporter writes the socket's unlinked value as DiffuseColor even when a
        # texture feeds it (Blender's default: 0.8 grey); importers that multiply the two
        # (assimp and its users) would show the texture 20 % darker. White keeps it exact.
        r, g, b = 1.0, 1.0, 1.0
        bsdf.inputs["Base Color"].default_value = (r, g, b, 1.0)
    else:
        bsdf.inputs["Base Color"].default_value = (r, g, b, 1.0)
        bsdf.inputs["Alpha"].default_value = a
    if spec.get("normal_texture"):  # tangent-space normal map, glTF/OpenGL convention (+Y up), as Blender's
        img = bpy.data.images.load(os.path.join(workdir, spec["normal_texture"]), check_existing=False)
        img.name = os.path.basename(spec["normal_texture"])
        img.colorspace_settings.name = "Non-Color"
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = img
        tex.extension = "EXTEND"
        nmap = nodes.new("ShaderNodeNormalMap")
        nmap.space = "TANGENT"
        links.new(tex.outputs["Color"], nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    if spec.get("roughness_texture"):  # linked straight to Roughness: what Blender's FBX exporter writes out
        img = bpy.data.images.load(os.path.join(workdir, spec["roughness_texture"]), check_existing=False)
        img.name = os.path.basename(spec["roughness_texture"])
        img.colorspace_settings.name = "Non-Color"
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = img
        tex.extension = "EXTEND"
        links.new(tex.outputs["Color"], bsdf.inputs["Roughness"])
    mat.diffuse_color = (r, g, b, a)
    if spec.get("alpha") == "BLEND":
        if hasattr(mat, "surface_render_method"):
            mat.surface_render_method = "BLENDED"
        else:  # Blender < 4.2
            mat.blend_method = "BLEND"
    elif spec.get("alpha") == "CLIP":  # alpha-tested cards (hair): dithered in EEVEE Next, clipped before
        if hasattr(mat, "surface_render_method"):
            mat.surface_render_method = "DITHERED"
        if hasattr(mat, "blend_method"):
            try:
                mat.blend_method = "CLIP"
            except TypeError:  # Blender >= 4.2 dropped CLIP from the enum
                pass
    mat.use_backface_culling = not spec.get("double_sided", False)
    return mat


def inspect_blender(path: str) -> dict:
    """Import an FBX into an empty Blender scene and describe what arrived."""
    import bpy  # local: exists only inside Blender's Python
    import numpy as np  # local: runs in Blender's own Python, which brings its numpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    t0 = time.perf_counter()
    result = bpy.ops.import_scene.fbx(filepath=path)
    seconds = time.perf_counter() - t0
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    report = {"result": sorted(result), "import_s": round(seconds, 3), "meshes": len(meshes),
              "armatures": len(arms), "objects": sorted(o.name for o in bpy.data.objects)}
    shape_keys, moved, groups, weighted, verts, polys = [], {}, [], {}, 0, 0
    bbox_min, bbox_max = [np.inf] * 3, [-np.inf] * 3
    for o in meshes:
        me = o.data
        verts += len(me.vertices)
        polys += len(me.polygons)
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3)
        world = np.array(o.matrix_world)
        wco = co @ world[:3, :3].T + world[:3, 3]
        bbox_min = np.minimum(bbox_min, wco.min(0)).tolist()
        bbox_max = np.maximum(bbox_max, wco.max(0)).tolist()
        if me.shape_keys:
            blocks = me.shape_keys.key_blocks
            base = np.empty(len(me.vertices) * 3, np.float32)
            blocks[0].data.foreach_get("co", base)
            for kb in blocks[1:]:
                k = np.empty_like(base)
                kb.data.foreach_get("co", k)
                shape_keys.append(kb.name)
                # World-space offsets (the importer may keep file units and scale the object).
                moved[kb.name] = float(np.abs((k - base).reshape(-1, 3) @ world[:3, :3].T).max())
        for vg in o.vertex_groups:
            groups.append(vg.name)
        for v in me.vertices:
            for g in v.groups:
                if g.weight > 0:
                    name = o.vertex_groups[g.group].name
                    weighted[name] = weighted.get(name, 0) + 1
        mods = [m.type for m in o.modifiers]
        report.setdefault("modifiers", []).extend(mods)
    report.update({
        "vertices": verts, "polygons": polys,
        "bbox_min": [round(x, 6) for x in bbox_min], "bbox_max": [round(x, 6) for x in bbox_max],
        "shape_keys": shape_keys, "shape_key_max_offset": moved,
        "vertex_groups": sorted(set(groups)), "weighted_vertices": weighted,
        "bones": [b.name for a in arms for b in a.data.bones],
        "bone_parents": {b.name: (b.parent.name if b.parent else None) for a in arms for b in a.data.bones},
        "materials": sorted({s.material.name for o in meshes for s in o.material_slots if s.material}),
        "images": sorted({
            (img.name, os.path.basename(img.filepath), bool(img.has_data) or img.size[0] > 0)
            for img in bpy.data.images if img.source == "FILE"}),
        "image_sizes": {img.name: list(img.size) for img in bpy.data.images if img.source == "FILE"},
        "scene_unit_scale": bpy.context.scene.unit_settings.scale_length,
    })
    report["images"] = [list(x) for x in report["images"]]
    # Which material has which image on Base Color, and which on Normal (through a
    # Normal Map node) and Roughness.
    textured, maps = {}, {}
    for mat in bpy.data.materials:
        if not mat.use_nodes:
            continue
        bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is None:
            continue

        def image_on(socket):
            for link in socket.links:
                node = link.from_node
                if node.type == "NORMAL_MAP":
                    return image_on(node.inputs["Color"])
                if node.type == "TEX_IMAGE" and node.image is not None:
                    return os.path.basename(node.image.filepath)
            return None

        if image_on(bsdf.inputs["Base Color"]):
            textured[mat.name] = image_on(bsdf.inputs["Base Color"])
        found = {k: image_on(bsdf.inputs[s]) for k, s in (("normal", "Normal"), ("roughness", "Roughness"))}
        if any(found.values()):
            maps[mat.name] = {k: v for k, v in found.items() if v}
    report["material_textures"] = textured
    report["material_maps"] = maps
    return report


_UFBX_QUERIES = ("header", "meshes", "world", "channels", "nodes", "clusters", "diffuse", "alpha", "pbr", "textures", "lods",
                 "factors")


_KEEP_ALIVE: list = []


def ufbx_query(path: str, query: str):
    """Answer one question about an FBX with a strict ufbx load (no axis or unit conversion).

    ufbx 0.0.5's Python bindings crash (SIGSEGV) in some reads: iterating its lists
    (at garbage collection), and some reads of an element reached along two paths
    (Node.parent after scene.nodes); so :func:`inspect_ufbx` runs each query in its
    own process, lists are indexed, each query touches an element once, and the
    process ends with ``os._exit``.
    """
    import ufbx  # local: optional (the fbx extra), used only by the inspection queries

    sc = ufbx.load_file(path, strict=True, load_external_files=False, ignore_missing_external_files=True)
    _KEEP_ALIVE.append(sc)

    def items(seq):
        # Index, do not iterate: iterating ufbx lists crashes at garbage collection.
        # Keep every element alive until os._exit: freeing elements of several
        # meshes that share materials crashes too.
        out = [seq[i] for i in range(len(seq))]
        _KEEP_ALIVE.append(out)
        return out

    def axis(a) -> str:
        return getattr(a, "name", str(a))

    def bbox(points):
        lo, hi = [float("inf")] * 3, [float("-inf")] * 3
        for c in points:
            lo, hi = [min(a, b) for a, b in zip(lo, c)], [max(a, b) for a, b in zip(hi, c)]
        return lo, hi

    if query == "header":
        s, meta = sc.settings, sc.metadata
        axes = s.axes
        return {"creator": meta.creator, "version": meta.version, "ascii": meta.ascii,
                "warnings": [w.description for w in items(meta.warnings)],
                "unit_meters": s.unit_meters, "original_unit_meters": s.original_unit_meters,
                "axes": {"right": axis(axes.right), "up": axis(axes.up), "front": axis(axes.front)},
                "original_axis_up": axis(s.original_axis_up)}
    if query == "meshes":
        # Materials shared by several meshes crash ufbx when reached again from a
        # second mesh: here only the first mesh's are read, the others' by
        # "materials<i>" queries (each in its own process, see inspect_ufbx).
        out = []
        for i, m in enumerate(items(sc.meshes)):
            lo, hi = bbox((p.x, p.y, p.z) for p in items(m.vertices))
            out.append({"name": m.name, "vertices": m.num_vertices, "faces": m.num_faces,
                        "triangles": m.num_triangles,
                        "materials": [mt.name for mt in items(m.materials)] if i == 0 else None,
                        "skin_deformers": len(m.skin_deformers), "blend_deformers": len(m.blend_deformers),
                        "has_uv": bool(m.vertex_uv.exists), "has_normals": bool(m.vertex_normal.exists),
                        "bbox_min": lo, "bbox_max": hi})
        return out
    if query == "world":  # mesh bounding boxes with node transforms applied, file units
        out = {}
        for m in items(sc.meshes):
            nodes = items(m.instances)
            if nodes:
                m0, m1, m2, m3 = nodes[0].geometry_to_world  # columns; c3 is the translation
                lo, hi = bbox(tuple(m0[i] * p.x + m1[i] * p.y + m2[i] * p.z + m3[i] for i in range(3))
                              for p in items(m.vertices))
                out[m.name] = {"world_bbox_min": lo, "world_bbox_max": hi}
        return out
    if query == "channels":
        out = []
        for ch in items(sc.blend_channels):
            shape = ch.target_shape
            n, largest = 0, 0.0
            if shape is not None:
                n = shape.num_offsets
                for o in items(shape.position_offsets):
                    largest = max(largest, abs(o.x), abs(o.y), abs(o.z))
            out.append({"name": ch.name, "offsets": n, "max_offset": largest})
        return out
    if query == "nodes":
        bones, roots, names = [], [], {}
        for n in items(sc.nodes):
            names[str(n.element_id)] = n.name
            if n.bone is not None:
                bones.append({"name": n.name, "depth": n.node_depth})
            if n.node_depth == 1:
                t = n.local_transform
                roots.append({"name": n.name, "translation": [t.translation.x, t.translation.y, t.translation.z],
                              "rotation": [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w],
                              "scale": [t.scale.x, t.scale.y, t.scale.z]})
        return {"bones": bones, "root_nodes": roots, "names": names}
    if query == "clusters":
        return [{"bone_id": c.bone_node.element_id if c.bone_node is not None else None, "weights": c.num_weights}
                for c in items(sc.skin_clusters)]
    if query in ("diffuse", "alpha"):
        prop = "diffuse_color" if query == "diffuse" else "transparency_factor"
        out = {}
        for mt in items(sc.materials):
            tex = getattr(mt.fbx, prop).texture
            out[mt.name] = tex.relative_filename if tex is not None else None
        return out
    if query == "pbr":  # the normal map (FBX NormalMap) and the roughness texture (ShininessExponent in
        # Blender's exporter; ufbx's PBR view maps it to roughness) of each material
        out = {}
        for mt in items(sc.materials):
            normal, rough = mt.fbx.normal_map.texture, mt.fbx.specular_exponent.texture
            out[mt.name] = {"normal_map": normal.relative_filename if normal is not None else None,
                            "roughness": rough.relative_filename if rough is not None else None}
        return out
    if query == "factors":  # the colour and factor an importer multiplies the diffuse texture by
        out = {}
        for mt in items(sc.materials):
            colour, factor = mt.fbx.diffuse_color, mt.fbx.diffuse_factor
            out[mt.name] = {"diffuse_color": [float(c) for c in list(colour.value_vec4)[:3]] if colour.has_value else None,
                            "diffuse_factor": float(factor.value_vec4[0]) if factor.has_value else None}
        return out
    if query == "textures":
        return [{"name": t.name, "relative_filename": t.relative_filename, "embedded": len(t.content) > 0}
                for t in items(sc.textures)]
    if query.startswith("materials"):  # material names of mesh <i>
        m = sc.meshes[int(query[len("materials"):])]
        return [mt.name for mt in items(m.materials)]
    if query == "lods":  # LodGroup node attributes: their node, level count and child nodes in order
        out = []
        for g in items(sc.lod_groups):
            nodes = items(g.instances)
            node = nodes[0] if nodes else None
            out.append({"name": node.name if node is not None else g.name, "levels": len(g.lod_levels),
                        "children": [c.name for c in items(node.children)] if node is not None else []})
        return out
    raise ValueError(f"unknown query {query!r}")


def _ufbx_subprocess(query: str, path: str):
    """Run one :func:`ufbx_query` in its own process and return its answer."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "ufbx-query", query, path],
                          capture_output=True, check=False, timeout=300)
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"ufbx query {query!r} failed with exit code {proc.returncode}: {' | '.join(err)}")
    return json.loads(lines[-1])


def inspect_ufbx(path: str) -> dict:
    """Describe an FBX from strict ufbx loads, one process per query (see :func:`ufbx_query`)."""
    t0 = time.perf_counter()
    answers = {q: _ufbx_subprocess(q, path) for q in _UFBX_QUERIES}
    names = answers["nodes"]["names"]
    meshes = answers["meshes"]
    for i, m in enumerate(meshes):
        if m["materials"] is None:
            m["materials"] = _ufbx_subprocess(f"materials{i}", path)
    for m in meshes:
        m.update(answers["world"].get(m["name"], {}))
    return {
        **answers["header"],
        "seconds": round(time.perf_counter() - t0, 3),
        "meshes": meshes,
        "blend_channels": answers["channels"],
        "bones": answers["nodes"]["bones"],
        "root_nodes": answers["nodes"]["root_nodes"],
        "skin_clusters": [{"bone": names.get(str(c["bone_id"])), "weights": c["weights"]}
                          for c in answers["clusters"]],
        "materials": [{"name": k, "maps": {"diffuse_color": v, "transparency_factor": answers["alpha"].get(k),
                                           **answers["pbr"].get(k, {})},
                       **answers["factors"].get(k, {})}
                      for k, v in answers["diffuse"].items()],
        "textures": answers["textures"],
        "lod_groups": answers["lods"],
    }


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "ufbx-query":
        answer = ufbx_query(argv[3], argv[2])
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()
        os._exit(0)  # skip ufbx's teardown (see ufbx_query)
    if len(argv) != 3 or argv[1] not in ("build", "inspect-blender", "inspect-ufbx"):
        sys.stderr.write(__doc__ or "")
        return 64
    mode, target = argv[1], argv[2]
    if mode == "build":
        report = build(target)
    elif mode == "inspect-blender":
        report = inspect_blender(target)
    else:
        report = inspect_ufbx(target)
    # Blender prints its own lines to stdout; the report is the last line.
    sys.stdout.write("\n" + json.dumps(report, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
